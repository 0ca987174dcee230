"""Jobs: asynchronous predictions and batch scoring; their status, progress, cancellation and result."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from typing import Any, Literal

from flask import Response, current_app, g, request, stream_with_context
from pydantic import BaseModel, Field

from server.services import audit, batch, predictions
from server.http.api import MAX_OFFSET, Api, json_response
from server.http.scope import scope_models
from server.services.validation import parse_model
from server.core import jobs_repo
from server.core.artifacts import iter_artifact, put_artifact
from server.core.errors import ConflictError, InvalidInputError, ModelDeckError, NotFoundError
from server.core.keys_repo import role_rank

api = Api("jobs", "/api/v1/jobs")

MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class JobBody(BaseModel):
    """Either rows to predict (kind 'predict'), or a source and a destination (kind 'batch')."""

    model_config = {"extra": "forbid"}

    model: str = Field(description="model name")
    inputs: list[Any] | None = Field(default=None, description="rows, as for predict (an async prediction job)")
    version: int | str | None = None
    method: Literal["predict", "predict_proba", "predict_log_proba", "decision_function", "transform"] = Field(
        default="predict", description="the model's method to call (a batch job writes one column per class for probabilities)")
    source: batch.SourceSpec | None = Field(default=None, description="batch scoring: where the rows come from")
    destination: batch.DestinationSpec | None = Field(default=None, description="batch scoring: where predictions go")
    chunk_rows: int | None = Field(default=None, ge=1, le=1000000, description="rows per committed chunk (batch)")


class JobQuery(BaseModel):
    model_config = {"extra": "forbid"}

    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | None = None
    kind: Literal["predict", "batch"] | None = None
    owner: str | None = Field(default=None, description="operators only: another caller's jobs")
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


def job_location(job_id: str) -> str:
    """Return the URL path of a job."""
    return f"/api/v1/jobs/{job_id}"


def _accepted(job: dict[str, Any]) -> Response:
    resp = json_response({"job_id": job["_id"], "status": job["status"], "kind": job["kind"], "url": job_location(job["_id"])}, 202)
    resp.headers["Location"] = job_location(job["_id"])
    return resp


def _start_batch(body: JobBody, upload: dict[str, Any] | None = None) -> Response:
    ctx = current_app.extensions["modeldeck"]
    job = batch.submit_batch(ctx, g.principal, body.model, body.version, body.source or batch.SourceSpec(),
                             body.destination, body.chunk_rows, upload, body.method)
    params = job["params"]
    audit.record("job.create", job["_id"], status=202, details={
        "kind": "batch", "model": body.model, "version": params["version"],
        "source": {k: params["source"].get(k) for k in ("kind", "datasource", "table", "file", "filename")},
        "destination": params["destination"]})
    return _accepted(job)


@api.route("", "POST", "operator", "Queue a prediction job (inputs) or a batch-scoring job (source and destination)",
           body=JobBody, status=202, scope="body:model")
def create_job(body: JobBody) -> Response:
    if body.source is not None or body.destination is not None:
        if body.inputs is not None:
            raise InvalidInputError("give either 'inputs' (an async prediction) or 'source' and 'destination' "
                                    "(batch scoring), not both")
        return _start_batch(body)
    if body.inputs is None:
        raise InvalidInputError("field 'inputs': Field required, got nothing; or give 'source' and 'destination' "
                                "for a batch-scoring job")
    ctx = current_app.extensions["modeldeck"]
    job = predictions.submit_job(ctx, g.principal, body.model, body.inputs, body.version, body.method)
    audit.record("job.create", job["_id"], status=202, details={"model": body.model, "version": job["params"]["version"]})
    return _accepted(job)


@api.route("/upload", "POST", "operator", "Queue a batch-scoring job over an uploaded CSV (multipart: job, file)",
           status=202, request_schema={"multipart/form-data": {"schema": {"type": "object", "required": ["job", "file"], "properties": {
               "job": {"type": "string", "description": "the job as JSON, as for POST /api/v1/jobs without 'source.datasource'"},
               "file": {"type": "string", "format": "binary", "description": "CSV with a header row"}}}}},
           scope="form:job.model")
def upload_job() -> Response:
    ctx = current_app.extensions["modeldeck"]
    raw, upload = request.form.get("job"), request.files.get("file")
    if raw is None or upload is None:
        raise InvalidInputError("a batch job upload needs two multipart parts: 'job' (JSON) and 'file' (a CSV with a header row)")
    try:
        body = parse_model(JobBody, json.loads(raw), "field")
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"part 'job' is not valid JSON: {exc}") from exc
    if body.inputs is not None:
        raise InvalidInputError("part 'job': an uploaded file is scored as a batch job; leave out 'inputs'")
    with tempfile.TemporaryFile() as spool:
        upload.save(spool)
        spool.seek(0)
        header = spool.readline().decode("utf-8", errors="replace")
        columns = next(csv.reader(io.StringIO(header)), [])
        if not columns:
            raise InvalidInputError(f"file '{upload.filename}': expected a CSV with a header row, got an empty file")
        lines = sum(block.count(b"\n") for block in iter(lambda: spool.read(1024 * 1024), b""))
        spool.seek(-1, io.SEEK_END)
        rows = lines + (spool.read(1) != b"\n")  # lines after the header; the last may lack its newline
        spool.seek(0)
        stored = put_artifact(ctx.db, spool)  # type: ignore[arg-type]
    try:
        return _start_batch(body, {"sha256": stored.sha256, "filename": upload.filename or "upload.csv",
                                   "columns": columns, "rows": rows})
    except ModelDeckError:
        jobs_repo.release_file(ctx.db, stored.sha256)  # a refused job leaves no file behind
        raise


@api.route("", "GET", "service", "List jobs with status, progress, owner and times", query=JobQuery,
           scope="list")
def list_jobs(query: JobQuery) -> Response:
    ctx = current_app.extensions["modeldeck"]
    operator = role_rank(g.principal.role) >= role_rank("operator")
    owner = query.owner if operator else g.principal.subject
    docs, total = jobs_repo.list_jobs(ctx.db, owner, query.status, query.kind, query.limit, query.offset, scope_models())
    return json_response({"jobs": [predictions.job_view(d, g.principal) for d in docs], "total": total,
                          "limit": query.limit, "offset": query.offset})


@api.route("/<job_id>", "GET", "service", "Show a job's status, progress, result or error", scope="job:job_id")
def get_job(job_id: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    return json_response(predictions.job_view(jobs_repo.get_job(ctx.db, job_id), g.principal))


@api.route("/<job_id>/cancel", "POST", "operator", "Cancel a queued job, or stop a running batch job after its current chunk",
           scope="job:job_id")
def cancel_job(job_id: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    predictions.job_view(jobs_repo.get_job(ctx.db, job_id), g.principal)  # 404 for someone else's job
    status = jobs_repo.request_cancel(ctx.db, job_id)
    audit.record("job.cancel", job_id, details={"status": status})
    return json_response(predictions.job_view(jobs_repo.get_job(ctx.db, job_id), g.principal))


@api.route("/<job_id>/result", "GET", "service", "Download a batch job's CSV or Parquet result", scope="job:job_id")
def job_result(job_id: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    view = predictions.job_view(jobs_repo.get_job(ctx.db, job_id), g.principal)
    result = view["result"] or {}
    if view["status"] != "succeeded":
        raise ConflictError(f"job '{job_id}' is {view['status']}; its result can be downloaded once it has succeeded",
                            {"id": job_id, "status": view["status"]})
    if "artifact" not in result:
        raise NotFoundError(f"job '{job_id}' has no file to download; its output went to "
                            f"{result.get('table', 'its reply')}", {"id": job_id})
    fmt = result["format"]
    resp = Response(stream_with_context(iter_artifact(ctx.db, result["artifact"])), mimetype=MEDIA_TYPES[fmt])
    resp.headers["Content-Disposition"] = f'attachment; filename="{job_id}.{fmt}"'
    resp.headers["Content-Length"] = str(result["size"])
    return resp
