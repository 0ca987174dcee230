"""Run a batch-scoring job's first task: split the source into chunks for the whole pool, or score it in one pass.

A source that splits into ranges (runtime/batch_plan.py) is planned once; this task scores the first chunk itself
(creating the output table in that chunk's transaction) and queues the others as ``runtime.batch_chunk`` tasks on
the pool's queue, where every worker takes a share (runtime/batch_chunks.py). Any other source is read in one
pass here, chunk after chunk; a redelivered job resumes after its last committed chunk. Memory stays bounded by
a chunk either way; a job asked to cancel stops between chunks.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from celery import current_app
from sqlalchemy.exc import SQLAlchemyError

from runtime import batch_plan
from runtime.batch_arrow import BatchError
from runtime.batch_score import columns_read, numeric, score_chunk
from runtime.batch_sinks import FileSink, Sink, SqlSink
from runtime.batch_sources import Committed, count_rows, key_columns, read_chunks, source_url
from runtime.state import WorkerState
from server.core import jobs_repo, sqlsource, wire
from server.core.errors import ModelDeckError

logger = logging.getLogger(__name__)


def open_sink(state: WorkerState, job: dict[str, Any], source_types: dict[str, str] | None = None) -> Sink:
    """Return the writer of a job's destination."""
    dest = job["params"]["destination"]
    if dest["kind"] == "file":
        return FileSink(state.db, job["_id"], dest["format"])
    url = source_url(state.settings, state.db, dest["datasource"])
    return SqlSink(job["_id"], dest["datasource"], url, dest, state.settings.batch_statement_timeout_s, source_types)


def is_postgres(state: WorkerState, source: dict[str, Any]) -> bool:
    """Tell whether a SQL source is on PostgreSQL (its fast path)."""
    if source["kind"] != "sql":
        return False
    return sqlsource.engine_for(source_url(state.settings, state.db, source["datasource"])).dialect.name == "postgresql"


def describe(state: WorkerState, job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """Turn what stopped a job into its error (code and message); database errors without statement or password."""
    if isinstance(exc, (BatchError, ModelDeckError)):
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, (SQLAlchemyError, psycopg.Error)):
        params = job["params"]
        names = [d["datasource"] for d in (params["source"], params["destination"]) if d.get("datasource")]
        urls = []
        for name in names:
            try:
                urls.append(source_url(state.settings, state.db, name))
            except ModelDeckError:
                pass
        wrapped = exc if isinstance(exc, SQLAlchemyError) else SQLAlchemyError(str(exc))
        if isinstance(exc, psycopg.Error):
            wrapped.orig = exc  # type: ignore[attr-defined]
        described = sqlsource.describe_error(" / ".join(dict.fromkeys(names)), urls, wrapped,
                                             state.settings.batch_statement_timeout_s, "MODELDECK_BATCH_STATEMENT_TIMEOUT_S")
        return {"code": described.code, "message": described.message}
    logger.error("batch job %s failed", job["_id"], exc_info=exc)
    return {"code": "internal", "message": f"the batch job failed with {type(exc).__name__}; see the worker's log"}


def finish(state: WorkerState, job: dict[str, Any], result: dict[str, Any] | None, error: dict[str, Any] | None,
           status: str) -> bool:
    """Store a job's outcome and its audit entry once; return whether this call stored it."""
    job_id = job["_id"]
    if not jobs_repo.finish_job(state.db, job_id, result=result, error=error, status=status):
        return False  # another chunk settled it at the same moment, and audits it
    progress = jobs_repo.get_job(state.db, job_id).get("progress") or {}
    jobs_repo.record_event(state.db, job, "job.finish", "success" if status == "succeeded" else status,
                           {"kind": "batch", "status": status, "rows_done": progress.get("rows_done"),
                            "error": error["code"] if error else None}, state.audit_keys)
    logger.info("batch job %s %s", job_id, status)
    return True


