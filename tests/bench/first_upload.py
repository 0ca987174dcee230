"""Measure the first upload to a fresh stack and what importing the upload checks' libraries at start costs in memory.

Usage: .venv/bin/python tests/bench/first_upload.py [--runs 2]
Each run brings up a fresh stack with `modeldeck up` (its own MODELDECK_HOME under /tmp, free ports, the RabbitMQ at
MODELDECK_BROKER_URL or 127.0.0.1:5672), once with MODELDECK_PRELOAD_UPLOAD_LIBRARIES=true (the default) and once
with false; as soon as `up` returns it uploads the README's 9 KB iris model (skops) and prints the time of that first
upload and of a second one, and the resident (RSS) and unshared (USS) memory of each gunicorn worker before the upload; then `down`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(HERE.parent)]

from conftest import free_port  # noqa: E402


def api_workers_memory_mb(api_pid: int) -> tuple[list[int], list[int]]:
    """Return the RSS and USS (memory no other process shares) in MB of each gunicorn worker (the master's children)."""
    workers = psutil.Process(api_pid).children()
    return ([round(c.memory_info().rss / 2**20) for c in workers],
            [round(c.memory_full_info().uss / 2**20) for c in workers])


def one_run(preload: bool, model: bytes) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="modeldeck-first-upload-"))
    port = free_port()
    env = {**os.environ, "MODELDECK_HOME": str(home), "MODELDECK_API_PORT": str(port),
           "MODELDECK_EMBEDDED_MONGO_PORT": str(free_port()), "MODELDECK_CONSOLE_PORT": str(free_port()),
           "MODELDECK_QUEUE_PREFIX": f"first-upload-{port}.", "MODELDECK_PRELOAD_UPLOAD_LIBRARIES": str(preload).lower()}
    cli = [sys.executable, "-m", "installer.cli"]
    try:
        began = time.perf_counter()
        up = subprocess.run([*cli, "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        up_s = time.perf_counter() - began
        rss, uss = api_workers_memory_mb(json.loads((home / "run" / "api.json").read_text())["pid"])
        key = (home / "admin.key").read_text().strip()
        times = []
        for _ in range(2):
            t = time.perf_counter()
            resp = requests.post(f"http://127.0.0.1:{port}/api/v1/models", headers={"Authorization": f"Bearer {key}"},
                                 timeout=60, files={"file": ("iris.skops", io.BytesIO(model)), "metadata": (
                                     None, json.dumps({"name": "iris", "format": "skops", "pool": "cpu"}))})
            times.append(round(time.perf_counter() - t, 3))
            assert resp.status_code == 201, resp.text
        return {"preload": preload, "up_s": round(up_s, 1), "first_upload_s": times[0], "second_upload_s": times[1],
                "api_worker_rss_mb": rss,
                "api_worker_uss_mb": uss}
    finally:
        subprocess.run([*cli, "down"], env=env, cwd=ROOT, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    X, y = load_iris(return_X_y=True)
    model = sio.dumps(LogisticRegression(max_iter=500).fit(X, y))
    print(f"model: {len(model)} bytes")
    for _ in range(args.runs):
        for preload in (True, False):
            print(json.dumps(one_run(preload, model)), flush=True)


if __name__ == "__main__":
    main()
