"""Resident memory of the API and of a CPU worker after they served a skops model (docs/runtime.md).

Run it with the Python of the environment to measure, e.g. without and with the genai extra:
    .venv/bin/python tests/bench/process_memory.py
    .venv-genai/bin/python tests/bench/process_memory.py [--code DIR]
It starts nx-27017, the API (gunicorn, one worker process) and one CPU worker from that Python and the code in
--code (default: this checkout), uploads an iris LogisticRegression saved with skops (which the API opens and
inspects), predicts with it 20 times, and prints each process's RSS and whether it has torch's library mapped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pymongo
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from genai_embeddings import free_port, wait  # noqa: E402


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def has_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", default=str(ROOT), help="the ModelDeck checkout whose processes are measured")
    args = parser.parse_args()
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    artifact = skops.io.dumps(LogisticRegression(max_iter=500).fit(X, y))
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-bench-rss-"))
    mongo_port, api_port = free_port(), free_port()
    env = {**os.environ, "MODELDECK_HOME": str(tmp), "MODELDECK_EMBEDDED_MONGO_PORT": str(mongo_port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_QUEUE_PREFIX": f"bench-rss-{os.getpid()}.", "PYTHONPATH": args.code}
    procs: list[subprocess.Popen] = []
    logs = open(tmp / "processes.log", "ab")  # noqa: SIM115
    try:
        procs.append(subprocess.Popen([str(Path(sys.executable).with_name("nx-27017")), "--db", str(tmp / "r.db"),
                                       "--port", str(mongo_port), "--log-file", str(tmp / "nx.log"),
                                       "--pid-file", str(tmp / "nx.pid")], env=env, stdout=logs, stderr=logs))
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{mongo_port}").modeldeck
        wait(lambda: db.command("ping"), 30, "nx-27017 answering")
        sys.path.insert(0, args.code)
        from server.core import keys_repo

        _, key = keys_repo.create_key(db, "bench", "admin", None, None, "rss bench")
        worker = subprocess.Popen([sys.executable, "-m", "runtime.worker"], cwd=args.code,
                                  env={**env, "MODELDECK_WORKER_POOL": "cpu"}, stdout=logs, stderr=logs)
        procs.append(worker)
        api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{api_port}", "--workers", "1",
                                "--threads", "16", "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker",
                                "server.http.wsgi:app"], cwd=args.code, env=env, stdout=logs, stderr=logs)
        procs.append(api)
        url = f"http://127.0.0.1:{api_port}"
        wait(lambda: db.workers.find_one({"pool": "cpu", "state": {"$in": ["idle", "busy"]}}), 120, "a CPU worker")
        wait(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, 60, "the API")
        time.sleep(5)  # the worker imports its model libraries in the background once it consumes
        before = rss_mib(worker.pid)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        meta = {"name": "iris", "format": "skops", "pool": "cpu"}
        session.post(url + "/api/v1/models", files={"file": ("m.skops", io.BytesIO(artifact)),
                                                     "metadata": (None, json.dumps(meta))}).raise_for_status()
        for _ in range(20):
            session.post(url + "/api/v1/models/iris/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).raise_for_status()
        (api_worker,) = psutil.Process(api.pid).children()
        torch_installed = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                                          "print(u.find_spec('torch') is not None)"], capture_output=True,
                                         text=True).stdout.strip()
        print(f"environment: {sys.prefix} (torch installed: {torch_installed}); code: {args.code}")
        print(f"API worker process: {rss_mib(api_worker.pid):.0f} MiB RSS, torch mapped: {has_torch(api_worker.pid)}")
        print(f"CPU worker: {before:.0f} MiB RSS before any job, {rss_mib(worker.pid):.0f} MiB after 20 predictions, "
              f"torch mapped: {has_torch(worker.pid)}")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


if __name__ == "__main__":
    sys.exit(main())
