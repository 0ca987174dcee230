"""Measure scale-up on the local backend: time from a backlog appearing to a new worker taking work (target < 10 s).

Usage: .venv/bin/python tests/bench/scale_up.py [--runs 3]
Starts its own nx-27017, API (pickles allowed, for a slow test model) and controller on loopback, with a fresh
database and queue prefix (RabbitMQ at MODELDECK_BROKER_URL or 127.0.0.1:5672). Each run: a pool at 1 worker
(concurrency 1) under an autoscale policy (min 1, max 2, 1 task per worker) gets 6 two-second jobs at once; it prints
when the controller decided to scale up, when the new worker process sent its first heartbeat, and when two jobs ran at once.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import pymongo

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from conftest import Client, Proc, Stack, free_port, start_api, wait_for  # noqa: E402
from installer.services import ensure_broker, nx_command, repository_answers  # noqa: E402
from sample_models import SlowModel  # noqa: E402
from server.core import keys_repo  # noqa: E402
from server.core.settings import Settings  # noqa: E402


def iso_s(stamp: str) -> float:
    """Seconds since the epoch of one of the repository's ISO timestamps."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def one_run(stack: Stack, client: Client, pool: str, model: str) -> tuple[float, float, float]:
    policy = {"min": 1, "max": 2, "target_backlog_per_worker": 1, "cooldown_s": 600, "reason": "benchmark"}
    assert client.put(f"/api/v1/runtimes/{pool}/autoscale", json=policy).status_code == 200
    wait_for(lambda: stack.db.workers.count_documents({"pool": pool, "state": {"$in": ["idle", "busy"]}}) == 1, 60, "1 worker")
    before = {w["_id"] for w in stack.db.workers.find({"pool": pool})}
    seq = (stack.db.audit.find_one({}, sort=[("seq", -1)]) or {"seq": 0})["seq"]
    t0 = time.time()
    jobs = [client.post("/api/v1/jobs", json={"model": model, "inputs": [[1.0]]}).json()["job_id"] for _ in range(6)]
    while stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "running"}) < 2:
        time.sleep(0.02)
        if time.time() - t0 > 60:
            raise SystemExit("no second worker took work within 60 s")
    t_work = time.time() - t0
    decision = stack.db.audit.find_one({"seq": {"$gt": seq}, "action": "controller.scale", "target": pool})
    new = next(w for w in stack.db.workers.find({"pool": pool}) if w["_id"] not in before)
    t_decide = iso_s(decision["time"]) - t0
    t_ready = iso_s(new["started_at"]) - t0  # the first heartbeat ("starting"), before it consumes
    # Back to one worker for the next run.
    wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "succeeded"}) == len(jobs), 60, "drain")
    assert client.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 1, "reason": "benchmark reset"}).status_code == 200
    wait_for(lambda: stack.db.workers.count_documents({"pool": pool}) == 1, 60, "back to 1 worker")
    return t_decide, t_ready, t_work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modeldeck-bench-"))
    tag, port = uuid.uuid4().hex[:8], free_port()
    settings = Settings(home=tmp / "home", embedded_mongo_port=port, mongo_url="", mongo_db=f"bench_{tag}",
                        queue_prefix=f"bench-{tag}.", heartbeat_interval_s=0.5, worker_lost_after_s=3)
    env = {**os.environ, "MODELDECK_HOME": str(tmp / "home"), "MODELDECK_EMBEDDED_MONGO_PORT": str(port),
           "MODELDECK_MONGO_URL": "", "MODELDECK_MONGO_DB": f"bench_{tag}", "MODELDECK_QUEUE_PREFIX": f"bench-{tag}.",
           "MODELDECK_HEARTBEAT_INTERVAL_S": "0.5", "MODELDECK_WORKER_LOST_AFTER_S": "3", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{HERE.parent.parent}{os.pathsep}{HERE.parent}"}
    ensure_broker(settings)
    procs = [Proc(nx_command(tmp / "repository.db", port, tmp), env, tmp / "nx.log")]
    try:
        wait_for(lambda: repository_answers(settings.effective_mongo_url, 200), 30, "nx-27017")
        db = pymongo.MongoClient(settings.effective_mongo_url)[settings.mongo_db]
        stack = Stack(settings=settings, env=env, tmp=tmp, db=db)
        api, url = start_api(stack, MODELDECK_ALLOW_PICKLE="true")
        procs.append(api)
        procs.append(Proc([sys.executable, "-m", "runtime.controller"],
                          {**env, "MODELDECK_CONTROLLER_INTERVAL_S": "0.3", "MODELDECK_WORKER_CONCURRENCY": "1",
                           "MODELDECK_CONTROLLER_STOP_TIMEOUT_S": "8"}, tmp / "controller.log"))
        _, key = keys_repo.create_key(db, "bench", "admin", None, None, "bench")
        client = Client(url, key)
        pool, model = "bench", "bench-slow"
        assert client.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 1}).status_code == 200
        wait_for(lambda: db.workers.count_documents({"pool": pool, "state": {"$in": ["idle", "busy"]}}) == 1, 60, "1 worker")
        resp = client.upload(model, pickle.dumps(SlowModel(2.0)), fmt="pickle", filename="m.pkl", pool=pool)
        assert resp.status_code == 201, resp.text
        results = [one_run(stack, client, pool, model) for _ in range(args.runs)]
        for i, (d, r, w) in enumerate(results, 1):
            print(f"run {i}: scale-up decided {d:5.2f} s, new worker process announced itself {r:5.2f} s, new worker took work {w:5.2f} s")
        took = [w for _, _, w in results]
        print(f"backlog -> new worker taking work: median {statistics.median(took):.2f} s, max {max(took):.2f} s "
              f"over {len(took)} runs (target < 10 s)")
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
