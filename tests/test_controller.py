"""The controller: manual scaling, the autoscaler on queue depth, and supervision of local worker processes."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Client, Proc, Stack, unique, wait_for
from sample_models import SlowModel


@pytest.fixture(scope="module")
def controller(stack: Stack) -> Iterator[Proc]:
    """A controller with the local backend; the workers it starts serve one task at a time."""
    env = {**stack.env, "MODELDECK_CONTROLLER_INTERVAL_S": "0.3", "MODELDECK_WORKER_CONCURRENCY": "1",
           "MODELDECK_CONTROLLER_STOP_TIMEOUT_S": "8", "MODELDECK_CONTROLLER_RESTART_BACKOFF_MAX_S": "2"}
    proc = Proc([sys.executable, "-m", "runtime.controller"], env, stack.tmp / "controller.log")
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]


def serving(client: Client, pool: str) -> list[dict[str, Any]]:
    """Return the pool's workers that take work."""
    pools = client.get("/api/v1/runtimes").json()["pools"]
    found = next((p for p in pools if p["name"] == pool), {"workers": []})
    return [w for w in found["workers"] if w["state"] in ("idle", "busy")]


def decisions(stack: Stack, pool: str) -> list[dict[str, Any]]:
    return list(stack.db.audit.find({"actor": "controller", "action": "controller.scale", "target": pool}).sort("seq", 1))


def submit(client: Client, model: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        resp = client.post("/api/v1/jobs", json={"model": model, "inputs": [[float(i), 0.0]]})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["job_id"])
    return ids


def test_operator_scales_a_pool_and_the_controller_follows(stack: Stack, operator: Client, controller: Proc) -> None:
    pool = unique("manual")
    resp = operator.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 2, "reason": "load test"})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: len(serving(operator, pool)) == 2, 60, "two workers", controller.log)
    view = next(p for p in operator.get("/api/v1/runtimes").json()["pools"] if p["name"] == pool)
    assert view["replicas_desired"] == 2 and view["reason"] == "load test"
    assert operator.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 0, "reason": "done"}).status_code == 200
    wait_for(lambda: not stack.db.workers.find_one({"pool": pool}), 30, "workers stopped", controller.log)
    assert [(d["details"]["from"], d["details"]["to"]) for d in decisions(stack, pool)] == [(0, 2), (2, 0)]
    assert decisions(stack, pool)[0]["details"]["reason"].endswith(": load test")
    asked = stack.db.audit.find_one({"action": "pool.scale", "target": pool, "details.replicas": 2})
    assert asked["details"]["reason"] == "load test" and asked["role"] == "operator"


def test_autoscaler_scales_up_on_backlog_drains_and_scales_down_after_cooldown(
        stack: Stack, tight_api: Client, controller: Proc) -> None:
    pool = unique("auto")
    policy = {"min": 1, "max": 3, "target_backlog_per_worker": 2, "cooldown_s": 3, "reason": "nightly batch"}
    assert tight_api.put(f"/api/v1/runtimes/{pool}/autoscale", json=policy).status_code == 200
    wait_for(lambda: len(serving(tight_api, pool)) == 1, 60, "the first worker", controller.log)
    model = unique("slow")
    assert tight_api.upload(model, pickle.dumps(SlowModel(1.0)), fmt="pickle", filename="m.pkl", pool=pool).status_code == 201
    jobs = submit(tight_api, model, 16)
    wait_for(lambda: len(serving(tight_api, pool)) == 3, 60, "scale-up to 3", controller.log)
    wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "succeeded"}) == len(jobs),
             60, "the backlog to drain", controller.log)
    wait_for(lambda: len(serving(tight_api, pool)) == 1 and decisions(stack, pool)[-1]["details"]["to"] == 1,
             30, "scale-down to 1", controller.log)
    steps = decisions(stack, pool)
    moves = [(d["details"]["from"], d["details"]["to"]) for d in steps]
    assert moves[0] == (0, 1) and steps[0]["details"]["reason"] == "below min 1"
    ups = [d for d in steps[1:] if d["details"]["to"] > d["details"]["from"]]
    assert ups and max(d["details"]["to"] for d in ups) == 3 and all(d["details"]["backlog"] > 0 for d in ups)
    down = steps[-1]["details"]
    assert down["to"] == 1 and down["since_change_s"] >= 3 and down["policy"]["cooldown_s"] == 3
    assert "after cooldown" in down["reason"]
    assert all(stack.db.jobs.find_one({"_id": j})["attempts"] == 1 for j in jobs)
    tight_api.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 0, "reason": "test over"})


