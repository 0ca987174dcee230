"""Measure batch scoring against the machine's limit: ModelDeck with 1 and 2 workers beside a hand-written script.

Usage: .venv/bin/python tests/bench/batch_scoring.py [--rows 1000000] [--chunk-rows 10000] [--rounds 1]
Starts its own nx-27017, CPU workers and the API on loopback (RabbitMQ at 127.0.0.1:5672), creates a database of its
own on the local PostgreSQL (postgresql://postgres@127.0.0.1:5432) and drops it at the end. The model is a
scikit-learn LogisticRegression on the four iris features (skops). In each round, on the same table:
- the hand-written script (tests/bench/handwritten_batch.py: COPY out, pyarrow parse, predict, pyarrow write, COPY in),
  in one process, then in two processes side by side, each scoring half of the ids: what the machine itself gains
  from a second process, the ceiling for what a second worker can gain;
- ModelDeck, PostgreSQL table -> PostgreSQL table, with one worker, then with two;
- ModelDeck, a Parquet file of the same rows -> PostgreSQL table, with two workers.
Peak memory is each worker's RSS sampled every 50 ms with psutil; CPU is the workers' own CPU seconds during the job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pyarrow.parquet as pq
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


def make_parquet(url: str, path: Path) -> None:
    """Write the table's rows to a Parquet file (row groups of 100,000 rows, a common writer setting)."""
    import pyarrow.csv as pacsv
    import io

    with psycopg.connect(url) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy(f"COPY (SELECT id, {', '.join(IRIS_FEATURES)} FROM source_rows ORDER BY id) "
                                "TO STDOUT (FORMAT csv, HEADER)") as copy:
            for block in copy:
                buf.write(block)
    pq.write_table(pacsv.read_csv(io.BytesIO(buf.getvalue())), path, row_group_size=100_000)


