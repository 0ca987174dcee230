"""Serve many distinct models from one CPU worker: cache hit rate, latency and the worker's memory.

Usage: ./modeldeck up (its worker's model cache holds 256 models and 1,024 MB of artifacts by default:
MODELDECK_MODEL_CACHE_SIZE, MODELDECK_MODEL_CACHE_MB; MODELDECK_WORKER_MEMORY_LIMIT_MB bounds the process), then
    .venv/bin/python tests/bench/many_models.py [--models 100] [--rounds 10] [--trees 8] \
        [--url http://127.0.0.1:8600] [--key-file .modeldeck/admin.key]
Uploads --models distinct RandomForest classifiers (skops, --trees trees each, a different seed each), sends
--rounds rounds of one single-row request to every model in a shuffled order, and prints: the first (cold)
and later (warm) request latencies, the worker's cache hits and misses over the run (from GET
/api/v1/runtimes: the hit rate), the models it holds, and its resident memory before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import time
import uuid

import requests
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def cpu_worker(session: requests.Session, base: str) -> dict:
    pools = session.get(base + "/runtimes", timeout=10).json()["pools"]
    workers = [w for p in pools if p["name"] == "cpu" for w in p["workers"] if w["state"] not in ("lost", "stopping")]
    if len(workers) != 1:
        raise SystemExit(f"expected one live CPU worker, found {len(workers)}: run with one (the default `modeldeck up`)")
    return workers[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--key-file", default=".modeldeck/admin.key")
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--trees", type=int, default=8)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmarks only run against a loopback address")
    base = args.url + "/api/v1"
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + open(args.key_file).read().strip()
    X, y = load_iris(return_X_y=True)
    tag = uuid.uuid4().hex[:6]
    names, sizes = [], []
    started = time.perf_counter()
    for i in range(args.models):
        blob = sio.dumps(RandomForestClassifier(n_estimators=args.trees, random_state=i).fit(X, y))
        name = f"many-{tag}-{i:03d}"
        meta = {"name": name, "format": "skops", "pool": "cpu"}
        resp = session.post(base + "/models", files={"file": ("m.skops", io.BytesIO(blob)), "metadata": (None, json.dumps(meta))},
                            timeout=120)
        if resp.status_code != 201:
            raise SystemExit(f"upload of {name} answered {resp.status_code}: {resp.text[:300]}")
        names.append(name)
        sizes.append(len(blob))
    print(f"uploaded {args.models} models of {statistics.mean(sizes) / 1024:.0f} KB on average "
          f"({sum(sizes) / 2**20:.1f} MB in all) in {time.perf_counter() - started:.1f} s", flush=True)
    time.sleep(2.5)  # a fresh heartbeat
    before = cpu_worker(session, base)
    row = [X[0].tolist()]
    cold, warm, loads = [], [], []
    rng = random.Random(0)
    for round_no in range(args.rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            resp = session.post(f"{base}/models/{name}/predict", json={"inputs": row}, timeout=60)
            took = (time.perf_counter() - t) * 1000
            if resp.status_code != 200:
                raise SystemExit(f"predict of {name} answered {resp.status_code}: {resp.text[:300]}")
            load_ms = resp.json()["timings"]["load_ms"]
            (cold if round_no == 0 else warm).append(took)
            loads.append(load_ms)
    time.sleep(2.5)
    after = cpu_worker(session, base)
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    total = hits + misses
    print(f"{len(cold) + len(warm)} predictions over {args.models} models in {args.rounds} rounds")
    print(f"  first round (each model's first request): p50 {pct(cold, 0.5):.2f} ms, p99 {pct(cold, 0.99):.2f} ms")
    if warm:
        print(f"  later rounds: p50 {pct(warm, 0.5):.2f} ms, p99 {pct(warm, 0.99):.2f} ms")
    print(f"  worker cache: {hits} hits, {misses} misses, hit rate {hits / total:.1%} ({total} lookups); "
          f"holds {len(after['models'])} models")
    print(f"  worker resident memory: {before['memory_mb']} MB before the requests, {after['memory_mb']} MB after "
          f"(cache bounds: MODELDECK_MODEL_CACHE_SIZE, MODELDECK_MODEL_CACHE_MB as the stack was started with)")
    print(f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
