"""The request router's link to RabbitMQ: Celery-protocol messages out, replies in, one I/O thread.

One long-lived connection per API process, owned by one thread. Request threads hand it
publishes through ``add_callback_threadsafe`` and wait on their own event for the reply,
which the thread matches by correlation id. While the broker is away, calls fail at once
with 503 (a connection-state check, no retries on the request thread); the thread
reconnects by itself, declares a fresh reply queue and fails every call left waiting.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from server.core.errors import GatewayTimeoutError, UnavailableError

logger = logging.getLogger(__name__)

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
BROKER_DOWN = "the message broker is unavailable; the request was not sent, retry shortly"


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None
    error: Exception | None = None


class Router:
    """Send tasks by name to pool queues and collect synchronous replies."""

    def __init__(self, broker_url: str, queue_prefix: str) -> None:
        self._params = pika.URLParameters(broker_url)
        if self._params.virtual_host in ("", "/"):
            # Celery and kombu read "amqp://host//" as the default vhost "/"; pika reads it as "".
            self._params.virtual_host = "/"
        self._params.heartbeat = 30
        self._params.socket_timeout = 3
        self._params.blocked_connection_timeout = 10
        self._params.connection_attempts = 1
        self._prefix = queue_prefix
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._confirm_channel: BlockingChannel | None = None
        self._reply_queue = ""
        self._declared: set[str] = set()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._events_exchange = queue_prefix + "events"
        self._event_handlers: list[Callable[[dict[str, Any]], None]] = []
        self._connect_handlers: list[Callable[[], None]] = []

    def on_event(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call handler (on the I/O thread) for every broadcast event, this process's own included."""
        self._event_handlers.append(handler)

    def on_connect(self, handler: Callable[[], None]) -> None:
        """Call handler each time the connection is (re)established, before calls are accepted."""
        self._connect_handlers.append(handler)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait_s: float = 3.0) -> None:
        """Start the I/O thread and wait briefly for the first connection."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modeldeck-router", daemon=True)
            self._thread.start()
        self._connected.wait(wait_s)

    def stop(self) -> None:
        """Stop the I/O thread and close the connection."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)

    @property
    def connected(self) -> bool:
        """Tell whether the broker connection is up right now."""
        return self._connected.is_set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._connect()
                backoff = 0.1
                assert self._conn is not None
                while not self._stopping.is_set():
                    self._conn.process_data_events(time_limit=0.5)
            except Exception as exc:  # any failure of the connection means reconnect
                if not self._stopping.is_set():
                    logger.warning("broker connection lost: %s; reconnecting", exc)
            finally:
                self._disconnect()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _connect(self) -> None:
        conn = pika.BlockingConnection(self._params)
        channel = conn.channel()
        result = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self._reply_queue = result.method.queue
        channel.basic_consume(self._reply_queue, self._on_reply, auto_ack=True)
        channel.exchange_declare(self._events_exchange, exchange_type="fanout", durable=True)
        events = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(events, self._events_exchange)
        channel.basic_consume(events, self._on_event, auto_ack=True)
        for handler in self._connect_handlers:
            handler()
        confirm = conn.channel()
        confirm.confirm_delivery()
        self._conn, self._channel, self._confirm_channel = conn, channel, confirm
        self._declared.clear()
        self._connected.set()
        logger.info("connected to the broker; replies on %s", self._reply_queue)

    def _disconnect(self) -> None:
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already closed by the broker or the network
                pass
        with self._lock:
            waiting, self._pending = self._pending, {}
        for pending in waiting.values():
            pending.error = UnavailableError("the connection to the message broker was lost while waiting for the reply; retry")
            pending.event.set()

    # -- I/O thread callbacks --------------------------------------------------------------
    def _declare(self, channel: BlockingChannel, queue: str) -> None:
        # Same arguments as Celery's Queue(name): durable, no extra arguments.
        if queue not in self._declared:
            channel.queue_declare(queue=queue, durable=True)
            self._declared.add(queue)

    def _publish(self, queue: str, body: bytes, props: pika.BasicProperties, task_id: str) -> None:
        try:
            assert self._channel is not None
            self._declare(self._channel, queue)
            self._channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
        except Exception as exc:
            with self._lock:
                pending = self._pending.pop(task_id, None)
            if pending:
                pending.error = UnavailableError(BROKER_DOWN)
                pending.event.set()
            raise exc

    def _on_event(self, _ch: Any, _method: Any, _props: pika.BasicProperties, body: bytes) -> None:
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        for handler in self._event_handlers:
            handler(event)

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            logger.warning("dropped a reply that is not JSON (correlation id %s)", props.correlation_id)
            return
        if message.get("status") not in _READY_STATES:
            return
        with self._lock:
            pending = self._pending.pop(props.correlation_id, None)
        if pending is None:
            # The caller gave up (timeout); its late result is dropped, never handed to anyone else.
            return
        pending.reply = message
        pending.event.set()

    # -- request side ----------------------------------------------------------------------
    def _message(
        self, task: str, args: list[Any], task_id: str, reply: bool, expires_s: float | None
    ) -> tuple[bytes, pika.BasicProperties]:
        expires = None
        if expires_s is not None:
            expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_s)).isoformat()
        headers = {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": expires,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": "", "kwargsrepr": "", "origin": "modeldeck-api",
            "ignore_result": not reply,
        }
        props = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            reply_to=self._reply_queue if reply else None,
            delivery_mode=1 if reply else 2,
            priority=0,
            headers=headers,
        )
        return orjson.dumps([args, {}, _EMBED]), props

    def _schedule(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        try:
            conn.add_callback_threadsafe(fn)
        except Exception as exc:
            raise UnavailableError(BROKER_DOWN) from exc

    def call(self, pool: str, task: str, args: list[Any], timeout_s: float, request_id: str) -> dict[str, Any]:
        """Send a task to a pool's queue and wait for its result, at most timeout_s."""
        if not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        task_id = request_id + "." + uuid.uuid4().hex[:8]
        pending = _Pending()
        body, props = self._message(task, args, task_id, reply=True, expires_s=timeout_s)
        with self._lock:
            self._pending[task_id] = pending
        try:
            self._schedule(functools.partial(self._publish, self._prefix + pool, body, props, task_id))
        except UnavailableError:
            with self._lock:
                self._pending.pop(task_id, None)
            raise
        if not pending.event.wait(timeout_s):
            with self._lock:
                self._pending.pop(task_id, None)
            raise GatewayTimeoutError(
                f"no answer from pool '{pool}' within {timeout_s:g} s (request {request_id}); the late result will be dropped",
                {"request_id": request_id, "pool": pool},
            )
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    def send(self, pool: str, task: str, args: list[Any], task_id: str, timeout_s: float = 5.0) -> None:
        """Publish a durable task with publisher confirms and return once the broker has it."""
        done = threading.Event()
        failure: list[Exception] = []
        body, props = self._message(task, args, task_id, reply=False, expires_s=None)
        queue = self._prefix + pool

        def publish() -> None:
            try:
                assert self._confirm_channel is not None
                self._declare(self._confirm_channel, queue)
                self._confirm_channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props, mandatory=True)
            except Exception as exc:  # reported to the waiting request thread below
                failure.append(exc)
            finally:
                done.set()

        self._schedule(publish)
        if not done.wait(timeout_s) or failure:
            raise UnavailableError("the message broker did not accept the job; nothing was queued, retry shortly")


    def broadcast(self, event: dict[str, Any], timeout_s: float = 2.0) -> bool:
        """Publish a change event to every API process; return whether the broker took it."""
        done = threading.Event()
        ok: list[bool] = []

        def publish() -> None:
            try:
                assert self._channel is not None
                self._channel.basic_publish(exchange=self._events_exchange, routing_key="", body=orjson.dumps(event))
                ok.append(True)
            finally:
                done.set()

        try:
            self._schedule(publish)
        except UnavailableError:
            return False
        return done.wait(timeout_s) and bool(ok)


def wait_connected(router: Router, timeout_s: float) -> bool:
    """Wait until the router is connected; return whether it is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if router.connected:
            return True
        time.sleep(0.05)
    return router.connected
