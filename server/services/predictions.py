"""Run a prediction for a caller: resolve the version, check scope and rows, route to the model's pool."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from server.services.request_scope import after_response
from server.services.auth import Principal
from server.services.context import Context
from server.core import jobs_repo, models_repo, pools_repo, wire
from server.core.keys_repo import role_rank
from server.core.errors import (ForbiddenError, InsufficientStorageError, InvalidInputError, ModelFailedError,
                                NotFoundError, UnavailableError, UnprocessableError)
from server.core.model_info import METHODS, TEXT_METHODS
from server.core.models_repo import VersionDoc
from server.services.validation import validate_rows
from server.services.metrics import observed
from server.services.requirements import check_requirements
from server.services.text_inputs import validate_parameters, validate_texts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    predictions: list[Any]
    model: str
    version: int
    request_id: str
    timings: dict[str, float]
    cold_start: bool = False  # the pool was scaled to zero and a worker was started for this request
    classes: list[Any] | None = None  # for methods that answer one column per class


def check_method(doc: VersionDoc, method: str) -> None:
    """Refuse a method the version is known not to offer (400 naming those it has)."""
    offered = doc.get("methods")
    if method not in METHODS + TEXT_METHODS or (offered is not None and method not in offered):
        available = offered if offered is not None else list(METHODS)
        raise InvalidInputError(
            f"field 'method': model '{doc['name']}' version {doc['version']} has no method {method!r}; "
            f"available: {', '.join(available)}",
            {"field": "method", "value": method, "expected": available})


def frame_columns(doc: VersionDoc) -> list[Any] | None:
    """The input schema a worker needs to build a DataFrame: for models fitted on named features, or not inspected."""
    if doc.get("feature_names") is not None or doc.get("methods") is None:
        return doc.get("input_schema")
    return None


def predict_request(doc: VersionDoc, rows: list[Any], method: str,
                    parameters: dict[str, Any] | None = None) -> wire.PredictRequest:
    """Build the request for a worker, refusing a method the version is known not to offer (400)."""
    check_method(doc, method)
    return wire.PredictRequest(model=wire.model_ref(doc), rows=rows, method=method, columns=frame_columns(doc),
                               parameters=parameters or None)


def checked_request(ctx: Context, doc: VersionDoc, inputs: Any, method: str,
                    parameters: dict[str, Any] | None) -> wire.PredictRequest:
    """Validate inputs and parameters for the version (texts for Hugging Face models, rows otherwise)."""
    if doc.get("format") == "huggingface":
        check_method(doc, method)  # the method first: its parameters depend on it
        texts = validate_texts(inputs, ctx.settings)
        return predict_request(doc, texts, method, validate_parameters(method, parameters, ctx.settings))
    rows = validate_rows(inputs, doc.get("input_schema"), ctx.settings.max_predict_rows)
    return predict_request(doc, rows, method, validate_parameters(method, parameters, ctx.settings))


def resolve(ctx: Context, principal: Principal, name: str, ref: int | str | None) -> VersionDoc:
    """Resolve the version a caller asked for, refusing models outside a scoped key."""
    if not principal.may_use_model(name):
        raise ForbiddenError(f"this credential is limited to models {', '.join(principal.models or ())}; it may not use '{name}'")
    return ctx.cache.get("model", name, ref, lambda: models_repo.resolve_version(ctx.db, name, ref))


def check_pool(ctx: Context, doc: VersionDoc, wait: bool = False) -> bool:
    """Fail fast when no live worker serves the model's pool; return whether a scaled-to-zero pool was woken.

    A pool whose autoscale policy allows zero workers is woken instead: the controller is asked
    for a worker and a synchronous caller waits for it, at most MODELDECK_COLD_START_TIMEOUT_S.
    """
    pool = doc["pool"]
    woken = False
    if ctx.liveness.live_counts().get(pool, 0) == 0:
        policy = (pools_repo.get_pool(ctx.db, pool) or {}).get("autoscale") or {}
        if policy.get("min") == 0:
            pools_repo.request_wake(ctx.db, pool)
            if not wait:
                return True  # a queued job waits in the pool's queue for the worker being started
            deadline = time.monotonic() + ctx.settings.cold_start_timeout_s
            while ctx.liveness.live_counts(fresh=True).get(pool, 0) == 0:
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"pool '{pool}' is scaled to zero and no worker started within "
                        f"{ctx.settings.cold_start_timeout_s:g} s; check the controller (modeldeck logs controller)",
                        {"pool": pool})
                time.sleep(0.25)
            woken = True
        else:
            hint = ("start one with `modeldeck up` or scale the pool" if pool == "cpu"
                    else f"start a worker with MODELDECK_WORKER_POOL={pool}")
            raise UnavailableError(f"no worker is serving pool '{pool}' for model '{doc['name']}'; {hint}", {"pool": pool})
    check_requirements(ctx, doc)
    return woken


@observed
def predict(ctx: Context, principal: Principal, name: str, inputs: Any, ref: int | str | None, request_id: str,
            method: str = "predict", parameters: dict[str, Any] | None = None) -> PredictResult:
    """Validate rows and run them on a worker of the model's pool, waiting for the answer."""
    started = time.perf_counter()
    doc = resolve(ctx, principal, name, ref)
    request = checked_request(ctx, doc, inputs, method, parameters)
    rows = request.rows
    cold_pool = check_pool(ctx, doc, wait=True)
    routed = time.perf_counter()
    # A worker started for this request still imports its libraries: allow it the cold-start budget.
    timeout = max(ctx.settings.predict_timeout_s, ctx.settings.cold_start_timeout_s) if cold_pool else ctx.settings.predict_timeout_s
    reply = ctx.router.call(doc["pool"], request, timeout, request_id)
    outcome = reply.outcome
    if outcome is None:
        logger.error("request %s: task ended %s", request_id, reply.status)
        raise ModelFailedError(f"model '{name}' version {doc['version']}: the worker could not run the task ({reply.status})")
    if not outcome.ok:
        details = {"code": outcome.error_code, "model": name, "version": doc["version"]}
        if outcome.error_code == "worker_lost":
            raise UnavailableError(outcome.error_message, details)
        if outcome.error_code == "method_unavailable":
            raise InvalidInputError(outcome.error_message, details)
        if outcome.error_code == "invalid_input":  # a text over the model's token bound: the worker names the row
            raise UnprocessableError(outcome.error_message, details)
        if outcome.error_code == "model_too_large":
            raise InsufficientStorageError(outcome.error_message, details)
        raise ModelFailedError(outcome.error_message, details)
    done = time.perf_counter()
    timings = {
        "total_ms": round((done - started) * 1000, 3),
        "route_ms": round((done - routed) * 1000, 3),
        "model_ms": outcome.model_ms,
        "load_ms": outcome.load_ms,
    }
    if outcome.batch_size is not None:
        timings["batch_size"] = outcome.batch_size
    if ctx.metrics is not None:
        after_response(ctx.metrics.record_success, doc, rows, outcome, timings)  # counted once the answer is out
    return PredictResult(outcome.predictions, name, doc["version"], request_id, timings, cold_pool, outcome.classes)


