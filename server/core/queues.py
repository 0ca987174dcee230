"""Queue depths read from RabbitMQ with passive declares on a short-lived channel."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueDepth:
    ready: int  # messages waiting for a worker (not counting those a worker holds unacknowledged)
    consumers: int


class QueueProbe:
    """Read queue depths; keeps one connection, reopened after a failure, and a fresh channel per read."""

    def __init__(self, broker_url: str) -> None:
        self._params = pika.URLParameters(broker_url)
        if self._params.virtual_host in ("", "/"):
            self._params.virtual_host = "/"  # Celery's "amqp://host//" is the default vhost "/"
        self._params.socket_timeout = 3
        self._params.connection_attempts = 1
        self._params.heartbeat = 0
        self._conn: pika.BlockingConnection | None = None
        self._lock = threading.Lock()

    def depths(self, queues: list[str]) -> dict[str, QueueDepth | None]:
        """Return each queue's depth; 0 for a queue not declared yet, None for all when the broker is away."""
        with self._lock:
            try:
                if self._conn is None or not self._conn.is_open:
                    self._conn = pika.BlockingConnection(self._params)
                out: dict[str, QueueDepth | None] = {}
                channel = self._conn.channel()
                for queue in queues:
                    try:
                        ok = channel.queue_declare(queue, passive=True)
                        out[queue] = QueueDepth(ok.method.message_count, ok.method.consumer_count)
                    except ChannelClosedByBroker:
                        # 404: nobody declared the queue yet, so nothing waits in it.
                        out[queue] = QueueDepth(0, 0)
                        channel = self._conn.channel()
                if channel.is_open:
                    channel.close()
                return out
            except (AMQPError, OSError) as exc:
                logger.warning("could not read queue depths: %s", exc)
                self._close_locked()
                return {q: None for q in queues}

    def _close_locked(self) -> None:
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except (AMQPError, OSError):
            pass
        self._conn = None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._close_locked()
