"""Open Inference Protocol v2 (KServe, Triton, MLServer clients) over the same predict path."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from server.services import audit, predictions
from server.http import access_log
from server.http.api import Api, json_response
from server.services.request_scope import request_id
from server.core import models_repo
from server.core.errors import InvalidInputError, ModelDeckError, PayloadTooLargeError
from server.http.views.health import readiness
from server.http.v2_tensors import OUTPUT_NAME, SCHEMA_DTYPES, decode_inputs, encode_output, split_body, tensors_to_rows

logger = logging.getLogger(__name__)
api = Api("v2", "/v2")

INFER_SCHEMA = {"application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"]}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}}}


def _ref(version: str | None) -> int | str | None:
    if version is None:
        return None
    return int(version) if version.isdigit() else version


def _ctx() -> Any:
    return current_app.extensions["modeldeck"]


@api.route("/health/live", "GET", "service", "OIP: server liveness")
def live() -> Response:
    return json_response({"live": True})


@api.route("/health/ready", "GET", "service", "OIP: server readiness")
def ready() -> Response:
    ok, _ = readiness()
    return json_response({"ready": ok}, 200 if ok else 400)


@api.route("", "GET", "service", "OIP: server metadata")
def server_metadata() -> Response:
    return json_response({"name": "modeldeck", "version": current_app.extensions["modeldeck_openapi"]["info"]["version"],
                          "extensions": ["binary_tensor_data"]})


def _metadata(name: str, version: str | None) -> Response:
    doc = predictions.resolve(_ctx(), g.principal, name, _ref(version))
    model = models_repo.get_model(_ctx().db, name)
    schema = doc.get("input_schema")
    if schema:
        inputs = [{"name": f["name"], "datatype": SCHEMA_DTYPES[f["type"]], "shape": [-1]} for f in schema]
    else:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, -1]}]
    return json_response({
        "name": name, "versions": [str(v["version"]) for v in model["versions"] if not v.get("archived")],
        "platform": doc["format"], "inputs": inputs, "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
    })


@api.route("/models/<name>", "GET", "service", "OIP: model metadata")
def model_metadata(name: str) -> Response:
    return _metadata(name, None)


@api.route("/models/<name>/versions/<version>", "GET", "service", "OIP: model version metadata")
def version_metadata(name: str, version: str) -> Response:
    return _metadata(name, version)


def _ready(name: str, version: str | None) -> Response:
    doc = predictions.resolve(_ctx(), g.principal, name, _ref(version))
    live = _ctx().liveness.live_counts().get(doc["pool"], 0) > 0
    return json_response({"name": name, "ready": live}, 200 if live else 400)


@api.route("/models/<name>/ready", "GET", "service", "OIP: model readiness")
def model_ready(name: str) -> Response:
    return _ready(name, None)


@api.route("/models/<name>/versions/<version>/ready", "GET", "service", "OIP: model version readiness")
def version_ready(name: str, version: str) -> Response:
    return _ready(name, version)


def _binary_output(body: dict[str, Any]) -> bool:
    """Check the requested outputs; say whether the output goes back as binary tensor data.

    binary_data_output on the request asks for every output in binary; binary_data on a requested output
    overrides it (binary tensor data extension).
    """
    params = body.get("parameters") or {}
    wanted = body.get("outputs") or []
    if not isinstance(params, dict) or not isinstance(wanted, list):
        raise InvalidInputError("inference request: 'parameters' must be an object and 'outputs' a list")
    as_binary = bool(params.get("binary_data_output"))
    for out in wanted:
        if not isinstance(out, dict) or not isinstance(out.get("parameters") or {}, dict):
            raise InvalidInputError(f"each requested output must be an object with a 'name', got {out!r}"[:300])
        if out.get("name") != OUTPUT_NAME:
            raise InvalidInputError(f"unknown output {out.get('name')!r}; this model has one output, '{OUTPUT_NAME}'")
        if "binary_data" in (out.get("parameters") or {}):
            as_binary = bool(out["parameters"]["binary_data"])
    return as_binary


def _infer(name: str, version: str | None) -> Response:
    ctx = _ctx()
    limit = ctx.settings.max_body_kb * 1024
    if (request.content_length or 0) > limit:
        raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes (MODELDECK_MAX_BODY_KB)")
    body, binary = split_body(request.get_data(cache=False), request.headers.get("Inference-Header-Content-Length"))
    doc = predictions.resolve(ctx, g.principal, name, _ref(version))
    rows = tensors_to_rows(decode_inputs(body, binary), doc.get("input_schema"))
    as_binary = _binary_output(body)
    result = predictions.predict(ctx, g.principal, name, rows, doc["version"], request_id())
    audit.maybe_record_prediction(name, result.version, len(result.predictions))
    access_log.note_version(result.version)
    tensor, data = encode_output(result.predictions, as_binary)
    answer = {"model_name": name, "model_version": str(result.version), "id": body.get("id") or result.request_id,
              "outputs": [tensor]}
    if not data:
        return json_response(answer)
    header = orjson.dumps(answer)
    resp = Response(header + data, mimetype="application/octet-stream")
    resp.headers["Inference-Header-Content-Length"] = str(len(header))
    return resp


@api.route("/models/<name>/infer", "POST", "service", "OIP: inference", request_schema=INFER_SCHEMA)
def infer(name: str) -> Response:
    return _infer(name, None)


@api.route("/models/<name>/versions/<version>/infer", "POST", "service", "OIP: inference on a version",
           request_schema=INFER_SCHEMA)
def infer_version(name: str, version: str) -> Response:
    return _infer(name, version)


def v2_error(exc: ModelDeckError) -> Response:
    """Render an error in the protocol's shape: {"error": "message"}.

    The protocol signals a bad request with 400; rows that fail the input schema (422 elsewhere in the API)
    are bad requests here too.
    """
    return json_response({"error": exc.message}, 400 if exc.status == 422 else exc.status)


@api.blueprint.errorhandler(Exception)
def _v2_exception(exc: Exception) -> Response:
    """Keep every error from a /v2 view in the protocol's shape, not only ModelDeck's own."""
    if isinstance(exc, ModelDeckError):
        return v2_error(exc)
    if isinstance(exc, HTTPException):
        return json_response({"error": exc.description or exc.name}, exc.code or 500)
    logger.exception("request %s failed", request_id())
    return json_response({"error": f"internal error; quote request id {request_id()} to an operator"}, 500)
