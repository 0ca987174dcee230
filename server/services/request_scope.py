"""This request's id and the work deferred until its answer is out, for views and services alike."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Callable

from flask import g, has_request_context, request

logger = logging.getLogger(__name__)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
