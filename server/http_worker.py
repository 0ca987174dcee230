"""The API's gunicorn worker class: gthread that serves a client's next request on the same thread.

gunicorn's gthread worker hands every kept-alive connection back to its main thread after each
response, which polls it and hands the next request to a pool thread again: two cross-thread
wake-ups per request, about 0.1 ms each on a 2-core machine. A client calling the API in a loop
sends its next request within a fraction of a millisecond, so this worker keeps the connection on
its thread for ``LINGER_S`` first and, if a request arrives, serves it there. Everything else (body
streaming, timeouts, keep-alive limits, graceful shutdown) is gthread's own code.

It lingers only while no other connection waits for a thread, so a busy worker never keeps a
queued request waiting on an idle connection. Use: ``gunicorn --worker-class
server.http_worker.LingeringThreadWorker``.
"""

from __future__ import annotations

import select
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

LINGER_S = 0.002


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a kept-alive connection's next request on the thread that served the last."""

    def _idle_pool(self) -> bool:
        queue = getattr(self.tpool, "_work_queue", None)  # ThreadPoolExecutor's queue of waiting work
        return queue is not None and queue.empty()

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        while result is True and self.alive and not conn.is_http2 and conn.parser is not None and self._idle_pool():
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait briefly for the next request
                poller = select.poll()
                try:
                    poller.register(conn.sock, select.POLLIN)
                    if not poller.poll(LINGER_S * 1000):
                        break  # idle: back to the main thread's poller, as gthread does
                except (OSError, ValueError):
                    return False
            result = super().handle(conn)
        return result
