"""Worker heartbeats: who serves which pool, with what resources and cached models."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from server.core.clock import now_iso


def record_heartbeat(db: Database, worker_id: str, beat: dict[str, Any]) -> None:
    """Upsert a worker's latest heartbeat."""
    db.workers.update_one({"_id": worker_id}, {"$set": {**beat, "last_seen": now_iso()}}, upsert=True)


def remove_worker(db: Database, worker_id: str) -> None:
    """Forget a worker that shut down cleanly."""
    db.workers.delete_one({"_id": worker_id})


def live_workers(db: Database, lost_after_s: float, pool: str | None = None) -> list[dict[str, Any]]:
    """Return workers whose last heartbeat is recent enough, optionally for one pool."""
    since = now_iso(-lost_after_s)
    query: dict[str, Any] = {"last_seen": {"$gte": since}, "state": {"$nin": ["starting", "stopping"]}}
    if pool:
        query["pool"] = pool
    return list(db.workers.find(query))


def all_workers(db: Database) -> list[dict[str, Any]]:
    """Return every recorded worker, live or not."""
    return list(db.workers.find({}))


def prune_workers(db: Database, older_than_s: float) -> int:
    """Forget workers silent for longer than older_than_s (killed without a clean shutdown); return how many."""
    return db.workers.delete_many({"last_seen": {"$lt": now_iso(-older_than_s)}}).deleted_count
