"""The API's gunicorn worker class: gthread that serves a client's next request on the same thread.

gunicorn's gthread worker hands every kept-alive connection back to its main thread after each response, which
polls it and hands the next request to a pool thread again: two cross-thread wake-ups and the main thread's
bookkeeping per request. A client calling the API in a loop sends its next request soon after the answer, so this
worker keeps the connection on its thread for up to ``LINGER_S`` and, if a request arrives, serves it there
(measurements: docs/performance.md). A thread lingers only while no other connection waits for a thread, and at
most half of the worker's threads linger at once, so a quiet connection never keeps a new request waiting.
Everything else (body streaming, timeouts, keep-alive limits, graceful shutdown) is gthread's own code.

Two smaller savings per request: the worker reads its settings through ``_StaticConfig`` (each read once instead
of through Config's lookup every time) and formats the Date header once a second (``_http_date``). Measured in a
head-to-head run of both checkouts (tests/bench/ab_checkouts.py, docs/performance.md), they are worth a few percent.

It leans on gthread's internals: ``handle()`` returning True for a kept-alive connection, the pool's
``_work_queue``, ``conn.parser.unreader``, ``conn.is_http2``, and ``Response.default_headers`` calling
``util.http_date()``. gunicorn is pinned to the tested minor version, the worker checks these at start and logs an
error (serving as plain gthread, with gunicorn's own Date) when one is missing, and
``modeldeck_http_lingered_requests_total`` counts the requests served by lingering, which
tests/test_gunicorn_worker.py asserts; it also asserts that a response's Date comes from ``_http_date``. Use: ``gunicorn --worker-class server.http.gunicorn_worker.LingeringThreadWorker``.
"""

from __future__ import annotations

import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from gunicorn import util
from gunicorn.http.unreader import Unreader
from gunicorn.http.wsgi import Response
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import Counter

from server.core.settings import SettingsError, load_settings

LINGER_S = 0.010


def _lingered_counter() -> Counter:
    """Create the counter in the worker process: created in the master (at import), prometheus-client's
    multiprocess mode would open its file there, before the directory is prepared."""
    return Counter("modeldeck_http_lingered_requests", "Requests served on the thread that served the connection's "
                   "last one, without a trip through gunicorn's main thread")


def prepare_multiprocess_dir(directory: Path) -> int:
    """Create prometheus-client's multiprocess directory, or empty it of an earlier run's files; return how many
    were removed. Stale files would be summed into /metrics as if their processes were alive."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in directory.glob("*.db"):  # only its own files: the directory may be a volume's mount point
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def internals_missing() -> list[str]:
    """Return the gthread internals this worker needs and the installed gunicorn lacks."""
    missing = []
    if not hasattr(ThreadPoolExecutor(max_workers=1), "_work_queue"):
        missing.append("ThreadPoolExecutor._work_queue")
    if "buf" not in Unreader.__init__.__code__.co_names:  # an attribute set per instance
        missing.append("gunicorn.http.unreader.Unreader.buf")
    if "_keepalive_after" not in ThreadWorker.handle.__code__.co_names:
        missing.append("ThreadWorker.handle() returning _keepalive_after(...)")
    if not {"util", "http_date"} <= set(Response.default_headers.__code__.co_names):
        missing.append("gunicorn.http.wsgi.Response.default_headers() calling util.http_date()")
    return missing


class _StaticConfig:
    """A worker's gunicorn settings, each read once: Config answers every read through ``__getattr__`` and
    ``Setting.get``, a few dozen reads per request, and a worker's settings do not change after it starts (a
    reload starts new workers)."""

    def __init__(self, cfg: Any) -> None:
        object.__setattr__(self, "_cfg", cfg)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        object.__setattr__(self, name, value)
        return value


_date = (0, "")
_format_date = util.http_date


def install_date_cache() -> Callable[..., str]:
    """Make gunicorn format its Date header through _http_date in this process; return what it used before."""
    previous = util.http_date
    util.http_date = _http_date
    return previous


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's Date header value, formatted once a second (it has one-second resolution)."""
    global _date
    if timestamp is not None:
        return _format_date(timestamp)
    now = int(time.time())
    second, text = _date
    if second != now:
        text = _format_date(now)
        _date = (now, text)
    return text


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a kept-alive connection's next request on the thread that served the last."""

    lingered: Counter | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the master, once at start and before any worker: prepare PROMETHEUS_MULTIPROC_DIR when it is set."""
        super().check_config(cfg, log)
        try:
            directory = load_settings().prometheus_multiproc_dir
        except SettingsError:
            return  # each worker says what is wrong when it loads the app
        # A master re-executed for an upgrade (USR2) runs beside the old one's workers: their files stay.
        if directory and not cfg.env_orig.get("GUNICORN_PID") and "GUNICORN_FD" not in cfg.env_orig:
            removed = prepare_multiprocess_dir(Path(directory))
            log.info("prometheus multiprocess directory %s ready (%d stale files removed)", directory, removed)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._linger_lock = threading.Lock()
        self._lingering = 0
        self._max_lingering = self.cfg.threads // 2  # the other half stays free for new requests
        self._linger_on = True

    def init_process(self) -> None:
        missing = internals_missing()
        if missing:
            self._linger_on = False
            self.log.error("the installed gunicorn lacks what LingeringThreadWorker needs (%s): serving as plain "
                           "gthread; install the gunicorn version pyproject.toml pins", ", ".join(missing))
        else:
            self.cfg = _StaticConfig(self.cfg)
            self.log.cfg = _StaticConfig(self.log.cfg)  # its access() reads several settings per request
            install_date_cache()  # in this worker process only, after the fork
        LingeringThreadWorker.lingered = _lingered_counter()
        super().init_process()

    def _idle_pool(self) -> bool:
        queue = getattr(self.tpool, "_work_queue", None)  # ThreadPoolExecutor's queue of waiting work
        return queue is not None and queue.empty()

    def _linger(self, conn: Any) -> bool:
        """Wait up to LINGER_S for the connection's next request; False if none came or enough threads wait already."""
        with self._linger_lock:
            if self._lingering >= self._max_lingering:
                return False
            self._lingering += 1
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            return bool(poller.poll(LINGER_S * 1000))
        finally:
            with self._linger_lock:
                self._lingering -= 1

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        while (result is True and self._linger_on and self.alive and not conn.is_http2 and conn.parser is not None
               and self._idle_pool()):
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait briefly for the next request
                try:
                    if not self._linger(conn):
                        break  # idle: back to the main thread's poller, as gthread does
                except (OSError, ValueError):
                    return False
            if self.lingered is not None:
                self.lingered.inc()
            result = super().handle(conn)
        return result
