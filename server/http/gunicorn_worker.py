"""The API's gunicorn worker class: gthread that serves a client's next request on the same thread.

gunicorn's gthread worker hands every kept-alive connection back to its main thread after each response, which
polls it and hands the next request to a pool thread again: two cross-thread wake-ups and the main thread's
bookkeeping per request. A client calling the API in a loop sends its next request soon after the answer, so this
worker keeps the connection on its thread for up to ``LINGER_S`` and, if a request arrives, serves it there
(measurements: docs/performance.md). A thread lingers only while no other connection waits for a thread, and at
most half of the worker's threads linger at once, so a quiet connection never keeps a new request waiting.
Everything else (body streaming, timeouts, keep-alive limits, graceful shutdown) is gthread's own code.

It leans on gthread's internals: ``handle()`` returning True for a kept-alive connection, the pool's
``_work_queue``, ``conn.parser.unreader`` and ``conn.is_http2``. gunicorn is pinned to the tested minor version,
the worker checks these at start and logs an error (serving as plain gthread) when one is missing, and
``modeldeck_http_lingered_requests_total`` counts the requests served by lingering, which
tests/test_gunicorn_worker.py asserts. Use: ``gunicorn --worker-class server.http.gunicorn_worker.LingeringThreadWorker``.
"""

from __future__ import annotations

import select
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import Counter

LINGER_S = 0.010

LINGERED = Counter("modeldeck_http_lingered_requests", "Requests served on the thread that served the connection's "
                   "last one, without a trip through gunicorn's main thread")


def internals_missing() -> list[str]:
    """Return the gthread internals this worker needs and the installed gunicorn lacks."""
    missing = []
    if not hasattr(ThreadPoolExecutor(max_workers=1), "_work_queue"):
        missing.append("ThreadPoolExecutor._work_queue")
    if "buf" not in Unreader.__init__.__code__.co_names:  # an attribute set per instance
        missing.append("gunicorn.http.unreader.Unreader.buf")
    if "_keepalive_after" not in ThreadWorker.handle.__code__.co_names:
        missing.append("ThreadWorker.handle() returning _keepalive_after(...)")
    return missing


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a kept-alive connection's next request on the thread that served the last."""

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
            LINGERED.inc()
            result = super().handle(conn)
        return result
