"""The API's access log: one line per request (who, what, the status, how long), never a body or a credential.

Successful health probes and metric scrapes are left out: they come every few seconds and would bury the rest.

Each line is written once the answer's last byte is out (``call_on_close``), so logging is not part of the
caller's wait and the duration includes sending the answer. ``MODELDECK_ACCESS_LOG`` picks ``text`` (key=value
after the API log's usual prefix), ``json`` (one JSON object per line, for log shippers) or ``off``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from typing import Callable

import orjson
from flask import Flask, Response, g, request

from server.services.request_scope import request_id

logger = logging.getLogger("modeldeck.access")

# Blueprints whose <name> is a model's name (in datasources it names a data source).
_MODEL_BLUEPRINTS = frozenset({"models", "predict", "v2", "monitoring"})
# Probes and scrapes that orchestrators and Prometheus send every few seconds: logged only when they do not answer 200.
_PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# A text value needs quoting when it could be mistaken for the next field or forge a line (spaces, quotes, newlines).
_PLAIN = re.compile(r'^[^\s"=\\]+$')


@dataclass(frozen=True)
class AccessEntry:
    """What the access log records about one request."""

    time: str
    request_id: str
    client: str
    credential: str
    method: str
    path: str
    status: int
    duration_ms: float
    model: str | None
    version: int | None


_TEXT_FIELDS = tuple(name for name in AccessEntry.__dataclass_fields__ if name != "time")


def note_version(version: int) -> None:
    """Record which model version answered this request, for its access-log line."""
    g.access_version = version


def _text_value(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if _PLAIN.match(text) else orjson.dumps(text).decode()


def format_text(entry: AccessEntry) -> str:
    """Render an entry as key=value pairs (the time comes from the log's own prefix)."""
    return " ".join(f"{key}={_text_value(getattr(entry, key))}" for key in _TEXT_FIELDS)


def format_json(entry: AccessEntry) -> str:
    """Render an entry as one JSON object."""
    return orjson.dumps(entry).decode()  # orjson serialises dataclasses natively, in field order


def _write(formatter: Callable[[AccessEntry], str], started: float, entry: AccessEntry) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    logger.info("%s", formatter(replace(entry, time=stamp, duration_ms=duration_ms)))


def _json_handler() -> logging.Handler:
    """A handler that writes the bare JSON object, so each access line parses as JSON by itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name("modeldeck-access-json")
    return handler


def install(app: Flask, fmt: str) -> None:
    """Log every request the app answers in format fmt (text, json or off)."""
    if fmt == "off":
        return
    formatter = format_json if fmt == "json" else format_text
    logger.setLevel(logging.INFO)
    if fmt == "json":
        # Bare JSON lines on the API's stderr; the root logger's prefix would make them unparsable.
        logger.propagate = False
        if not any(h.get_name() == "modeldeck-access-json" for h in logger.handlers):
            logger.addHandler(_json_handler())

    @app.before_request
    def _start_clock() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def _log_on_close(resp: Response) -> Response:
        if resp.status_code == 200 and request.path in _PROBES:
            return resp
        principal = g.get("principal")
        model = (request.view_args or {}).get("name") if request.blueprint in _MODEL_BLUEPRINTS else None
        entry = AccessEntry(
            time="", request_id=g.get("request_id") or request_id(), client=request.remote_addr or "-",
            credential=principal.subject if principal is not None else "-", method=request.method, path=request.path,
            status=resp.status_code, duration_ms=0.0, model=model, version=g.get("access_version"),
        )  # time and duration are filled in once the answer is out
        resp.call_on_close(partial(_write, formatter, g.get("access_started", time.perf_counter()), entry))
        return resp
