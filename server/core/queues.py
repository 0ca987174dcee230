"""Queue depths read from RabbitMQ with passive declares on a short-lived channel."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import amqp

from server.core.broker import close_quietly, connect, parse_broker_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueDepth:
    ready: int  # messages waiting for a worker (not counting those a worker holds unacknowledged)
    consumers: int


class QueueProbe:
    """Read queue depths; keeps one connection, reopened after a failure, and a fresh channel per read."""

    def __init__(self, broker_url: str) -> None:
        self._address = parse_broker_url(broker_url)
        self._conn: amqp.Connection | None = None
        self._lock = threading.Lock()

    def depths(self, queues: list[str]) -> dict[str, QueueDepth | None]:
        """Return each queue's depth; 0 for a queue not declared yet, None for all when the broker is away."""
        with self._lock:
            try:
                if self._conn is None or not self._conn.connected:
                    self._conn = connect(self._address, name="modeldeck-queue-probe")
                out: dict[str, QueueDepth | None] = {}
                channel = self._conn.channel()
                for queue in queues:
                    try:
                        ok = channel.queue_declare(queue, passive=True)
                        out[queue] = QueueDepth(ok.message_count, ok.consumer_count)
                    except amqp.exceptions.NotFound:
                        # 404: nobody declared the queue yet, so nothing waits in it (the broker closed the channel).
                        out[queue] = QueueDepth(0, 0)
                        channel = self._conn.channel()
                if channel.is_open:
                    channel.close()
                return out
            except (amqp.exceptions.AMQPError, OSError) as exc:
                logger.warning("could not read queue depths: %s", exc)
                close_quietly(self._conn)
                self._conn = None
                return {q: None for q in queues}

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            close_quietly(self._conn)
            self._conn = None
