"""Predictions: synchronous, or queued as a job with ``?async=true``."""

from __future__ import annotations

from typing import Any, Literal

from flask import Response, current_app, g, request
from pydantic import BaseModel, Field

from server.services import audit, predictions
from server.http import access_log
from server.http.api import Api, json_response
from server.services.request_scope import request_id
from server.core.errors import InvalidInputError
from server.http.views.jobs import job_location

api = Api("predict", "/api/v1/models")


class PredictBody(BaseModel):
    """Rows as objects keyed by feature or lists in schema order; version is a number or an alias."""

    model_config = {"extra": "forbid"}

    inputs: list[Any] = Field(description="rows: objects keyed by feature name, or lists in schema order")
    version: int | str | None = Field(default=None, description="version number or alias; default production, else latest")
    method: Literal["predict", "predict_proba", "predict_log_proba", "decision_function", "transform", "encode",
                    "generate"] = Field(
        default="predict", description="the model's method to call; a version's metadata lists those it offers")
    parameters: dict[str, Any] | None = Field(
        default=None, description="text models: encode {normalize}; generate {max_new_tokens, temperature, top_p, "
                                  "top_k, seed} (docs/api.md)")


@api.route("/<name>/predict", "POST", "service", "Predict rows with a model version", body=PredictBody,
           responses={"202": "queued as a job (?async=true)"}, scope="path:name")
def predict(name: str, body: PredictBody) -> Response:
    ctx = current_app.extensions["modeldeck"]
    flag = request.args.get("async", "false").lower()
    if flag not in ("true", "false", "1", "0"):
        raise InvalidInputError(f"query parameter 'async': expected true or false, got {flag!r}")
    if flag in ("true", "1"):
        job = predictions.submit_job(ctx, g.principal, name, body.inputs, body.version, body.method,
                                     body.parameters)
        audit.record("job.create", job["_id"], status=202, details={"model": name, "version": job["params"]["version"]})
        resp = json_response({"job_id": job["_id"], "status": job["status"], "url": job_location(job["_id"])}, 202)
        resp.headers["Location"] = job_location(job["_id"])
        return resp
    result = predictions.predict(ctx, g.principal, name, body.inputs, body.version, request_id(), body.method,
                                 body.parameters)
    audit.maybe_record_prediction(name, result.version, len(result.predictions))
    access_log.note_version(result.version)
    answer = {
        "predictions": result.predictions, "model": result.model, "version": result.version,
        "request_id": result.request_id, "timings": result.timings, "cold_start": result.cold_start,
    }
    if result.classes is not None:
        answer["classes"] = result.classes
    return json_response(answer)
