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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.batch import describe, finish, open_sink
from runtime.batch_plan import Chunk, locate, read_chunk
from runtime.batch_score import columns_read, numeric, score_chunk
from runtime.batch_sinks import Sink, SqlSink
from runtime.state import WorkerState
from server.core import jobs_repo
from server.core.errors import ConflictError

logger = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class JobContext:
    """What every chunk of a job needs and does not change while it runs, looked up once per worker process."""

    job: dict[str, Any]
    where: str | Path
    sink: Sink
    types: dict[str, str] | None = None  # PostgreSQL sources: the columns' types


_contexts: OrderedDict[str, JobContext] = OrderedDict()
_lock = threading.Lock()


def context(state: WorkerState, job_id: str) -> JobContext | None:
    """Return a job's context (cached for the job's next chunks), or None when the job is gone."""
    with _lock:
        if job_id in _contexts:
            _contexts.move_to_end(job_id)
            return _contexts[job_id]
    job = state.db.jobs.find_one({"_id": job_id})
    if job is None:
        return None
    ctx = JobContext(job, locate(state.settings, state.db, job["params"]["source"]), open_sink(state, job))
    with _lock:
        _contexts[job_id] = ctx
        while len(_contexts) > 16:
            _contexts.popitem(last=False)
    return ctx


def _score_and_write(state: WorkerState, ctx: JobContext, chunk: Chunk) -> None:
    params = ctx.job["params"]
    as_float = set(params["features"]) if numeric(params) else set()
    started = time.perf_counter()
    table, ctx.types = read_chunk(state.settings, ctx.where, params["source"], chunk, columns_read(params), as_float, ctx.types)
    read = time.perf_counter()
    out = score_chunk(state, params, table, chunk["start"])
    scored = time.perf_counter()
    if isinstance(ctx.sink, SqlSink):
        ctx.sink.source_types = ctx.types or {}  # the first chunk creates the table with the source's column types
    # False: another run committed this chunk first; it holds the same rows.
    ctx.sink.write(chunk["n"], out, chunk["start"] + chunk["rows"])
    logger.debug("job %s chunk %d: %d rows, read %.1f ms, score %.1f ms, write %.1f ms", ctx.job["_id"], chunk["n"],
                 table.num_rows, (read - started) * 1000, (scored - read) * 1000, (time.perf_counter() - scored) * 1000)


def run_chunk(state: WorkerState, job_id: str, chunk: Chunk, redelivered: bool = False) -> None:
    """Score and commit one chunk unless it is committed, cancelled or stopped; then account for it."""
    db, n = state.db, chunk["n"]
    status = db.jobs.find_one({"_id": job_id}, {"status": 1, "stop_error": 1})
    if status is None or status["status"] in jobs_repo.FINISHED:
        # A chunk whose worker died after finishing the job and before auditing it comes back: audit it now.
        if status is not None and redelivered and jobs_repo.record_missing_finish(db, job_id, state.audit_keys):
            logger.warning("job %s was finished by a worker that died before auditing it; job.finish recorded now", job_id)
        return  # expired, or finished while this chunk waited (a duplicate): nothing to account for
    ctx = context(state, job_id)
    if ctx is None:
        return
    if redelivered:
        jobs_repo.count_attempt(db, job_id)
    if status["status"] == "cancelling" or status.get("stop_error"):
        outcome = "done" if ctx.sink.is_committed(n) else "skipped"
    else:
        try:
            _score_and_write(state, ctx, chunk)
            outcome = "done"
        except Exception as exc:  # the task's edge: the job stops with this error, the worker goes on
            jobs_repo.stop_job(db, job_id, describe(state, ctx.job, exc))
            outcome = "failed"
    rows = chunk["rows"] if outcome == "done" else 0
    accounted = time.perf_counter()
    jobs_repo.record_chunk(db, job_id, n, rows, outcome, WORKER)
    counted = jobs_repo.count_settled(db, job_id, rows, outcome == "done")
    # The counter may run ahead of the distinct chunks (a redelivered chunk counts again), never behind.
    logger.debug("job %s chunk %d %s, accounted in %.1f ms", job_id, n, outcome, (time.perf_counter() - accounted) * 1000)
    if counted is not None and "chunks_total" in counted and counted["settled_count"] >= counted["chunks_total"]:
        settle(state, ctx)


def settle(state: WorkerState, ctx: JobContext) -> None:
    """Finish a split job when every chunk is accounted for, with its exact progress."""
    db, job_id = state.db, ctx.job["_id"]
    job = db.jobs.find_one({"_id": job_id})
    if job is None or job["status"] in jobs_repo.FINISHED:
        return
    if "chunks_total" not in job:
        return  # the planner has not recorded the plan's size yet; it settles the job itself if need be
    totals = jobs_repo.chunk_totals(db, job_id)
    if totals["settled"] < job["chunks_total"]:
        return
    jobs_repo.set_progress(db, job_id, {**(job.get("progress") or {}), "rows_done": totals["rows"],
                                        "chunks_done": totals["done"]})
    if job.get("stop_error"):
        finish(state, job, None, job["stop_error"], "failed")
        return
    if totals["done"] < job["chunks_total"] or job["status"] == "cancelling":
        finish(state, job, None, None, "cancelled")
        return
    try:
        result = ctx.sink.finish(totals["rows"], totals["done"])
    except ConflictError:
        if jobs_repo.job_status(db, job_id) in jobs_repo.FINISHED:
            return  # another chunk settled the job at the same moment and already removed the parts it joined
        raise
    if finish(state, job, result, None, "succeeded"):
        ctx.sink.cleanup()
        with _lock:
            _contexts.pop(job_id, None)
