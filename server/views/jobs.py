"""Jobs: asynchronous predictions, their status and result."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, g
from pydantic import BaseModel, Field

from server import audit, predictions
from server.api import Api, json_response
from server.core import jobs_repo

api = Api("jobs", "/api/v1/jobs")


class JobBody(BaseModel):
    model_config = {"extra": "forbid"}

    model: str = Field(description="model name")
    inputs: list[Any] = Field(description="rows, as for predict")
    version: int | str | None = None


def job_location(job_id: str) -> str:
    """Return the URL path of a job."""
    return f"/api/v1/jobs/{job_id}"


@api.route("", "POST", "operator", "Queue a prediction job", body=JobBody, status=202)
def create_job(body: JobBody) -> Response:
    ctx = current_app.extensions["modeldeck"]
    job = predictions.submit_job(ctx, g.principal, body.model, body.inputs, body.version)
    audit.record("job.create", job["_id"], status=202, details={"model": body.model, "version": job["params"]["version"]})
    resp = json_response({"job_id": job["_id"], "status": job["status"], "url": job_location(job["_id"])}, 202)
    resp.headers["Location"] = job_location(job["_id"])
    return resp


@api.route("/<job_id>", "GET", "service", "Show a job's status, result or error")
def get_job(job_id: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    return json_response(predictions.job_view(jobs_repo.get_job(ctx.db, job_id), g.principal))
