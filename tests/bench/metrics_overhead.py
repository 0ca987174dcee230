"""Measure what metric recording (or another feature) costs on predict p50: the same stack, on and off, interleaved.

Usage: ./modeldeck up, then
    .venv/bin/python tests/bench/metrics_overhead.py [--rounds 5] [-n 1000] [--off MODELDECK_ACCESS_LOG=off]

The running stack's API records metrics (the default). This script starts a second API beside it from the
same settings and code, with MODELDECK_METRICS_ENABLED=false (or the setting given with --off), on a free loopback port; both send work to
the same CPU worker. Requests alternate between the two APIs one by one (A, B, A, B, ...) so that load,
CPU frequency and worker state drift alike for both, and p50 is compared per round and over all rounds.
The second API is stopped at the end. Loopback only; bounded by --rounds × 2n requests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from installer.stack import Layout, api_url, child_env  # noqa: E402
from server.core.settings import settings_or_exit  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api_without_metrics(settings, layout: Layout, port: int, prom_dir: str,  # type: ignore[no-untyped-def]
                              off: str = "MODELDECK_METRICS_ENABLED=false") -> subprocess.Popen[bytes]:
    name, _, value = off.partition("=")
    env = child_env(settings, layout, PROMETHEUS_MULTIPROC_DIR=prom_dir, **{name: value})
    return subprocess.Popen([
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(settings.api_workers),
        "--threads", str(settings.api_threads), "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "server.http.wsgi:app",
    ], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the second API at {url} did not become ready in {timeout_s} s")


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=1000, help="requests per API per round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--off", default="MODELDECK_METRICS_ENABLED=false", help="VAR=VALUE that turns the feature off in B")
    args = parser.parse_args()
    settings = settings_or_exit()
    layout = Layout(settings.home.resolve())
    url_a = api_url(settings)
    if not url_a.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmarks only run against a loopback address")
    key = (layout.home / "admin.key").read_text().strip()
    port = free_port()
    url_b = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as prom_dir:
        proc = start_api_without_metrics(settings, layout, port, prom_dir, args.off)
        try:
            wait_ready(url_b)
            run(args, url_a, url_b, key)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run(args: argparse.Namespace, url_a: str, url_b: str, key: str) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    meta = {"name": "bench-iris", "format": "skops", "pool": "cpu"}
    up = session.post(url_a + "/api/v1/models", files={"file": ("m.skops", io.BytesIO(sio.dumps(model))),
                                                       "metadata": (None, json.dumps(meta))})
    up.raise_for_status()
    body = {"inputs": [X[0].tolist()], "version": up.json()["version"]}
    targets = {"on": f"{url_a}/api/v1/models/bench-iris/predict", "off": f"{url_b}/api/v1/models/bench-iris/predict"}
    for _ in range(args.warmup):
        for url in targets.values():
            session.post(url, json=body).raise_for_status()
    load = os.getloadavg()
    print(f"on (A, {url_a}) vs {args.off} (B, {url_b}); {args.rounds} rounds × {args.n} requests each, "
          f"interleaved; load average {load[0]:.2f} {load[1]:.2f}")
    print(f"{'round':>5} {'p50 on':>8} {'p50 off':>8} {'diff':>7} {'p90 on':>8} {'p90 off':>8}")
    every: dict[str, list[float]] = {"on": [], "off": []}
    diffs = []
    for r in range(1, args.rounds + 1):
        lat: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.n):
            for side, url in targets.items():
                t = time.perf_counter()
                resp = session.post(url, json=body)
                lat[side].append((time.perf_counter() - t) * 1000)
                if resp.status_code != 200:
                    raise SystemExit(f"predict via {side} failed: {resp.status_code} {resp.text}")
        on, off = p(lat["on"], 0.5), p(lat["off"], 0.5)
        diffs.append((on - off) / off * 100)
        print(f"{r:>5} {on:8.2f} {off:8.2f} {diffs[-1]:+6.1f}% {p(lat['on'], 0.9):8.2f} {p(lat['off'], 0.9):8.2f}")
        for side in every:
            every[side].extend(lat[side])
    on, off = p(every["on"], 0.5), p(every["off"], 0.5)
    print(f"  all {on:8.2f} {off:8.2f} {(on - off) / off * 100:+6.1f}%   "
          f"(median of per-round differences {statistics.median(diffs):+.1f}%; target: under +5%)")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f}")


if __name__ == "__main__":
    main()
