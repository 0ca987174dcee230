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
from datetime import datetime, timezone
from typing import Callable

import orjson
from flask import Flask, Response, g, request

from server.services.request_scope import after_response, request_id

logger = logging.getLogger("modeldeck.access")

# Blueprints whose <name> is a model's name (in datasources it names a data source).
_MODEL_BLUEPRINTS = frozenset({"models", "predict", "v2", "monitoring"})
# Probes and scrapes that orchestrators and Prometheus send every few seconds: logged only when they do not answer 200.
_PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# A text value needs quoting when it could be mistaken for the next field or forge a line (spaces, quotes, newlines).
_PLAIN = re.compile(r'^[^\s"=\\]+$')


# The fields of a line, in order; time and duration are filled in once the answer is out.
FIELDS = ("time", "request_id", "client", "credential", "method", "path", "status", "duration_ms", "model", "version")


def note_version(version: int) -> None:
    """Record which model version answered this request, for its access-log line."""
    g.access_version = version


def _text_value(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if _PLAIN.match(text) else orjson.dumps(text).decode()


def format_text(request_id: str, client: str, credential: str, method: str, path: str, status: int,
                duration_ms: float, model: str | None, version: int | None) -> str:
    """Render a request as key=value pairs (the time comes from the log's own prefix). The request id is already
    sane (request_scope), method, status, duration and version cannot hold a space or a quote: only the caller's
    own strings are checked."""
    return (f"request_id={request_id} client={_text_value(client)} credential={_text_value(credential)} "
            f"method={_text_value(method)} path={_text_value(path)} status={status} duration_ms={duration_ms} "
            f"model={_text_value(model)} version={'-' if version is None else version}")


def format_json(request_id: str, client: str, credential: str, method: str, path: str, status: int,
                duration_ms: float, model: str | None, version: int | None) -> str:
    """Render a request as one JSON object, with its time."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(dict(zip(FIELDS, (stamp, request_id, client, credential, method, path, status, duration_ms,
                                          model, version)))).decode()


def _write(formatter: Callable[..., str], started: float, fields: tuple[object, ...]) -> None:
    # Built as one string and handed to the logger without %-arguments: this runs for every request.
    logger.info(formatter(*fields[:6], round((time.perf_counter() - started) * 1000, 2), *fields[6:]))


def _json_handler() -> logging.Handler:
    """A handler that writes the bare JSON object, so each access line parses as JSON by itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name("modeldeck-access-json")
    return handler


def install(app: Flask, fmt: str) -> None:
    """Log every request the app answers in format fmt (text, json or off). Install it after the app's own
    after_request handler that runs the deferred work: Flask calls after_request handlers last-registered first."""
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
        fields = (g.get("request_id") or request_id(), request.remote_addr or "-",
                  principal.subject if principal is not None else "-", request.method, request.path,
                  resp.status_code, model, g.get("access_version"))  # the duration is measured once the answer is out
        # Written with the request's other deferred work, once the answer's last byte is out (app.py runs it).
        after_response(_write, formatter, g.get("access_started", time.perf_counter()), fields)
        return resp