def score_in_one_pass(state: WorkerState, job: dict[str, Any]) -> dict[str, Any] | None:
    """Score every remaining chunk of a source read in one pass; return the result, or None when cancelled."""
    params, job_id, db = job["params"], job["_id"], state.db
    source = params["source"]
    sink = open_sink(state, job)
    done = sink.committed()
    if done.chunks and source.get("order") == "none":
        raise BatchError("not_resumable", "the job's worker was lost after some chunks were written, and its source "
                                          "has no key to resume by (see the job's source.order); run it again into a "
                                          "new table, or give 'source.key'")
    progress = {**(job.get("progress") or {}), "rows_done": done.rows, "chunks_done": done.chunks}
    if progress.get("rows_total") is None:
        progress["rows_total"] = source.get("rows_total") or count_rows(state.settings, db, source)
    jobs_repo.set_progress(db, job_id, progress)
    keys = key_columns(source)
    as_float = set(params["features"]) if numeric(params) else set()
    for table in read_chunks(state.settings, db, source, columns_read(params), as_float, params["chunk_rows"], done):
        if jobs_repo.job_status(db, job_id) == "cancelling":
            return None
        out = score_chunk(state, params, table, done.rows)
        last_key = table.column(keys[0])[-1].as_py() if len(keys) == 1 else None
        done = Committed(done.chunks + 1, done.rows + table.num_rows, last_key)
        sink.write(done.chunks, out, done.rows, done.last_key)
        progress |= {"rows_done": done.rows, "chunks_done": done.chunks}
        jobs_repo.set_progress(db, job_id, progress)
    if jobs_repo.job_status(db, job_id) == "cancelling":
        return None
    return sink.finish(done.rows, done.chunks)


def plan_and_fan_out(state: WorkerState, job: dict[str, Any]) -> None:
    """Plan a splittable job (once), score its first chunk here, queue the rest for every worker of the pool."""
    from runtime.batch_chunks import context, run_chunk, settle

    params, job_id, db = job["params"], job["_id"], state.db
    plan = jobs_repo.get_plan(db, job_id)
    if plan is None:
        open_sink(state, job).committed()  # creates the marker table; refuses an existing table before any work
        plan = jobs_repo.save_plan(db, job_id, batch_plan.plan_chunks(state.settings, db, params["source"], params["chunk_rows"]))
    # Once, also when a planner died between storing the plan and this: no chunk settles the job before it.
    db.jobs.update_one({"_id": job_id, "chunks_total": {"$exists": False}}, {"$set": {
        "chunks_total": len(plan), "progress": {"rows_done": 0, "rows_total": sum(c["rows"] for c in plan), "chunks_done": 0}}})
    if not plan:
        finish(state, job, open_sink(state, job).finish(0, 0), None, "succeeded")
        return
    run_chunk(state, job_id, plan[0])
    settled = {d["n"] for d in db.job_chunks.find({"job": job_id}, {"n": 1})}
    status = db.jobs.find_one({"_id": job_id}, {"status": 1, "stop_error": 1}) or {}
    if status.get("status") == "cancelling" or status.get("stop_error"):
        # Stopped by the first chunk or cancelled meanwhile: account for the rest here instead of queueing them.
        for chunk in plan[1:]:
            if chunk["n"] not in settled:
                jobs_repo.record_chunk(db, job_id, chunk["n"], 0, "skipped", "planner")
        ctx = context(state, job_id)
        if ctx is not None:
            settle(state, ctx)
        return
    queue = state.settings.queue_name(state.settings.worker_pool)
    for chunk in plan[1:]:
        if chunk["n"] not in settled:
            current_app.send_task(wire.BATCH_CHUNK_TASK, args=[job_id, chunk], queue=queue, task_id=f"{job_id}_{chunk['n']}")
    logger.info("batch job %s: %d chunks queued on %s", job_id, len(plan) - 1, queue)


def run_batch(state: WorkerState, job: dict[str, Any]) -> None:
    """Run a job's first task; errors become the job's error."""
    source = job["params"]["source"]
    try:
        if batch_plan.splittable(source, is_postgres(state, source)):
            plan_and_fan_out(state, job)
            return
        result = score_in_one_pass(state, job)
    except Exception as exc:  # the task's edge: report, keep the worker alive
        finish(state, job, None, describe(state, job, exc), "failed")
        return
    if result is None:
        finish(state, job, None, None, "cancelled")
    elif finish(state, job, result, None, "succeeded"):
        open_sink(state, job).cleanup()

