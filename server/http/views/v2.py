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
from server.http.v2_tensors import (OUTPUT_NAME, SCHEMA_DTYPES, check_datatypes, decode_inputs, encode_output,
                                    split_body, tensors_to_rows, tensors_to_texts)

logger = logging.getLogger(__name__)
api = Api("v2", "/v2")
V2_OUTPUTS = ("predict", "predict_proba", "predict_log_proba", "decision_function")
TEXT_OUTPUTS = {"encode": "FP32", "generate": "BYTES"}  # a text model's one output, named for its method
# Request parameters of the protocol itself; the others go to a text model's method.
PROTOCOL_PARAMETERS = ("binary_data_output",)

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


@api.route("/health/live", "GET", "service", "OIP: server liveness", scope="none")
def live() -> Response:
    return json_response({"live": True})


@api.route("/health/ready", "GET", "service", "OIP: server readiness", scope="none")
def ready() -> Response:
    ok, _ = readiness()
    return json_response({"ready": ok}, 200 if ok else 400)


@api.route("", "GET", "service", "OIP: server metadata", scope="none")
def server_metadata() -> Response:
    return json_response({"name": "modeldeck", "version": current_app.extensions["modeldeck_openapi"]["info"]["version"],
                          "extensions": ["binary_tensor_data"]})


def _metadata(name: str, version: str | None) -> Response:
    doc = predictions.resolve(_ctx(), g.principal, name, _ref(version))
    model = models_repo.get_model(_ctx().db, name)
    schema = doc.get("input_schema")
    if doc.get("format") == "huggingface":
        method = (doc.get("methods") or ["encode"])[0]
        return json_response({
            "name": name, "versions": [str(v["version"]) for v in model["versions"] if not v.get("archived")],
            "platform": doc["format"], "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": method, "datatype": TEXT_OUTPUTS[method],
                         "shape": [-1, -1] if method == "encode" else [-1]}]})
    if schema:
        inputs = [{"name": f["name"], "datatype": SCHEMA_DTYPES[f["type"]], "shape": [-1]} for f in schema]
    else:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, -1]}]
    outputs = [{"name": OUTPUT_NAME, "datatype": "BYTES" if _string_labels(doc) else "FP64", "shape": [-1]}]
    for method in _outputs(doc)[1:]:
        outputs.append({"name": method, "datatype": "FP64", "shape": [-1, len(doc.get("classes") or []) or -1]})
    return json_response({
        "name": name, "versions": [str(v["version"]) for v in model["versions"] if not v.get("archived")],
        "platform": doc["format"], "inputs": inputs, "outputs": outputs,
    })


def _outputs(doc: Any) -> list[str]:
    """The outputs a version offers: predict, then its other methods that answer numbers per row."""
    methods = doc.get("methods") or [OUTPUT_NAME]
    if doc.get("format") == "huggingface":
        return [m for m in methods if m in TEXT_OUTPUTS]
    return [OUTPUT_NAME] + [m for m in methods if m in V2_OUTPUTS and m != OUTPUT_NAME]


def _string_labels(doc: Any) -> bool:
    return any(isinstance(c, str) for c in doc.get("classes") or [])


@api.route("/models/<name>", "GET", "service", "OIP: model metadata", scope="path:name")
def model_metadata(name: str) -> Response:
    return _metadata(name, None)


@api.route("/models/<name>/versions/<version>", "GET", "service", "OIP: model version metadata", scope="path:name")
def version_metadata(name: str, version: str) -> Response:
    return _metadata(name, version)


def _ready(name: str, version: str | None) -> Response:
    doc = predictions.resolve(_ctx(), g.principal, name, _ref(version))
    live = _ctx().liveness.live_counts().get(doc["pool"], 0) > 0
    return json_response({"name": name, "ready": live}, 200 if live else 400)


@api.route("/models/<name>/ready", "GET", "service", "OIP: model readiness", scope="path:name")
def model_ready(name: str) -> Response:
    return _ready(name, None)


@api.route("/models/<name>/versions/<version>/ready", "GET", "service", "OIP: model version readiness", scope="path:name")
def version_ready(name: str, version: str) -> Response:
    return _ready(name, version)


def _requested_outputs(body: dict[str, Any], doc: Any) -> list[tuple[str, bool]]:
    """Return the requested outputs (default: predict), each with whether it goes back as binary tensor data.

    binary_data_output on the request asks for every output in binary; binary_data on a requested output
    overrides it (binary tensor data extension).
    """
    params = body.get("parameters") or {}
    wanted = body.get("outputs") or [{"name": _outputs(doc)[0]}]
    if not isinstance(params, dict) or not isinstance(wanted, list):
        raise InvalidInputError("inference request: 'parameters' must be an object and 'outputs' a list")
    offered = _outputs(doc)
    out: list[tuple[str, bool]] = []
    for item in wanted:
        if not isinstance(item, dict) or not isinstance(item.get("parameters") or {}, dict):
            raise InvalidInputError(f"each requested output must be an object with a 'name', got {item!r}"[:300])
        if item.get("name") not in offered:
            raise InvalidInputError(f"unknown output {item.get('name')!r}; this model's outputs are {', '.join(offered)}")
        as_binary = bool(params.get("binary_data_output"))
        if "binary_data" in (item.get("parameters") or {}):
            as_binary = bool(item["parameters"]["binary_data"])
        out.append((item["name"], as_binary))
    return out


def _infer(name: str, version: str | None) -> Response:
    ctx = _ctx()
    limit = ctx.settings.max_body_kb * 1024
    if (request.content_length or 0) > limit:
        raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes (MODELDECK_MAX_BODY_KB)")
    body, binary = split_body(request.get_data(cache=False), request.headers.get("Inference-Header-Content-Length"))
    doc = predictions.resolve(ctx, g.principal, name, _ref(version))
    text = doc.get("format") == "huggingface"
    decoded = decode_inputs(body, binary)
    if not text:  # a text model's one input is BYTES by definition
        check_datatypes(body, doc.get("input_schema"), name)
    rows: list[Any] = tensors_to_texts(decoded) if text else tensors_to_rows(decoded, doc.get("input_schema"))
    params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    method_params = {k: v for k, v in params.items() if k not in PROTOCOL_PARAMETERS} if text else None
    tensors, data = [], b""
    for output, as_binary in _requested_outputs(body, doc):
        result = predictions.predict(ctx, g.principal, name, rows, doc["version"], request_id(), output, method_params)
        audit.maybe_record_prediction(name, result.version, len(result.predictions))
        access_log.note_version(result.version)
        tensor, chunk = encode_output(result.predictions, as_binary, output, TEXT_OUTPUTS.get(output) if text else None)
        if result.classes is not None:
            # Parameter values are scalars in the protocol: the labels go as a JSON array in a string.
            tensor["parameters"] = {**tensor.get("parameters", {}), "classes": orjson.dumps(result.classes).decode()}
        tensors.append(tensor)
        data += chunk
    answer = {"model_name": name, "model_version": str(doc["version"]), "id": body.get("id") or request_id(),
              "outputs": tensors}
    if not data:
        return json_response(answer)
    header = orjson.dumps(answer)
    resp = Response(header + data, mimetype="application/octet-stream")
    resp.headers["Inference-Header-Content-Length"] = str(len(header))
    return resp


@api.route("/models/<name>/infer", "POST", "service", "OIP: inference", request_schema=INFER_SCHEMA, scope="path:name")
def infer(name: str) -> Response:
    return _infer(name, None)


@api.route("/models/<name>/versions/<version>/infer", "POST", "service", "OIP: inference on a version",
           request_schema=INFER_SCHEMA, scope="path:name")
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
