"""The controller loop: read pools, queue depths and worker load; apply replicas through a backend; audit each change."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from pymongo.database import Database

from runtime.controller.autoscaler import Decision, Load, decide
from runtime.controller.backends import Backend
from runtime.controller.backends.local import LocalBackend
from server.core import audit_repo, jobs_repo, pools_repo, workers_repo
from server.core.clock import now_iso
from server.core.db import connect, ensure_indexes
from server.core.queues import QueueProbe
from server.core.settings import Settings, SettingsError, settings_or_exit

logger = logging.getLogger(__name__)

ACTOR = "controller"
STATE_EVERY_S = 5.0
PRUNE_EVERY_S = 60.0


def audit(db: Database, keys: audit_repo.AuditKeys, action: str, target: str, details: dict[str, Any]) -> None:
    """Append an audit entry written by the controller (no request, no role)."""
    audit_repo.append(db, {
        "time": now_iso(), "actor": ACTOR, "method": None, "role": None, "action": action, "target": target,
        "outcome": "success", "status": 200, "request_id": None, "client": socket.gethostname(), "details": details,
    }, keys)


class Controller:
    """Bring each configured pool to its desired replica count, one tick at a time."""

    def __init__(self, settings: Settings, db: Database, backend: Backend, probe: QueueProbe) -> None:
        self.settings = settings
        self.db = db
        self.audit_keys = audit_repo.audit_keys(settings)  # SettingsError names the variable when there is no key
        self.backend = backend
        self.probe = probe
        self._changed_at: dict[str, float] = {}
        self._reported: dict[str, tuple[float, dict[str, Any]]] = {}
        self._pruned_at = 0.0

    def tick(self) -> None:
        """Supervise workers, then decide and apply every configured pool's replicas."""
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            # Workers killed without a clean shutdown leave their last heartbeat behind; keep them visible as
            # "lost" for a while, then forget them.
            workers_repo.prune_workers(self.db, max(300.0, 30 * self.settings.worker_lost_after_s))
            # Jobs past MODELDECK_JOB_RESULT_TTL_S / MODELDECK_BATCH_RESULT_TTL_S, with their result files.
            jobs_repo.purge_expired_jobs(self.db)
            self._pruned_at = time.monotonic()
        for event in self.backend.supervise():
            audit(self.db, self.audit_keys, "controller.restart", event.split(":")[0].removeprefix("pool "), {"event": event})
        pools = [p for p in pools_repo.list_pools(self.db) if p.get("autoscale") or p.get("replicas_desired") is not None]
        if not pools:
            return
        depths = self.probe.depths([self.settings.queue_name(p["_id"]) for p in pools])
        busy: dict[str, int] = {}
        for worker in workers_repo.live_workers(self.db, self.settings.worker_lost_after_s):
            busy[worker["pool"]] = busy.get(worker["pool"], 0) + int(worker.get("busy") or 0)
        for pool in pools:
            try:
                self._apply(pool, depths[self.settings.queue_name(pool["_id"])], busy.get(pool["_id"], 0))
            except Exception as exc:  # one pool's backend failure (a missing Deployment) must not stall the others
                logger.error("pool %s: %s", pool["_id"], exc)

    def _apply(self, pool: pools_repo.PoolDoc, depth: Any, busy: int) -> None:
        name = pool["_id"]
        now = time.monotonic()
        current = self.backend.replicas(name)
        since = now - self._changed_at.setdefault(name, now)
        policy = pool.get("autoscale")
        inputs: dict[str, Any] = {"from": current, "busy": busy, "backlog": depth.ready if depth else None}
        if policy:
            if depth is None:
                return  # the broker is away: keep the pool as it is rather than guess
            decision = decide(policy, current, Load(depth.ready, busy), since)
            inputs.update(policy=dict(policy), since_change_s=round(since, 1))
            woken_at = pool.get("wake_requested_at")
            # A request waits on a pool scaled to zero: start one worker, and keep it through one cooldown.
            if decision.replicas == 0 and woken_at and woken_at >= now_iso(-max(float(policy["cooldown_s"]), 10.0)):
                decision = Decision(1, f"woken: a request is waiting since {woken_at}")
        else:
            decision = Decision(int(pool["replicas_desired"]), f"set by {pool.get('updated_by')}: {pool.get('reason') or 'no reason given'}")
        if decision.replicas > self.settings.max_replicas_per_pool:
            # A policy stored before the limit was lowered must not start more workers than the host allows.
            decision = Decision(self.settings.max_replicas_per_pool,
                                f"{decision.reason}; capped at MODELDECK_MAX_REPLICAS_PER_POOL={self.settings.max_replicas_per_pool}")
        if decision.replicas != current:
            self.backend.scale(name, decision.replicas)
            self._changed_at[name] = now
            logger.info("pool %s scaled from %d to %d workers: %s", name, current, decision.replicas, decision.reason)
            audit(self.db, self.audit_keys, "controller.scale", name, {**inputs, "to": decision.replicas, "reason": decision.reason,
                                                      "mode": "autoscale" if policy else "manual"})
        state = {"replicas": self.backend.replicas(name), "desired": decision.replicas, "reason": decision.reason,
                 "backend": self.settings.scaler_backend}
        last = self._reported.get(name)
        if last is None or last[1] != state or now - last[0] > STATE_EVERY_S:
            pools_repo.record_controller_state(self.db, name, state)
            self._reported[name] = (now, state)


def make_backend(settings: Settings) -> Backend:
    """Build the configured scaler backend."""
    if settings.scaler_backend == "kubernetes":
        from runtime.controller.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_settings(settings)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return LocalBackend(env, settings.home.resolve() / "logs", settings.controller_stop_timeout_s,
                        settings.controller_restart_backoff_max_s)


def run(settings: Settings, stop: threading.Event) -> None:
    """Tick until stop is set, then close the backend (a local one stops its workers gracefully)."""
    db = connect(settings)
    ensure_indexes(db)
    backend = make_backend(settings)
    controller = Controller(settings, db, backend, QueueProbe(settings.broker_url))
    logger.info("controller running with the %s backend", settings.scaler_backend)
    try:
        while not stop.is_set():
            try:
                controller.tick()
            except Exception:  # the loop must survive a repository or broker outage
                logger.exception("controller tick failed")
            stop.wait(settings.controller_interval_s)
    finally:
        backend.close()
        controller.probe.close()


def main() -> int:
    """Entry point of `python -m runtime.controller`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_or_exit()
    try:
        audit_repo.audit_keys(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop)
    return 0