def submit_job(ctx: Context, principal: Principal, name: str, inputs: Any, ref: int | str | None,
               method: str = "predict", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate rows, record a queued job and send it durably; the job is removed if sending fails."""
    doc = resolve(ctx, principal, name, ref)
    request = checked_request(ctx, doc, inputs, method, parameters)
    check_pool(ctx, doc)
    job_id = "job_" + uuid.uuid4().hex
    params = {"model": name, "version": doc["version"], "method": method, "request": request.to_dict()}
    return queue_job(ctx, doc["pool"], wire.PREDICT_JOB_TASK,
                     jobs_repo.create_job(ctx.db, job_id, "predict", principal.subject, params,
                                          ctx.settings.job_result_ttl_s))


def queue_job(ctx: Context, pool: str, task: str, job: dict[str, Any]) -> dict[str, Any]:
    """Send a recorded job's task durably to its pool; the job is removed if sending fails, so none is left queued
    that no worker will ever see."""
    try:
        ctx.router.send(pool, task, [job["_id"]], job["_id"])
    except UnavailableError:
        jobs_repo.delete_job(ctx.db, job["_id"])
        raise
    return job


def job_view(job: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Return a job as the API shows it; only its owner or an operator may see it."""
    if job["owner"] != principal.subject and role_rank(principal.role) < role_rank("operator"):
        raise NotFoundError(f"job '{job['_id']}' does not exist or its result has expired", {"id": job["_id"]})
    return {
        "id": job["_id"], "kind": job["kind"], "status": job["status"], "owner": job["owner"],
        "model": job["params"]["model"], "version": job["params"]["version"],
        "method": job["params"].get("method", "predict"),
        "created_at": job["created_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
        "result": job["result"], "error": job["error"], "progress": job.get("progress"),
        "attempts": job.get("attempts", 0), "updated_at": job.get("updated_at"),
        **({"source": _summary(job["params"]["source"]), "destination": job["params"]["destination"]}
           if job["kind"] == "batch" else {}),
    }


def _summary(source: dict[str, Any]) -> dict[str, Any]:
    """Return what a job view shows of a batch source (its query text and parameters stay with the job)."""
    return {k: source.get(k) for k in ("kind", "datasource", "table", "file", "filename", "key", "order")
            if source.get(k) is not None}