def test_sigkilled_worker_loses_no_job_and_is_restarted(stack: Stack, tight_api: Client, controller: Proc) -> None:
    pool = unique("kill")
    assert tight_api.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 1}).status_code == 200
    wait_for(lambda: len(serving(tight_api, pool)) == 1, 60, "a worker", controller.log)
    victim = serving(tight_api, pool)[0]["pid"]
    model = unique("slow")
    assert tight_api.upload(model, pickle.dumps(SlowModel(0.5)), fmt="pickle", filename="m.pkl", pool=pool).status_code == 201
    jobs = submit(tight_api, model, 6)
    wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "succeeded"}) >= 1
             and stack.db.jobs.find_one({"_id": {"$in": jobs}, "status": "running"}) is not None, 30, "jobs running")
    running = stack.db.jobs.find_one({"_id": {"$in": jobs}, "status": "running"})["_id"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: any(w["pid"] != victim for w in serving(tight_api, pool)), 30, "the restarted worker", controller.log)
    wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "succeeded"}) == len(jobs),
             60, "every job to finish", controller.log)
    docs = {j: stack.db.jobs.find_one({"_id": j}) for j in jobs}
    # The job the worker died in was redelivered and run again once; every other job ran once.
    assert docs[running]["attempts"] == 2
    assert all(d["attempts"] == 1 for j, d in docs.items() if j != running)
    assert all(d["result"]["predictions"] == [float(i)] for i, d in enumerate(docs.values()))
    restart = stack.db.audit.find_one({"actor": "controller", "action": "controller.restart", "target": pool})
    assert f"(pid {victim}) exited with code -9" in restart["details"]["event"]
    tight_api.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 0, "reason": "test over"})
    time.sleep(0.1)


def test_a_request_to_a_pool_scaled_to_zero_starts_a_worker_and_waits(stack: Stack, tight_api: Client,
                                                                       controller: Proc, iris_skops: bytes, iris) -> None:  # type: ignore[no-untyped-def]
    pool = unique("zero").replace("-", "_")
    policy = {"min": 0, "max": 1, "target_backlog_per_worker": 4, "cooldown_s": 3, "reason": "idle most of the day"}
    assert tight_api.put(f"/api/v1/runtimes/{pool}/autoscale", json=policy).status_code == 200
    model = unique("sleepy")
    assert tight_api.upload(model, iris_skops, pool=pool).status_code == 201
    assert serving(tight_api, pool) == []
    # tight_api's predict timeout is 2 s, but a cold start may take longer: the wait is bounded separately.
    answer = tight_api.post(f"/api/v1/models/{model}/predict", json={"inputs": [iris[1][0].tolist()]}, timeout=90)
    assert answer.status_code == 200, answer.text
    assert answer.json()["cold_start"] is True
    assert answer.json()["predictions"] == iris[0].predict(iris[1][:1]).tolist()
    again = tight_api.post(f"/api/v1/models/{model}/predict", json={"inputs": [iris[1][0].tolist()]})
    assert again.json()["cold_start"] is False
    wait_for(lambda: not stack.db.workers.find_one({"pool": pool}), 60, "scale back to zero", controller.log)
    moves = [(d["details"]["from"], d["details"]["to"]) for d in decisions(stack, pool)]
    assert moves == [(0, 1), (1, 0)]
    assert decisions(stack, pool)[0]["details"]["reason"].startswith("woken: a request is waiting")
