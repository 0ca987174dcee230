"""The one AMQP client of ModelDeck's own code (py-amqp, Celery's client): the broker URL read once, connections made here.

Celery itself talks to RabbitMQ through kombu on the same library; the router, the queue probe, the workers'
reply publisher and the installer's broker check open their connections with ``connect``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp

# Same arguments as Celery's Queue(name): durable, no extra arguments; a different declaration is refused.
POOL_QUEUE_ARGS: dict[str, Any] = {"durable": True, "auto_delete": False}


@dataclass(frozen=True)
class BrokerAddress:
    host: str  # "host:port" as py-amqp takes it
    userid: str
    password: str
    virtual_host: str
    ssl: bool

    def __repr__(self) -> str:  # never show the password
        return f"BrokerAddress({self.host!r}, vhost={self.virtual_host!r}, ssl={self.ssl})"


def parse_broker_url(url: str) -> BrokerAddress:
    """Read an ``amqp://`` or ``amqps://`` URL as Celery and kombu do (``//`` and ``/`` are the vhost "/")."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps", "pyamqp"):
        raise ValueError(f"broker URL must start with amqp:// or amqps://, got {parts.scheme or url[:10]!r}")
    ssl = parts.scheme == "amqps"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return BrokerAddress(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or (5671 if ssl else 5672)}",
        userid=unquote(parts.username or "guest"), password=unquote(parts.password or "guest"),
        virtual_host=unquote(path) or "/", ssl=ssl,
    )


def connect(address: BrokerAddress, *, heartbeat: int = 0, timeout_s: float = 3.0, confirm_publish: bool = False,
            blocked_notifications: bool = True, name: str = "modeldeck") -> amqp.Connection:
    """Open a connection; heartbeat 0 for one that is read only while its owner waits on it.

    ``blocked_notifications=False``: py-amqp then skips the non-blocking read it makes before each publish to see
    whether the broker blocked the connection (it cost as much as the publish); a blocked broker still shows, as a
    write timeout.
    """
    conn = amqp.Connection(
        host=address.host, userid=address.userid, password=address.password, virtual_host=address.virtual_host,
        ssl=address.ssl, heartbeat=heartbeat, connect_timeout=timeout_s, write_timeout=10,
        confirm_publish=confirm_publish, client_properties={"connection_name": name},
    )
    if not blocked_notifications:
        conn.negotiate_capabilities = {**amqp.Connection.negotiate_capabilities, "connection.blocked": False}
    try:
        conn.connect()
    except Exception:
        close_quietly(conn)
        raise
    return conn


def close_quietly(conn: amqp.Connection | None) -> None:
    """Close a connection that may already be gone."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # already closed by the broker or the network
        try:
            conn.collect()
        except Exception:
            pass
