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
shutdown) is gthread's own code. Use: ``gunicorn --worker-class
server.http_worker.LingeringThreadWorker``.
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

LINGER_S = 0.010


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a kept-alive connection's next request on the thread that served the last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._linger_lock = threading.Lock()
        self._lingering = 0
        self._max_lingering = self.cfg.threads // 2  # the other half stays free for new requests

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
