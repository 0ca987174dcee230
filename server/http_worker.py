"""The API's gunicorn worker class: gthread that serves a client's next request on the same thread.

gunicorn's gthread worker hands every kept-alive connection back to its main thread after each
response, which polls it and hands the next request to a pool thread again: two cross-thread
wake-ups and the main thread's bookkeeping (futures, selector registration), 0.1 to 0.2 ms of a
request on a 2-core machine. A client calling the API in a loop sends its next request soon after
the answer (python-requests: about 1 ms on an idle 2-core machine, 2 to 3 ms when that machine is
slow), so this worker keeps the connection on its thread for up to ``LINGER_S`` and, if a request
arrives, serves it there. ``LINGER_S`` was 2 ms until 2026-12-04: on a slow spell 37 to 42 % of a
sequential client's requests came later than that and took the main thread's path.

A thread lingers only while no other connection waits for a thread, and at most half of the
worker's threads linger at once, so a connection that goes quiet never keeps a new request
waiting for a thread. Everything else (body streaming, timeouts, keep-alive limits, graceful
shutdown) is gthread's own code.

Two per-request costs of gunicorn's own are also cut in the worker process: its settings are read once
(``_StaticConfig``) instead of through Config's lookup each time, and the Date header is formatted once a
second. Use: ``gunicorn --worker-class server.http_worker.LingeringThreadWorker``.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

LINGER_S = 0.010


class _StaticConfig:
    """A worker's view of gunicorn's configuration that reads each setting once.

    gunicorn's Config answers every attribute through ``__getattr__`` and ``Setting.get``, and a request reads
    settings a few dozen times (4 to 6 % of the API's CPU in a py-spy profile). A worker's settings do not change
    after it starts (a reload starts new workers), so the first answer is kept.
    """

    def __init__(self, cfg: Any) -> None:
        object.__setattr__(self, "_cfg", cfg)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        object.__setattr__(self, name, value)
        return value


_date = (0, "")


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


_format_date = util.http_date


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a kept-alive connection's next request on the thread that served the last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._linger_lock = threading.Lock()
        self._lingering = 0
        self._max_lingering = self.cfg.threads // 2  # the other half stays free for new requests

    def init_process(self) -> None:
        self.cfg = _StaticConfig(self.cfg)
        self.log.cfg = _StaticConfig(self.log.cfg)  # its access() reads five settings per request
        util.http_date = _http_date  # this process only: the worker, after the fork
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
        while result is True and self.alive and not conn.is_http2 and conn.parser is not None and self._idle_pool():
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait briefly for the next request
                try:
                    if not self._linger(conn):
                        break  # idle: back to the main thread's poller, as gthread does
                except (OSError, ValueError):
                    return False
            result = super().handle(conn)
        return result
