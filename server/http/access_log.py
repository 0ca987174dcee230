"""The API's access log: one line per request (who, what, the status, how long), never a body or a credential.

Successful health probes and metric scrapes are left out: they come every few seconds and would bury the rest.

Each entry is taken once the answer's last byte is out (``call_on_close``), so the duration includes sending the
answer, and queued; one thread per process writes the queue through ``logging`` every ``FLUSH_S`` (and at exit),
with each entry's own time. The request thread only reads its fields and appends them: writing a line on it cost
about a tenth of the API's CPU per prediction (docs/performance.md). ``MODELDECK_ACCESS_LOG`` picks ``text``
(key=value after the API log's usual prefix), ``json`` (one JSON object per line, for log shippers) or ``off``.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
from collections import deque
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
                duration_ms: float, model: str | None, version: int | None, created: float | None = None) -> str:
    """Render a request as one JSON object, with its time (created, else now)."""
    when = datetime.now(timezone.utc) if created is None else datetime.fromtimestamp(created, timezone.utc)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(dict(zip(FIELDS, (stamp, request_id, client, credential, method, path, status, duration_ms,
                                          model, version)))).decode()


FLUSH_S = 0.1  # how long an entry may wait in the queue before its line is written
_Entry = tuple[Callable[..., str], float, float, tuple[object, ...]]  # formatter, time, duration_ms, fields
_queue: deque[_Entry] = deque()  # appended by request threads, emptied by the writer (both atomic)
_writer_pid = 0  # the process whose writer thread runs (a fork has none until its first entry)
_writer_lock = threading.Lock()


def _take(formatter: Callable[..., str], started: float, fields: tuple[object, ...]) -> None:
    """Queue a request's entry, now that its answer is out."""
    _queue.append((formatter, time.time(), round((time.perf_counter() - started) * 1000, 2), fields))
    if _writer_pid != os.getpid():
        _start_writer()


def _start_writer() -> None:
    global _writer_pid
    with _writer_lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
        threading.Thread(target=_write_forever, name="modeldeck-access-log", daemon=True).start()
        atexit.register(flush)


def _write_forever() -> None:
    while True:
        time.sleep(FLUSH_S)
        try:
            flush()
        except Exception:  # a broken handler must not stop the writer: logging reports its own errors
            pass


def flush() -> None:
    """Write every queued entry's line, each with the time its answer went out, in one write to the stream."""
    records = []
    while _queue:
        try:
            formatter, created, duration_ms, fields = _queue.popleft()
        except IndexError:  # emptied by the other flusher (the writer and atexit)
            break
        if formatter is format_json:
            line = format_json(*fields[:6], duration_ms, *fields[6:], created=created)  # type: ignore[arg-type]
        else:
            line = formatter(*fields[:6], duration_ms, *fields[6:])
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        records.append(record)
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER), None)
    if not isinstance(handler, logging.StreamHandler):
        for record in records:  # not set up by install(): whatever logging config the process has
            logger.handle(record)
        return
    if records:
        # Formatted first, then one write: a write per line made this thread and the request threads trade the
        # GIL at every line.
        text = "".join(handler.format(record) + handler.terminator for record in records)
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        finally:
            handler.release()


_HANDLER = "modeldeck-access"
# The API log's own prefix (server/http/wsgi.py), so that a text line reads like the API's other lines.
API_LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"


def _handler(fmt: str) -> logging.Handler:
    """The access log's own handler on the API's stderr: bare JSON objects (each line parses as JSON by itself),
    or text lines with the API log's prefix."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if fmt == "json" else API_LOG_FORMAT))
    handler.set_name(_HANDLER)
    return handler


def install(app: Flask, fmt: str) -> None:
    """Log every request the app answers in format fmt (text, json or off). Install it after the app's own
    after_request handler that runs the deferred work: Flask calls after_request handlers last-registered first."""
    if fmt == "off":
        return
    formatter = format_json if fmt == "json" else format_text
    logger.setLevel(logging.INFO)
    # Its own handler, so that the writer can write a batch of lines at once, rather than the root logger's.
    logger.propagate = False
    for earlier in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(earlier)
    logger.addHandler(_handler(fmt))

    @app.before_request
    def _start_clock() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def _log_on_close(resp: Response) -> Response:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        path = req.path
        if resp.status_code == 200 and path in _PROBES:
            return resp
        principal = ctx.get("principal")
        model = (req.view_args or {}).get("name") if req.blueprint in _MODEL_BLUEPRINTS else None
        fields = (ctx.get("request_id") or request_id(), req.remote_addr or "-",
                  principal.subject if principal is not None else "-", req.method, path,
                  resp.status_code, model, ctx.get("access_version"))  # the duration is measured once the answer is out
        # Queued with the request's other deferred work, once the answer's last byte is out (app.py runs it).
        after_response(_take, formatter, ctx.get("access_started", time.perf_counter()), fields)
        return resp
