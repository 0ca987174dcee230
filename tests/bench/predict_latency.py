"""Measure warm synchronous predict latency through the whole running stack (HTTP → API → RabbitMQ → worker).

Usage: ./modeldeck up, then
    .venv/bin/python tests/bench/predict_latency.py [--url http://127.0.0.1:8600] [--key-file .modeldeck/admin.key] [-n 1000]
Uploads a scikit-learn LogisticRegression on iris (skops) as model 'bench-iris', warms up,
then sends n single-row requests one after another and prints p50/p90/p99/max and the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time

import requests
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--key-file", default=".modeldeck/admin.key")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmarks only run against a loopback address")
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + open(args.key_file).read().strip()
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    meta = {"name": "bench-iris", "format": "skops", "pool": "cpu"}
    up = session.post(args.url + "/api/v1/models", files={"file": ("m.skops", io.BytesIO(sio.dumps(model))),
                                                         "metadata": (None, json.dumps(meta))})
    up.raise_for_status()
    version = up.json()["version"]
    url = f"{args.url}/api/v1/models/bench-iris/predict"
    body = {"inputs": [X[0].tolist()], "version": version}
    started = time.perf_counter()
    first = session.post(url, json=body)
    print(f"cold first predict: {(time.perf_counter() - started) * 1000:.1f} ms (worker load {first.json()['timings']['load_ms']} ms)")
    for _ in range(args.warmup):
        session.post(url, json=body).raise_for_status()
    latencies = []
    for _ in range(args.n):
        t = time.perf_counter()
        resp = session.post(url, json=body)
        latencies.append((time.perf_counter() - t) * 1000)
        if resp.status_code != 200:
            raise SystemExit(f"predict failed: {resp.status_code} {resp.text}")
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))]

    print(f"warm predict, {args.n} sequential single-row requests: p50 {pct(0.5):.2f} ms, p90 {pct(0.9):.2f} ms, "
          f"p99 {pct(0.99):.2f} ms, max {latencies[-1]:.2f} ms, mean {statistics.fmean(latencies):.2f} ms")
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
