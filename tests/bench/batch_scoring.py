"""Measure batch scoring: a PostgreSQL table of one million rows scored into another table, rows per second and peak worker memory.

Usage: .venv/bin/python tests/bench/batch_scoring.py [--rows 1000000] [--chunk-rows 10000]
Starts its own nx-27017, one CPU worker and the API on loopback (RabbitMQ at 127.0.0.1:5672), creates a database of
its own on the local PostgreSQL (postgresql://postgres@127.0.0.1:5432) and drops it at the end. The model is a
scikit-learn LogisticRegression on the four iris features (skops). Peak memory is the worker process's RSS, sampled
every 50 ms with psutil while the job runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import psycopg
import pymongo
import skops.io as sio
from cryptography.fernet import Fernet
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from conftest import IRIS_FEATURES, IRIS_SCHEMA, POSTGRES_URL, Client, Proc, Stack, free_port, start_api, start_worker, wait_for  # noqa: E402
from installer.services import ensure_broker, ensure_postgres, nx_command, repository_answers  # noqa: E402
from server.core import keys_repo  # noqa: E402
from server.core.settings import Settings  # noqa: E402


def make_table(url: str, rows: int) -> None:
    cols = ", ".join(f"{f} double precision" for f in IRIS_FEATURES)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE source_rows (id bigint PRIMARY KEY, {cols})")
        conn.execute("INSERT INTO source_rows SELECT g, 4.3 + (g %% 36) / 10.0, 2.0 + (g %% 24) / 10.0, "
                     "1.0 + (g %% 59) / 10.0, 0.1 + (g %% 25) / 10.0 FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE source_rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-bench-"))
    tag, port = uuid.uuid4().hex[:8], free_port()
    key = Fernet.generate_key().decode()
    settings = Settings(home=tmp / "home", embedded_mongo_port=port, mongo_url="", mongo_db=f"bench_{tag}",
                        queue_prefix=f"bench-{tag}.", heartbeat_interval_s=0.5, worker_lost_after_s=8, secret_key=key)
    env = {**os.environ, "MODELDECK_HOME": str(tmp / "home"), "MODELDECK_EMBEDDED_MONGO_PORT": str(port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_MONGO_DB": f"bench_{tag}", "MODELDECK_QUEUE_PREFIX": f"bench-{tag}.",
           "MODELDECK_HEARTBEAT_INTERVAL_S": "0.5", "MODELDECK_WORKER_LOST_AFTER_S": "8", "MODELDECK_SECRET_KEY": key,
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{HERE.parent.parent}{os.pathsep}{HERE.parent}"}
    ensure_broker(settings)
    ensure_postgres(POSTGRES_URL)
    pg_name = f"modeldeck_bench_{tag}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {pg_name}")
    pg_url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + pg_name
    procs = [Proc(nx_command(tmp / "repository.db", port, tmp), env, tmp / "nx.log")]
    try:
        wait_for(lambda: repository_answers(settings.effective_mongo_url, 200), 30, "nx-27017")
        db = pymongo.MongoClient(settings.effective_mongo_url)[settings.mongo_db]
        stack = Stack(settings=settings, env=env, tmp=tmp, db=db)
        t = time.perf_counter()
        make_table(pg_url, args.rows)
        print(f"created source_rows with {args.rows} rows in {time.perf_counter() - t:.1f} s")
        worker = start_worker(stack, "cpu")
        procs.append(worker)
        api, url = start_api(stack)
        procs.append(api)
        _, admin_key = keys_repo.create_key(db, "bench", "admin", None, None, "bench")
        client = Client(url, admin_key)
        X, y = load_iris(return_X_y=True)
        assert client.upload("bench-iris", sio.dumps(LogisticRegression(max_iter=500).fit(X, y)),
                             input_schema=IRIS_SCHEMA).status_code == 201
        assert client.post("/api/v1/datasources", json={"name": "warehouse", "kind": "sql", "url": pg_url}).status_code == 201
        rss = psutil.Process(worker.popen.pid)
        baseline = rss.memory_info().rss
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        resp = client.post("/api/v1/jobs", json={"model": "bench-iris", "chunk_rows": args.chunk_rows,
                                                 "source": {"datasource": "warehouse", "table": "source_rows"},
                                                 "destination": {"datasource": "warehouse", "table": "scores"}})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
        assert job["status"] == "succeeded", job
        with psycopg.connect(pg_url) as conn:
            count = conn.execute("SELECT count(*), count(DISTINCT id) FROM scores").fetchone()
        assert count == (args.rows, args.rows), count
        print(f"scored {args.rows} rows PostgreSQL -> model -> PostgreSQL in {elapsed:.1f} s "
              f"(chunks of {args.chunk_rows}): {args.rows / elapsed:,.0f} rows/s end to end")
        print(f"worker RSS: {baseline / 2**20:.0f} MiB before the job, peak {peak[0] / 2**20:.0f} MiB during it "
              f"(+{(peak[0] - baseline) / 2**20:.0f} MiB)")
    finally:
        for proc in reversed(procs):
            proc.stop()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")


if __name__ == "__main__":
    main()
