"""Asynchronous jobs: status, result and error, kept for a limited time."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from server.core import audit_repo
from server.core.clock import now_iso
from server.core.errors import ConflictError, NotFoundError


def create_job(db: Database, job_id: str, kind: str, owner: str, params: dict[str, Any], ttl_s: int,
               progress: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "progress": progress,
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
        raise missing_job(job_id)
    return doc


def missing_job(job_id: str) -> NotFoundError:
    """Return the error a job that does not exist or has expired gets."""
    return NotFoundError(f"job '{job_id}' does not exist or its result has expired", {"id": job_id})


def job_model(db: Database, job_id: str) -> str | None:
    """Return the name of the model a job runs, or None when there is no such job."""
    # The whole params: nx-27017 does not return a dotted projection's field.
    doc = db.jobs.find_one({"_id": job_id}, {"params": 1})
    return None if doc is None else str(doc.get("params", {}).get("model", ""))


FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = ["queued", "running", "cancelling"]


def start_job(db: Database, job_id: str) -> dict[str, Any] | None:
    """Mark a job running; return None when it is already finished (a redelivered task) or cancelled."""
    doc = db.jobs.find_one({"_id": job_id})
    if doc is None or doc["status"] in FINISHED:
        return None
    if doc["status"] == "cancelling":
        finish_job(db, job_id, status="cancelled")
        return None
    # A redelivered job (its worker died) keeps its first start time.
    db.jobs.update_one({"_id": job_id}, {"$set": {"status": "running", "started_at": doc["started_at"] or now_iso()},
                                         "$inc": {"attempts": 1}})
    return doc


def finish_job(db: Database, job_id: str, result: Any = None, error: dict[str, Any] | None = None,
               status: str | None = None) -> bool:
    """Store a job's outcome once; return whether this call stored it."""
    status = status or ("failed" if error else "succeeded")
    return db.jobs.update_one(
        {"_id": job_id, "status": {"$in": ACTIVE}},
        {"$set": {"status": status, "finished_at": now_iso(), "result": result, "error": error}},
    ).modified_count == 1


def request_cancel(db: Database, job_id: str) -> str:
    """Cancel a queued job at once, or ask a running one to stop after its current chunk; return the new status."""
    if db.jobs.update_one({"_id": job_id, "status": "queued"},
                          {"$set": {"status": "cancelled", "finished_at": now_iso()}}).modified_count:
        return "cancelled"
    if db.jobs.update_one({"_id": job_id, "status": "running"}, {"$set": {"status": "cancelling"}}).modified_count:
        return "cancelling"
    doc = get_job(db, job_id)
    if doc["status"] == "cancelling":
        return "cancelling"
    raise ConflictError(f"job '{job_id}' has already {doc['status']}; only a queued or running job can be cancelled",
                        {"id": job_id, "status": doc["status"]})


def job_status(db: Database, job_id: str) -> str | None:
    """Return a job's status (the worker checks it between chunks)."""
    doc = db.jobs.find_one({"_id": job_id}, {"status": 1})
    return doc["status"] if doc else None


def set_progress(db: Database, job_id: str, progress: dict[str, Any]) -> None:
    """Record how far a job got: the whole progress object (rows done, rows total, chunks committed)."""
    # One whole field, not dotted paths: nx-27017 handles dotted update paths only partly.
    db.jobs.update_one({"_id": job_id}, {"$set": {"progress": progress, "updated_at": now_iso()}})


