"""Declare endpoints once: route, minimum role, body and query models; the OpenAPI document follows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import orjson
from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel

from server.http import scope as model_scope
from server.services.auth import ANYONE, require_role
from server.core.errors import InvalidInputError, PayloadTooLargeError, UnauthorizedError, UnsupportedMediaTypeError
from server.services.validation import parse_model

logger = logging.getLogger(__name__)

_NON_JSON_NUMBERS = (b"NaN", b"Infinity", b"-Infinity")
# Bounds for integers that reach the repository: BSON holds at most 8-byte integers, and a larger one was a 500.
MAX_OFFSET = 10**9
MAX_INT = 2**31 - 1


@dataclass
class Operation:
    rule: str
    method: str
    role: str
    summary: str
    tag: str
    endpoint: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    request_schema: dict[str, Any] | None = None
    status: int = 200
    responses: dict[str, str] = field(default_factory=dict)
    scope: str = model_scope.UNSCOPED


class Api:
    """A blueprint whose routes declare their role and input models."""

    def __init__(self, name: str, url_prefix: str = "") -> None:
        self.blueprint = Blueprint(name, __name__, url_prefix=url_prefix)
        self.url_prefix = url_prefix
        self.operations: list[Operation] = []

    def route(
        self,
        rule: str,
        method: str,
        role: str,
        summary: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        request_schema: dict[str, Any] | None = None,
        status: int = 200,
        responses: dict[str, str] | None = None,
        scope: str = model_scope.UNSCOPED,
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Register a view: authenticate and authorize, check the model scope, parse body and query, then call it.

        scope says where the operation finds its model (server/http/scope.py); left out, scoped credentials
        are refused, so a new endpoint is closed to them until it says which model it touches.
        """
        model_scope.check_declaration(scope, self.url_prefix + rule)

        def decorate(fn: Callable[..., Response]) -> Callable[..., Response]:
            op = Operation(
                rule=self.url_prefix + rule, method=method, role=role, summary=summary,
                tag=self.blueprint.name, endpoint=fn.__name__, body=body, query=query,
                request_schema=request_schema, status=status, responses=responses or {}, scope=scope,
            )
            self.operations.append(op)

            @wraps(fn)
            def view(**kwargs: Any) -> Response:
                if role != ANYONE:
                    ctx = current_app.extensions["modeldeck"]
                    address = request.remote_addr or "unknown"
                    ctx.limiter.check(address)
                    try:
                        g.principal = ctx.auth.authenticate(request.headers.get("Authorization"))
                    except UnauthorizedError:
                        ctx.limiter.fail(address)
                        raise
                    require_role(g.principal, role)
                raw = read_json() if body is not None else None
                if role != ANYONE:
                    # Before the body is validated, so a refusal says the same whatever else the body holds.
                    model_scope.enforce(scope, g.principal, kwargs, raw)
                if body is not None:
                    kwargs["body"] = parse_model(body, raw, "field")
                if query is not None:
                    kwargs["query"] = parse_model(query, request.args.to_dict(), "query parameter")
                return fn(**kwargs)

            self.blueprint.add_url_rule(rule, fn.__name__, view, methods=[method])
            return fn

        return decorate


def json_response(data: Any, status: int = 200) -> Response:
    """Serialise data with orjson into a JSON response."""
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status, mimetype="application/json")


def read_json() -> Any:
    """Parse the request body as JSON, enforcing the JSON body size limit."""
    limit = current_app.extensions["modeldeck"].settings.max_body_kb * 1024
    # A body that says it is something else, or compressed, is refused rather than guessed at (or inflated).
    if request.content_type and not (request.mimetype == "application/json" or request.mimetype.endswith("+json")):
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {request.mimetype!r}; send the body as JSON with that header",
            {"content_type": request.mimetype})
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not accepted; send the JSON body uncompressed", {"content_encoding": encoding})
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"request body is {request.content_length} bytes; the limit is {limit} bytes (MODELDECK_MAX_BODY_KB)"
        )
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes (MODELDECK_MAX_BODY_KB)")
    if not raw:
        raise InvalidInputError("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if raw[exc.pos:exc.pos + 9].startswith(_NON_JSON_NUMBERS) or "infinity" in exc.msg:
            hint = "; NaN and Infinity are not JSON numbers: send finite numbers (or null where the model allows it)"
        raise InvalidInputError(f"request body is not valid JSON: {exc}{hint}") from exc


def parse_body(model: type[BaseModel]) -> Any:
    """Parse and validate the JSON body."""
    return parse_model(model, read_json(), "field")
