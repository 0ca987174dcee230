"""Declare endpoints once: route, minimum role, body and query models; the OpenAPI document follows."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import orjson
from flask import Blueprint, Response, current_app, g, has_request_context, request
from pydantic import BaseModel, ValidationError

from server.auth import ANYONE, require_role
from server.core.errors import InvalidInputError, PayloadTooLargeError, UnauthorizedError, UnsupportedMediaTypeError
from server.validation import short_repr

logger = logging.getLogger(__name__)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
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
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Register a view: authenticate and authorize, parse body and query, then call it."""

        def decorate(fn: Callable[..., Response]) -> Callable[..., Response]:
            op = Operation(
                rule=self.url_prefix + rule, method=method, role=role, summary=summary,
                tag=self.blueprint.name, endpoint=fn.__name__, body=body, query=query,
                request_schema=request_schema, status=status, responses=responses or {},
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
                if body is not None:
                    kwargs["body"] = parse_body(body)
                if query is not None:
                    kwargs["query"] = parse_model(query, request.args.to_dict(), "query parameter")
                return fn(**kwargs)

            self.blueprint.add_url_rule(rule, fn.__name__, view, methods=[method])
            return fn

        return decorate


def request_id() -> str:
    """Return this request's id: the caller's X-Request-ID when sane, else a new one."""
    rid = g.get("request_id")
    if rid is None:
        given = request.headers.get("X-Request-ID", "")
        rid = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        g.request_id = rid
    return rid


def after_response(fn: Callable[..., None], *args: Any) -> None:
    """Run fn(*args) once this request's answer has been written to the client, so that bookkeeping (counting
    a prediction) is not part of the caller's wait; at once when there is no request (a job, a script).

    It runs after Flask's request context has ended: pass it values, not ``g`` or ``request``."""
    if not has_request_context():
        fn(*args)
        return
    pending = g.get("after_response")
    if pending is None:
        g.after_response = pending = []
    pending.append((fn, args))


def run_after_response(pending: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    """Run what after_response deferred; a failure is logged and does not touch the answer already sent."""
    for fn, args in pending:
        try:
            fn(*args)
        except Exception:
            logger.exception("work deferred until after the response failed: %s", getattr(fn, "__qualname__", fn))


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


def _shown(value: Any) -> str:
    """Return a received value for a message: at most 80 characters of its repr, even when nested too deep for repr()."""
    if isinstance(value, (str, bytes)):
        return repr(value[:100])[:80]
    return short_repr(value)[:80]


def describe_errors(exc: ValidationError, where: str) -> tuple[str, list[dict[str, Any]]]:
    """Turn pydantic errors into one message naming field, value received and what was expected."""
    problems = []
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        given = err.get("input")
        shown = "nothing" if err["type"] == "missing" else _shown(given)
        parts.append(f"{where} '{loc}': {err['msg']}, got {shown}")
        problems.append({"field": loc, "message": err["msg"], "type": err["type"]})
    return "; ".join(parts), problems


def parse_model(model: type[BaseModel], data: Any, where: str) -> Any:
    """Validate data against a model, raising a 400 that names each bad field."""
    if where == "field" and not isinstance(data, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, problems = describe_errors(exc, where)
        raise InvalidInputError(message, {"errors": problems}) from exc


def parse_body(model: type[BaseModel]) -> Any:
    """Parse and validate the JSON body."""
    return parse_model(model, read_json(), "field")
