"""Celery tasks: thin wrappers that look up what they need and call plain functions."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.utils.log import get_task_logger

from runtime.batch import run_batch
from runtime.batch_chunks import run_chunk
from runtime.inference import run_prediction
from runtime.state import WorkerState, get_state
from server.core import jobs_repo, wire

logger = get_task_logger(__name__)


@shared_task(name=wire.PREDICT_TASK, Strategy="runtime.predict_handler:predict_strategy")
def predict(request: dict[str, Any]) -> dict[str, Any]:
    """Answer a synchronous prediction under Celery's default strategy (MODELDECK_WORKER_FAST_LANE=false, or
    `celery call`); workers normally answer through runtime.predict_handler, which runs the same function."""
    return run_prediction(get_state(), wire.PredictRequest.from_dict(request)).to_dict()


def _start(state: WorkerState, job_id: str) -> dict[str, Any] | None:
    """Mark a job running and return it; None (logged) for one already finished, cancelled or unknown, whose
    missing job.finish audit entry is recorded now if a worker died between finishing and auditing it."""
    job = jobs_repo.start_job(state.db, job_id)
    if job is None:
        if jobs_repo.record_missing_finish(state.db, job_id, state.audit_keys):
            logger.warning("job %s was finished by a worker that died before auditing it; job.finish recorded now", job_id)
        logger.info("job %s already finished, cancelled or unknown; skipping", job_id)
    return job


@shared_task(name=wire.PREDICT_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def predict_job(job_id: str) -> None:
    """Run an asynchronous prediction job and store its outcome; a redelivered finished job is skipped."""
    state = get_state()
    job = _start(state, job_id)
    if job is None:
        return
    outcome = run_prediction(state, wire.PredictRequest.from_dict(job["params"]["request"]))
    if outcome.ok:
        result: dict[str, Any] = {"predictions": outcome.predictions}
        if outcome.classes is not None:
            result["classes"] = outcome.classes
        stored = jobs_repo.finish_job(state.db, job_id, result=result)
    else:
        stored = jobs_repo.finish_job(state.db, job_id, error={"code": outcome.error_code, "message": outcome.error_message})
    if stored:
        jobs_repo.record_event(state.db, job, "job.finish", "success" if outcome.ok else "failed",
                               {"kind": "predict", "error": None if outcome.ok else outcome.error_code}, state.audit_keys)
    logger.info("job %s finished ok=%s", job_id, outcome.ok)


@shared_task(name=wire.BATCH_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_job(job_id: str) -> None:
    """Run a batch-scoring job; a redelivered one resumes after its last committed chunk."""
    state = get_state()
    job = _start(state, job_id)
    if job is None:
        return
    logger.info("batch job %s started (attempt %d)", job_id, job.get("attempts", 0) + 1)
    with state.lock:
        state.busy += 1
    try:
        run_batch(state, job)
    finally:
        with state.lock:
            state.busy -= 1


@shared_task(name=wire.BATCH_CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_chunk(self: Any, job_id: str, chunk: dict[str, Any]) -> None:
    """Score one planned chunk of a batch job; a redelivered or duplicate one is committed at most once."""
    state = get_state()
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    with state.lock:
        state.busy += 1
    try:
        run_chunk(state, job_id, chunk, redelivered)
    finally:
        with state.lock:
            state.busy -= 1