class Sampler:
    """Peak RSS and CPU seconds of worker processes while a job runs; CPU of the PostgreSQL backends serving the
    bench's database and of the whole machine, to tell a saturated machine from a slow program."""

    def __init__(self, pids: list[int], pg_url: str) -> None:
        self.pg = psycopg.connect(pg_url, autocommit=True)
        self.backends: dict[int, tuple[psutil.Process, float]] = {}
        self.machine0 = psutil.cpu_times()
        self.procs = [psutil.Process(p) for p in pids]
        self.base = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.base)
        self.cpu0 = [sum(p.cpu_times()[:2]) for p in self.procs]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _backends(self) -> None:
        rows = self.pg.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid()").fetchall()
        for (pid,) in rows:
            if pid not in self.backends:
                try:
                    proc = psutil.Process(pid)
                    self.backends[pid] = (proc, sum(proc.cpu_times()[:2]))
                except psutil.Error:
                    pass

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except psutil.Error:
                    pass  # the hand-written script has exited
            if n % 5 == 0:
                self._backends()
            n += 1
            time.sleep(0.05)

    def done(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        cpu = []
        for p, c in zip(self.procs, self.cpu0):
            try:
                cpu.append(sum(p.cpu_times()[:2]) - c)
            except psutil.Error:
                cpu.append(float("nan"))
        pg_cpu = 0.0
        for proc, before in self.backends.values():
            try:
                pg_cpu += sum(proc.cpu_times()[:2]) - before
            except psutil.Error:
                pass
        self.pg.close()
        now = psutil.cpu_times()
        busy = sum(now) - now.idle - now.iowait - (sum(self.machine0) - self.machine0.idle - self.machine0.iowait)
        total = sum(now) - sum(self.machine0)
        return {"pg_cpu_s": round(pg_cpu, 2), "machine_busy": busy / total if total else 0.0,
                "rss_before_mib": [round(b / 2**20) for b in self.base], "rss_peak_mib": [round(b / 2**20) for b in self.peak],
                "worker_cpu_s": [round(c, 2) for c in cpu]}


def run_job(client: Client, body: dict[str, Any], pids: list[int], pg_url: str) -> dict[str, Any]:
    sampler = Sampler(pids, pg_url)
    started = time.perf_counter()
    resp = client.post("/api/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stats = sampler.done()
    assert job["status"] == "succeeded", job
    return {"seconds": elapsed, **stats, "job": job}


def handwritten(pg_url: str, out: str, model_path: Path, halves: int = 0) -> dict[str, Any]:
    """Run the hand-written script in one process (halves=0), or in two side by side on halves of ids 1..halves*2."""
    script = [sys.executable, str(HERE / "handwritten_batch.py"), pg_url, "source_rows"]
    ranges = [[]] if not halves else [["1", str(halves)], [str(halves + 1), str(2 * halves)]]
    procs = [subprocess.Popen(script + [f"{out}_{i}" if halves else out, str(model_path), *r], stdout=subprocess.PIPE,
                              text=True) for i, r in enumerate(ranges)]
    sampler = Sampler([p.pid for p in procs], pg_url)
    outs, cpu = [], 0.0
    for proc in procs:
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, read as it is reaped
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, stdout
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
        cpu += usage.ru_utime + usage.ru_stime
    stats = sampler.done()
    timings = {k: max(o[k] for o in outs) for k in ("copy_out", "parse", "predict", "write_copy_in")}
    # From the first process's start of work (its imports and model load done) to the last one's end.
    timings["seconds"] = max(o["ended"] for o in outs) - min(o["began"] for o in outs)
    # Its CPU while measured (process_time around the work, not its imports); the whole process's for reference.
    return {**timings, **stats, "rows": sum(o["rows"] for o in outs),
            "worker_cpu_s": [round(o["cpu_s"], 2) for o in outs], "process_cpu_s": round(cpu, 2)}


def check_output(pg_url: str, table: str, rows: int) -> None:
    with psycopg.connect(pg_url) as conn:
        count = conn.execute(f"SELECT count(*), count(DISTINCT id), count(DISTINCT row_number) FROM {table}").fetchone()
    assert count == (rows, rows, rows), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"{os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-bench-"))
    (tmp / "data").mkdir()
    tag, port = uuid.uuid4().hex[:8], free_port()
    key = Fernet.generate_key().decode()
    settings = Settings(home=tmp / "home", embedded_mongo_port=port, mongo_url="", mongo_db=f"bench_{tag}",
                        queue_prefix=f"bench-{tag}.", heartbeat_interval_s=0.5, worker_lost_after_s=8, secret_key=key,
                        data_roots=(tmp / "data",))
    env = {**os.environ, "MODELDECK_HOME": str(tmp / "home"), "MODELDECK_EMBEDDED_MONGO_PORT": str(port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_MONGO_DB": f"bench_{tag}", "MODELDECK_QUEUE_PREFIX": f"bench-{tag}.",
           "MODELDECK_HEARTBEAT_INTERVAL_S": "0.5", "MODELDECK_WORKER_LOST_AFTER_S": "8", "MODELDECK_SECRET_KEY": key,
           "MODELDECK_DATA_ROOTS": json.dumps([str(tmp / "data")]),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{HERE.parent.parent}{os.pathsep}{HERE.parent}"}
    ensure_broker(settings)
    ensure_postgres(POSTGRES_URL)
    pg_name = f"modeldeck_bench_{tag}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {pg_name}")
    pg_url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + pg_name
    procs: list[Proc] = [Proc(nx_command(tmp / "repository.db", port, tmp), env, tmp / "nx.log")]
    try:
        wait_for(lambda: repository_answers(settings.effective_mongo_url, 200), 30, "nx-27017")
        db = pymongo.MongoClient(settings.effective_mongo_url)[settings.mongo_db]
        stack = Stack(settings=settings, env=env, tmp=tmp, db=db)
        t = time.perf_counter()
        make_table(pg_url, args.rows)
        make_parquet(pg_url, tmp / "data" / "rows.parquet")
        print(f"created source_rows and rows.parquet with {args.rows:,} rows in {time.perf_counter() - t:.1f} s")
        X, y = load_iris(return_X_y=True)
        model_bytes = sio.dumps(LogisticRegression(max_iter=500).fit(X, y))
        (tmp / "model.skops").write_bytes(model_bytes)
        api, url = start_api(stack)
        procs.append(api)
        _, admin_key = keys_repo.create_key(db, "bench", "admin", None, None, "bench")
        client = Client(url, admin_key)
        assert client.upload("bench-iris", model_bytes, input_schema=IRIS_SCHEMA).status_code == 201
        assert client.post("/api/v1/datasources", json={"name": "warehouse", "kind": "sql", "url": pg_url}).status_code == 201
        assert client.post("/api/v1/datasources", json={"name": "lake", "kind": "file", "path": str(tmp / "data")}).status_code == 201
        results: list[tuple[str, float, dict[str, Any]]] = []
        warmed = 0

        def warm(workers: list[Proc]) -> None:
            """Let new workers import their libraries and load the model (chunks of 50 rows reach every worker)."""
            nonlocal warmed
            time.sleep(3)
            for _ in range(2):
                warmed += 1
                run_job(client, {"model": "bench-iris", "chunk_rows": 50, "source": {
                    "datasource": "warehouse", "query": "SELECT * FROM source_rows WHERE id <= 2000", "key": "id"},
                    "destination": {"datasource": "warehouse", "table": f"warm_{warmed}"}}, [w.popen.pid for w in workers], pg_url)

        def score(name: str, workers: list[Proc], source: dict[str, Any], table: str) -> None:
            info = run_job(client, {"model": "bench-iris", "chunk_rows": args.chunk_rows, "source": source,
                                    "destination": {"datasource": "warehouse", "table": table}}, [w.popen.pid for w in workers], pg_url)
            check_output(pg_url, table, args.rows)
            results.append((name, info["seconds"], info))

        table = {"datasource": "warehouse", "table": "source_rows"}
        for r in range(args.rounds):
            hw = handwritten(pg_url, f"hand_{r}", tmp / "model.skops")
            assert hw["rows"] == args.rows, hw
            phases = {k: round(hw[k], 2) for k in ("copy_out", "parse", "predict", "write_copy_in")}
            results.append(("hand-written script (1 process)", hw["seconds"], {**hw, "detail": f"; phases (s) {phases}"}))
            hw2 = handwritten(pg_url, f"hand2_{r}", tmp / "model.skops", halves=args.rows // 2)
            assert hw2["rows"] == args.rows // 2 * 2, hw2
            results.append(("hand-written script (2 processes, half each)", hw2["seconds"], hw2))
            for threads in (str(settings.worker_concurrency), "1"):
                label = f"{threads} thread{'s' if threads != '1' else ''} each"
                workers = [start_worker(stack, "cpu", MODELDECK_WORKER_CONCURRENCY=threads)]
                procs.extend(workers)
                warm(workers)
                score(f"ModelDeck PG -> PG, 1 worker ({label})", workers, table, f"s1_{threads}_{r}")
                workers.append(start_worker(stack, "cpu", MODELDECK_WORKER_CONCURRENCY=threads))
                procs.append(workers[-1])
                warm(workers)
                score(f"ModelDeck PG -> PG, 2 workers ({label})", workers, table, f"s2_{threads}_{r}")
                if threads != "1":
                    score(f"ModelDeck Parquet -> PG, 2 workers ({label})", workers,
                          {"datasource": "lake", "file": "rows.parquet", "keep": ["id"]}, f"pq_{r}")
                for w in workers:
                    w.stop()
                    procs.remove(w)
        print(f"\n{args.rows:,} rows, chunks of {args.chunk_rows:,}; load average after: "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        print(f"{'run':<52} {'seconds':>8} {'rows/s':>10} {'x script':>9} {'x 1 worker':>11}  worker RSS before -> peak (MiB); CPU")
        script = one_worker = None
        for name, seconds, info in results:
            rate = args.rows / seconds
            if name == "hand-written script (1 process)":
                script = rate
            if "1 worker" in name:
                one_worker = rate
            mem = "" if "rss_peak_mib" not in info else (
                ", ".join(f"{b} -> {p} (+{p - b})" for b, p in zip(info["rss_before_mib"], info["rss_peak_mib"]))
                + f"; worker CPU {info['worker_cpu_s']} s, PostgreSQL backends {info['pg_cpu_s']} s, "
                f"machine busy {info['machine_busy']:.0%}")
            extra = info.get("detail", "")
            if name.startswith("hand"):
                mem = (f"its RSS peak {info['rss_peak_mib'][0]} MiB; its CPU {info['worker_cpu_s']} s, PostgreSQL backends "
                       f"{info['pg_cpu_s']} s, machine busy {info['machine_busy']:.0%}")
            print(f"{name:<52} {seconds:>8.2f} {rate:>10,.0f} {rate / script:>9.2f} "
                  f"{(rate / one_worker) if one_worker and not name.startswith('hand') else float('nan'):>11.2f}  {mem}{extra}")
        rates = {name: args.rows / seconds for name, seconds, _ in results}
        pair = rates.get("hand-written script (2 processes, half each)")
        if script and pair:
            print(f"\nWhat a second process gains on this machine: hand-written 2 processes / 1 process = {pair / script:.2f}")
            for threads in (str(settings.worker_concurrency), "1"):
                label = f"{threads} thread{'s' if threads != '1' else ''} each"
                one = rates.get(f"ModelDeck PG -> PG, 1 worker ({label})")
                two = rates.get(f"ModelDeck PG -> PG, 2 workers ({label})")
                if one and two:
                    print(f"ModelDeck ({label}): 2 workers / 1 worker = {two / one:.2f}, "
                          f"{two / one / (pair / script):.2f} of the machine's own gain")
    finally:
        for proc in reversed(procs):
            proc.stop()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")


if __name__ == "__main__":
    main()
