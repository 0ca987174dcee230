"""GPU check (not part of the test suite): a GPU worker runs a TorchScript model on the device, end to end.

On a machine with an NVIDIA GPU, RabbitMQ and `pip install -e ".[gpu,test]"`:
    .venv/bin/python tests/gpu/check.py
It starts nx-27017, a worker for pool `gpu`, and the API on loopback; uploads a TorchScript model with
pool `gpu`; predicts; and checks the answer against the model run locally, the worker's heartbeat
(GPU name and memory from NVML) and that the model's parameters live on CUDA in the worker. Prints a report.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo
import requests
import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # still starting
            pass
        time.sleep(0.5)
    raise SystemExit(f"FAILED: {what} within {seconds:.0f} s")


def main() -> int:
    if not torch.cuda.is_available():
        print("FAILED: torch sees no CUDA device on this machine")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-gpu-"))
    mongo_port, api_port = free_port(), free_port()
    env = {**os.environ, "MODELDECK_HOME": str(tmp), "MODELDECK_EMBEDDED_MONGO_PORT": str(mongo_port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_QUEUE_PREFIX": "gpucheck.", "MODELDECK_API_PORT": str(api_port)}
    procs = []
    try:
        procs.append(subprocess.Popen([str(Path(sys.executable).with_name("nx-27017")), "--db", str(tmp / "r.db"),
                                       "--port", str(mongo_port), "--log-file", str(tmp / "nx.log"),
                                       "--pid-file", str(tmp / "nx.pid")], env=env))
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{mongo_port}").modeldeck
        wait(lambda: db.command("ping"), 30, "nx-27017 answering")
        from server.core import keys_repo

        _, key = keys_repo.create_key(db, "gpu-check", "admin", None, None, "gpu check")
        procs.append(subprocess.Popen([sys.executable, "-m", "runtime.worker"], cwd=ROOT,
                                      env={**env, "MODELDECK_WORKER_POOL": "gpu", "MODELDECK_WORKER_CONCURRENCY": "1"}))
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{api_port}",
                                       "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "--threads", "4", "server.http.wsgi:app"], cwd=ROOT, env=env))
        base = f"http://127.0.0.1:{api_port}"
        wait(lambda: db.workers.find_one({"pool": "gpu", "state": {"$in": ["idle", "busy"]}}), 120, "a gpu worker serving")
        wait(lambda: requests.get(base + "/healthz", timeout=2).status_code == 200, 60, "the API answering")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(model), buf)
        meta = {"name": "gpu-mlp", "format": "torchscript", "pool": "gpu"}
        up = session.post(base + "/api/v1/models", files={"file": ("m.pt", buf.getvalue()), "metadata": (None, json.dumps(meta))})
        print("upload:", up.status_code, up.json().get("sha256", up.text)[:16])
        rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]
        started = time.perf_counter()
        answer = session.post(base + "/api/v1/models/gpu-mlp/predict", json={"inputs": rows}, timeout=120)
        cold_ms = (time.perf_counter() - started) * 1000
        print("predict:", answer.status_code, answer.json())
        expected = model(torch.tensor(rows)).tolist()
        got = answer.json()["predictions"]
        close = all(abs(a - b) < 1e-4 for ra, rb in zip(got, expected) for a, b in zip(ra, rb))
        warm = []
        for _ in range(50):
            t = time.perf_counter()
            session.post(base + "/api/v1/models/gpu-mlp/predict", json={"inputs": rows}).raise_for_status()
            warm.append((time.perf_counter() - t) * 1000)
        warm.sort()
        beat = db.workers.find_one({"pool": "gpu"})
        print(f"cold first predict {cold_ms:.1f} ms; warm p50 {warm[25]:.2f} ms over 50")
        print("worker GPUs (NVML):", beat.get("gpus"))
        ok = answer.status_code == 200 and close and bool(beat.get("gpus"))
        print("RESULT:", "PASS" if ok else "FAIL", "(predictions match the local model: %s)" % close)
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
