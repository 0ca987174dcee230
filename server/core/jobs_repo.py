"""Asynchronous jobs: status, result and error, kept for a limited time."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from server.core.clock import now_iso
from server.core.errors import NotFoundError


def create_job(db: Database, job_id: str, kind: str, owner: str, params: dict[str, Any], ttl_s: int) -> dict[str, Any]:
    """Record a queued job before its task is sent, so a worker always finds it."""
    now = now_iso()
    doc = {
        "_id": job_id,
        "kind": kind,
        "status": "queued",
        "owner": owner,
        "params": params,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "expires_at": now_iso(ttl_s),
        "result": None,
        "error": None,
        "attempts": 0,
    }
    db.jobs.insert_one(doc)
    return doc


def delete_job(db: Database, job_id: str) -> None:
    """Remove a job whose task could not be sent."""
    db.jobs.delete_one({"_id": job_id})


def get_job(db: Database, job_id: str) -> dict[str, Any]:
    """Return a job that has not expired, or raise NotFoundError."""
    doc = db.jobs.find_one({"_id": job_id})
    if doc is None or doc["expires_at"] < now_iso():
        raise NotFoundError(f"job '{job_id}' does not exist or its result has expired", {"id": job_id})
    return doc


def start_job(db: Database, job_id: str) -> dict[str, Any] | None:
    """Mark a job running; return None when it is already finished (a redelivered task)."""
    doc = db.jobs.find_one({"_id": job_id})
    if doc is None or doc["status"] in ("succeeded", "failed"):
        return None
    db.jobs.update_one({"_id": job_id}, {"$set": {"status": "running", "started_at": now_iso()}, "$inc": {"attempts": 1}})
    return doc


def finish_job(db: Database, job_id: str, result: Any = None, error: dict[str, Any] | None = None) -> None:
    """Store a job's outcome once."""
    status = "failed" if error else "succeeded"
    db.jobs.update_one(
        {"_id": job_id, "status": {"$in": ["queued", "running"]}},
        {"$set": {"status": status, "finished_at": now_iso(), "result": result, "error": error}},
    )


def purge_expired_jobs(db: Database) -> int:
    """Delete jobs past their retention time; return how many."""
    return db.jobs.delete_many({"expires_at": {"$lt": now_iso()}}).deleted_count
