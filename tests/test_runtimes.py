"""Runtimes: operators see pools, queue depths and every worker's resources; silent workers show as lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import version
from typing import Any

import pytest

from conftest import ROOT, Client, Proc, Stack, start_worker, unique, wait_for
from runtime.controller.autoscaler import Load, decide
from runtime.environment import detect_gpus
from server.core.pools_repo import AutoscalePolicy
from server.core.queues import QueueDepth, QueueProbe


def pool_of(client: Client, name: str) -> dict[str, Any]:
    resp = client.get("/api/v1/runtimes")
    assert resp.status_code == 200, resp.text
    return next(p for p in resp.json()["pools"] if p["name"] == name)


def test_operator_sees_a_live_worker_with_its_resources(operator: Client, worker) -> None:  # type: ignore[no-untyped-def]
    cpu = pool_of(operator, "cpu")
    assert isinstance(cpu["queue_depth"], int) and cpu["consumers"] >= 1
    mine = next(w for w in cpu["workers"] if w["pid"] == worker.popen.pid)
    assert mine["state"] in ("idle", "busy")
    assert mine["concurrency"] == 4 and mine["memory_mb"] > 10 and mine["cpu_percent"] >= 0
    assert len(mine["gpus"]) == len(detect_gpus())
    assert mine["environment"]["scikit-learn"] == version("scikit-learn")
    assert isinstance(mine["models"], list) and mine["host"]


def test_killed_worker_is_shown_as_lost(stack: Stack, operator: Client) -> None:
    pool = unique("lost").replace("-", "_")
    proc = start_worker(stack, pool)
    assert [w["state"] for w in pool_of(operator, pool)["workers"]] in (["idle"], ["busy"])
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)
    wait_for(lambda: [w["state"] for w in pool_of(operator, pool)["workers"]] == ["lost"], 25, "worker shown as lost")
    assert pool_of(operator, pool)["live_workers"] == 0
    proc.stop()


def test_analyst_may_not_see_or_scale_runtimes(make_client) -> None:  # type: ignore[no-untyped-def]
    analyst = make_client("analyst")
    assert analyst.get("/api/v1/runtimes").status_code == 403
    assert analyst.put("/api/v1/runtimes/cpu/scale", json={"replicas": 2}).status_code == 403


@pytest.mark.parametrize("path, body, message", [
    ("/api/v1/runtimes/x/autoscale", {"min": 3, "max": 2}, "field 'min' (3) must not exceed field 'max' (2)"),
    ("/api/v1/runtimes/bad%20name/scale", {"replicas": 1},
     "pool name 'bad name' is not valid: expected letters, digits, '_' and '-', at most 50"),
])
def test_bad_scaling_requests_are_400(operator: Client, path: str, body: dict[str, Any], message: str) -> None:
    resp = operator.put(path, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"] == message


@pytest.mark.parametrize("body", [{"replicas": -1}, {"replicas": 101}, {"replicas": 1, "extra": True}])
def test_bad_replica_counts_are_400(operator: Client, body: dict[str, Any]) -> None:
    resp = operator.put("/api/v1/runtimes/cpu/scale", json=body)
    assert resp.status_code == 400, resp.text
    assert "field" in resp.json()["error"]["message"]


def test_replicas_above_the_host_limit_are_refused(operator: Client) -> None:
    resp = operator.put("/api/v1/runtimes/cpu/scale", json={"replicas": 9})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        "field 'replicas': at most 8 workers per pool (MODELDECK_MAX_REPLICAS_PER_POOL), got 9")
    resp = operator.put("/api/v1/runtimes/cpu/autoscale", json={"min": 1, "max": 20})
    assert resp.json()["error"]["message"] == "field 'max': at most 8 workers per pool (MODELDECK_MAX_REPLICAS_PER_POOL), got 20"


def test_gpu_worker_refuses_to_start_without_a_gpu(stack: Stack) -> None:
    if detect_gpus():
        pytest.skip("this machine has an NVIDIA GPU, so the refusal to start without one cannot be shown here")
    run = subprocess.run([sys.executable, "-m", "runtime.worker"], env={**stack.env, "MODELDECK_WORKER_POOL": "gpu"},
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert "pool 'gpu' needs an NVIDIA GPU and NVML finds none on this machine; refusing to start" in run.stderr


POLICY = AutoscalePolicy(min=1, max=4, target_backlog_per_worker=2, cooldown_s=30)


@pytest.mark.parametrize("current, load, since, expected", [
    (0, Load(0, 0), 0, 1),  # below min
    (1, Load(7, 1), 0, 4),  # backlog of 8 at 2 per worker
    (1, Load(100, 0), 0, 4),  # capped at max
    (4, Load(0, 0), 5, 4),  # cooling down
    (4, Load(0, 0), 31, 1),  # after cooldown, down to min
    (3, Load(2, 1), 31, 3),  # hysteresis: 3 tasks at half the target still need 3
    (3, Load(1, 0), 31, 1),
    (5, Load(0, 0), 0, 4),  # above max, at once
])
def test_autoscaler_decides_within_bounds_with_cooldown_and_hysteresis(current: int, load: Load, since: float,
                                                                       expected: int) -> None:
    assert decide(POLICY, current, load, since).replicas == expected


def test_autoscaler_may_scale_to_zero_and_back() -> None:
    policy = AutoscalePolicy(min=0, max=2, target_backlog_per_worker=1, cooldown_s=0)
    assert decide(policy, 1, Load(0, 0), 0).replicas == 0
    assert decide(policy, 0, Load(1, 0), 0).replicas == 1


def test_queue_depths_come_from_rabbitmq_and_are_unknown_while_it_is_away(stack: Stack) -> None:
    probe = QueueProbe(stack.settings.broker_url)
    try:
        depths = probe.depths([stack.settings.queue_name(unique("never-declared"))])
        assert list(depths.values()) == [QueueDepth(ready=0, consumers=0)]
    finally:
        probe.close()
    away = QueueProbe("amqp://guest:guest@127.0.0.1:1//")
    assert away.depths(["q"]) == {"q": None}


def test_a_configured_pool_without_workers_is_not_ready_in_readyz(operator: Client) -> None:
    pool = unique("empty").replace("-", "_")
    assert operator.put(f"/api/v1/runtimes/{pool}/scale", json={"replicas": 0}).status_code == 200
    checks = Client(operator.base, None).get("/readyz").json()["checks"]
    assert checks["pools"][pool] == {"workers": 0, "ok": False}
    assert checks["pools"]["cpu"]["ok"] is True


def test_container_probe_reports_this_hosts_worker(stack: Stack, worker: Proc) -> None:
    """python -m runtime.probe is the compose and Kubernetes health check of a worker container."""
    ok = subprocess.run([sys.executable, "-m", "runtime.probe"], env=stack.env, cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    none = subprocess.run([sys.executable, "-m", "runtime.probe"], env={**stack.env, "MODELDECK_WORKER_POOL": "nobody_here"},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert none.returncode == 1 and "no fresh heartbeat from a nobody_here worker" in none.stdout