def list_jobs(db: Database, owner: str | None, status: str | None, kind: str | None, limit: int,
              offset: int, models: tuple[str, ...] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Return jobs that have not expired (of these models only, when given), newest first, and how many match."""
    query: dict[str, Any] = {"expires_at": {"$gte": now_iso()}}
    for field, value in (("owner", owner), ("status", status), ("kind", kind)):
        if value is not None:
            query[field] = value
    if models is not None:
        query["params.model"] = {"$in": list(models)}
    total = db.jobs.count_documents(query)
    docs = list(db.jobs.find(query, {"params.rows": 0}).sort("created_at", -1).skip(offset).limit(limit))
    return docs, total


def record_event(db: Database, job: dict[str, Any], action: str, outcome: str, details: dict[str, Any],
                 keys: audit_repo.AuditKeys) -> None:
    """Write a job's audit entry from a worker (outside any request)."""
    import socket

    audit_repo.append(db, {"time": now_iso(), "actor": f"worker:{socket.gethostname()}", "method": "worker",
                           "role": None, "action": action, "target": job["_id"], "outcome": outcome, "status": None,
                           "request_id": job["_id"], "client": None, "details": {"owner": job["owner"], **details}}, keys)


def record_missing_finish(db: Database, job_id: str, keys: audit_repo.AuditKeys) -> bool:
    """For a redelivered task whose job is already finished: write its job.finish entry if it has none.

    A worker stores the outcome, then writes the audit entry, then acknowledges the task. One that dies between
    the first two leaves a finished job without its entry; the task comes back (acks late) and this writes it,
    so every job a worker ran ends with exactly one job.finish entry. Return whether an entry was written.
    """
    doc = db.jobs.find_one({"_id": job_id})
    if doc is None or doc["status"] not in ("succeeded", "failed"):  # only a worker sets these
        return False
    # Two deliveries of the task may run at once (a worker has several threads): one claims the check.
    if db.jobs.update_one({"_id": job_id, "finish_checked_at": {"$exists": False}},
                          {"$set": {"finish_checked_at": now_iso()}}).modified_count == 0:
        return False
    if db.audit.find_one({"action": "job.finish", "target": job_id}, {"_id": 1}) is not None:
        return False
    status = doc["status"]
    record_event(db, doc, "job.finish", "success" if status == "succeeded" else status,
                 {"kind": doc["kind"], "status": status, "error": (doc.get("error") or {}).get("code"),
                  "recorded_on_redelivery": True}, keys)
    return True


def purge_expired_jobs(db: Database) -> int:
    """Delete jobs past their retention time, their output parts, and result or upload files nothing else uses."""
    expired = list(db.jobs.find({"expires_at": {"$lt": now_iso()}}, {"result": 1, "params.source": 1}))
    for job in expired:
        files = {(job.get("result") or {}).get("artifact"), ((job.get("params") or {}).get("source") or {}).get("artifact")}
        db.jobs.delete_one({"_id": job["_id"]})
        db.job_parts.delete_many({"job": job["_id"]})
        db.job_chunks.delete_many({"job": job["_id"]})
        db.job_plans.delete_many({"_id": job["_id"]})
        for sha in files - {None}:
            release_file(db, sha)
    return len(expired)


def release_file(db: Database, sha256: str) -> bool:
    """Delete a job's result or upload file unless a model version or a job still holds it; return whether deleted."""
    # Artifacts are content-addressed: a model version or another job may hold the same bytes.
    if (db.versions.find_one({"sha256": sha256}, {"_id": 1}) or db.jobs.find_one({"result.artifact": sha256}, {"_id": 1})
            or db.jobs.find_one({"params.source.artifact": sha256}, {"_id": 1})):
        return False
    db.artifacts.delete_one({"_id": sha256})
    db.artifact_chunks.delete_many({"sha256": sha256})
    return True


# ---- A batch job split into chunks that every worker of its pool takes a share of ---------------------------------


def save_plan(db: Database, job_id: str, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store a job's chunk plan once and return the stored one (a redelivered planner keeps the first plan)."""
    try:
        db.job_plans.insert_one({"_id": job_id, "job": job_id, "chunks": chunks})
    except DuplicateKeyError:
        pass
    doc = db.job_plans.find_one({"_id": job_id})
    return list(doc["chunks"]) if doc else chunks


def get_plan(db: Database, job_id: str) -> list[dict[str, Any]] | None:
    """Return a job's stored chunk plan, or None before it was planned."""
    doc = db.job_plans.find_one({"_id": job_id})
    return list(doc["chunks"]) if doc else None


def record_chunk(db: Database, job_id: str, n: int, rows: int, state: str, worker: str) -> None:
    """Account for chunk n once: 'done' (its rows are committed), 'skipped' (cancelled or stopped) or 'failed'."""
    try:
        db.job_chunks.insert_one({"_id": f"{job_id}_{n}", "job": job_id, "n": n, "rows": rows, "state": state,
                                  "worker": worker, "at": now_iso()})
    except DuplicateKeyError:
        pass  # a redelivered or duplicate run of the chunk; the first account stands


def chunk_totals(db: Database, job_id: str) -> dict[str, int]:
    """Return how many chunks of a job are accounted for, how many are done, and their rows."""
    totals = {"settled": 0, "done": 0, "rows": 0}
    for group in db.job_chunks.aggregate([{"$match": {"job": job_id}},
                                          {"$group": {"_id": "$state", "n": {"$sum": 1}, "rows": {"$sum": "$rows"}}}]):
        totals["settled"] += group["n"]
        if group["_id"] == "done":
            totals["done"], totals["rows"] = group["n"], group["rows"]
    return totals


def count_settled(db: Database, job_id: str, rows: int, done: bool) -> dict[str, Any] | None:
    """Count one more settled chunk and its rows into the job's progress; return the counters after it.

    A chunk redelivered after its worker died counts again, so the counters may run ahead of the distinct chunks
    (never behind): reaching the total only prompts the exact count from job_chunks (chunk_totals).
    """
    return db.jobs.find_one_and_update(
        {"_id": job_id}, {"$inc": {"settled_count": 1, "progress.rows_done": rows, "progress.chunks_done": int(done)},
                          "$set": {"updated_at": now_iso()}},
        projection={"settled_count": 1, "chunks_total": 1}, return_document=ReturnDocument.AFTER)


def stop_job(db: Database, job_id: str, error: dict[str, Any]) -> None:
    """Stop a split job after a chunk failed: its other chunks are skipped, the first error is the job's."""
    db.jobs.update_one({"_id": job_id, "status": {"$in": ACTIVE}, "stop_error": {"$exists": False}},
                       {"$set": {"stop_error": error}})


def count_attempt(db: Database, job_id: str) -> None:
    """Count a redelivered chunk (its worker was lost) as another attempt of the job."""
    db.jobs.update_one({"_id": job_id}, {"$inc": {"attempts": 1}})
