"""Run one chunk of a split batch job, on whichever worker of the pool took it, exactly once.

A chunk is read (its planned range), scored, and committed with its marker (runtime/batch_sinks.py), then accounted
for in ``job_chunks``. Every step may be repeated: a redelivered chunk (its worker died) or a duplicate finds its
marker and only accounts for it. A chunk of a job being cancelled, or stopped by another chunk's error, is skipped.
The chunk that settles the last account finishes the job: succeeded, failed with the first chunk error, or cancelled.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from runtime.batch import describe, finish, open_sink
from runtime.batch_plan import Chunk, read_chunk
from runtime.batch_score import columns_read, numeric, score_chunk
from runtime.state import WorkerState
from server.core import jobs_repo
from server.core.errors import ConflictError

logger = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}-{os.getpid()}"


def _score_and_write(state: WorkerState, job: dict[str, Any], chunk: Chunk) -> None:
    params = job["params"]
    as_float = set(params["features"]) if numeric(params) else set()
    table, types = read_chunk(state.settings, state.db, params["source"], chunk, columns_read(params), as_float)
    out = score_chunk(state, params, table, chunk["start"])
    open_sink(state, job, types).write(chunk["n"], out, chunk["start"] + chunk["rows"])


def run_chunk(state: WorkerState, job_id: str, chunk: Chunk, redelivered: bool = False) -> None:
    """Score and commit one chunk unless it is committed, cancelled or stopped; then account for it."""
    db, n = state.db, chunk["n"]
    job = db.jobs.find_one({"_id": job_id})
    if job is None or job["status"] in jobs_repo.FINISHED:
        return  # expired, or finished while this chunk waited (a duplicate): nothing to account for
    if redelivered:
        jobs_repo.count_attempt(db, job_id)
    sink = open_sink(state, job)
    if sink.is_committed(n):
        jobs_repo.record_chunk(db, job_id, n, chunk["rows"], "done", WORKER)
    elif job["status"] == "cancelling" or job.get("stop_error"):
        jobs_repo.record_chunk(db, job_id, n, 0, "skipped", WORKER)
    else:
        try:
            _score_and_write(state, job, chunk)
        except Exception as exc:  # the task's edge: the job stops with this error, the worker goes on
            jobs_repo.stop_job(db, job_id, describe(state, job, exc))
            jobs_repo.record_chunk(db, job_id, n, 0, "failed", WORKER)
        else:
            jobs_repo.record_chunk(db, job_id, n, chunk["rows"], "done", WORKER)
    settle(state, job_id)


def settle(state: WorkerState, job_id: str) -> None:
    """Record a split job's progress; finish it when every chunk is accounted for."""
    db = state.db
    job = db.jobs.find_one({"_id": job_id})
    if job is None or job["status"] in jobs_repo.FINISHED:
        return
    totals = jobs_repo.chunk_totals(db, job_id)
    progress = {**(job.get("progress") or {}), "rows_done": totals["rows"], "chunks_done": totals["done"]}
    jobs_repo.advance_progress(db, job_id, progress)
    if totals["settled"] < job.get("chunks_total", 0):
        return
    if job.get("stop_error"):
        finish(state, job, None, job["stop_error"], "failed")
        return
    if totals["done"] < job["chunks_total"] or job["status"] == "cancelling":
        finish(state, job, None, None, "cancelled")
        return
    sink = open_sink(state, job)
    try:
        result = sink.finish(totals["rows"], totals["done"])
    except ConflictError:
        if jobs_repo.job_status(db, job_id) in jobs_repo.FINISHED:
            return  # another chunk settled the job at the same moment and already removed the parts it joined
        raise
    if finish(state, job, result, None, "succeeded"):
        sink.cleanup()
