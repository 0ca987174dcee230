"""Pools: an operator's replica count or autoscale policy per pool, and what the controller last did."""

from __future__ import annotations

from typing import Any, TypedDict

from pymongo.database import Database

from server.core.clock import now_iso


class AutoscalePolicy(TypedDict):
    min: int
    max: int
    target_backlog_per_worker: int
    cooldown_s: float


class PoolDoc(TypedDict, total=False):
    _id: str
    replicas_desired: int
    autoscale: AutoscalePolicy | None
    updated_at: str
    updated_by: str
    reason: str
    controller: dict[str, Any]


def get_pool(db: Database, name: str) -> PoolDoc | None:
    """Return a pool's document, or None when no operator configured it."""
    doc: PoolDoc | None = db.pools.find_one({"_id": name})
    return doc


def list_pools(db: Database) -> list[PoolDoc]:
    """Return every configured pool."""
    return list(db.pools.find({}))


def set_replicas(db: Database, name: str, replicas: int, by: str, reason: str) -> PoolDoc:
    """Scale a pool by hand: a fixed replica count replaces any autoscale policy."""
    changes = {"replicas_desired": replicas, "autoscale": None, "updated_at": now_iso(), "updated_by": by, "reason": reason}
    db.pools.update_one({"_id": name}, {"$set": changes}, upsert=True)
    return get_pool(db, name) or {"_id": name, **changes}  # type: ignore[return-value]


def set_autoscale(db: Database, name: str, policy: AutoscalePolicy, by: str, reason: str) -> PoolDoc:
    """Give a pool an autoscale policy; the controller decides its replicas from then on."""
    changes = {"autoscale": dict(policy), "updated_at": now_iso(), "updated_by": by, "reason": reason}
    db.pools.update_one({"_id": name}, {"$set": changes}, upsert=True)
    return get_pool(db, name) or {"_id": name, **changes}  # type: ignore[return-value]


def request_wake(db: Database, name: str) -> None:
    """Ask the controller to start a worker for a pool scaled to zero (a request is waiting)."""
    db.pools.update_one({"_id": name}, {"$set": {"wake_requested_at": now_iso()}})


def record_controller_state(db: Database, name: str, state: dict[str, Any]) -> None:
    """Store what the controller runs and decided for a pool (replicas, last change time)."""
    db.pools.update_one({"_id": name}, {"$set": {"controller": {**state, "seen_at": now_iso()}}})
