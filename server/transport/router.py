"""The request router's link to RabbitMQ: Celery-protocol task messages out, prediction replies in.

Synchronous calls (predictions) run on the request's own thread: each API thread keeps one connection of its
own with an exclusive reply queue and a direct-reply listener, publishes the task and reads the reply itself, so
no other thread is woken on the way out or back. A late reply to a call that timed out arrives on the same
thread's queue and is dropped by its correlation id, never handed to another caller.

One I/O thread per API process owns a connection that receives change events broadcast to every API process and
tells whether the broker is up; durable job messages and broadcasts go out on one publisher connection with
publisher confirms. While the broker is away, calls fail at once with 503 (a check of the I/O thread's connection
state, no retries on the request thread); the I/O thread reconnects by itself, and request threads and the
publisher open fresh connections once it is back. A thread's kept connection that died unnoticed while the I/O
thread says the broker is up is replaced once before the call answers 503.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
import uuid
from typing import Any, Callable

import amqp
import orjson

from server.core import wire
from server.core.broker import POOL_QUEUE_ARGS, BrokerAddress, close_quietly, connect, parse_broker_url
from server.core.direct_reply import ReplyLimits, ReplyListener
from server.core.errors import GatewayTimeoutError, UnavailableError

logger = logging.getLogger(__name__)

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
BROKER_DOWN = "the message broker is unavailable; the request was not sent, retry shortly"
_CALLER_IDLE_S = 120.0  # a thread's connection unused this long is reopened rather than trusted


def task_message(task: str, args: list[Any], task_id: str, sync: bool, expires_s: float | None) -> tuple[bytes, dict[str, Any]]:
    """Return a Celery protocol-2 task message's JSON body and headers."""
    expires = None
    if expires_s is not None:
        expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_s)).isoformat()
    # Only what Celery's consumer and Request read without a default (lang, task, id), the expiry, and whether a
    # result is wanted: py-amqp encodes every header on each publish (41 against 22 µs here with the usual 16).
    headers: dict[str, Any] = {"lang": "py", "task": task, "id": task_id, "expires": expires}
    if not sync:
        headers["ignore_result"] = True
    return orjson.dumps([args, {}, _EMBED]), headers


class _Caller:
    """One request thread's own connection, reply queue, reply listener and the replies read from them.

    The connection has no heartbeats: the thread reads it only while a call of its own waits, so the broker
    would close a heartbeating connection of an idle thread. One unused for _CALLER_IDLE_S is reopened before
    use instead, and the I/O thread's reconnects mark every older one stale.
    """

    def __init__(self, address: BrokerAddress, generation: int, reply_host: str | None,
                 reply_limits: ReplyLimits = ReplyLimits()) -> None:
        self.generation = generation
        self.used = time.monotonic()
        self.listener: ReplyListener | None = None
        self.conn = connect(address, blocked_notifications=False, name="modeldeck-api-caller")
        try:
            self.channel = self.conn.channel()
            self.reply_queue = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True).queue
            self.replies: dict[str, wire.Reply] = {}
            self.consumer_tag = self.channel.basic_consume(self.reply_queue, callback=self._on_reply, no_ack=True)
            self.declared: set[str] = set()
            if reply_host is not None:
                try:
                    self.listener = ReplyListener(reply_host, reply_limits)
                except OSError as exc:  # out of file descriptors, say: this thread's answers take the broker
                    logger.warning("no reply listener on %s (%s); answers come through the broker", reply_host, exc)
                else:
                    self.listener.watch(self.conn.sock.fileno())
        except Exception:
            self.close()
            raise

    def _on_reply(self, message: amqp.Message) -> None:
        self._take(message.properties.get("correlation_id", ""), message.body)

    def _take(self, correlation_id: str, body: bytes) -> None:
        reply = wire.decode_reply(body)
        if reply is None:
            logger.warning("dropped a reply that is not a finished task's (correlation id %s)", correlation_id)
            return
        self.replies[correlation_id] = reply

    def wait(self, timeout_s: float) -> None:
        """Read whatever replies arrive within timeout_s (on either path)."""
        if self.listener is None:
            self._drain(timeout_s)
            return
        answers, broker_ready = self.listener.wait(timeout_s)
        for correlation_id, body in answers:
            self._take(correlation_id, body)
        if broker_ready:
            self._drain(1.0)  # a message has begun to arrive: read it whole

    def _drain(self, timeout_s: float) -> None:
        try:
            self.conn.drain_events(timeout=timeout_s)
        except socket.timeout:
            pass

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        close_quietly(self.conn)


class Router:
    """Send tasks by name to pool queues and collect synchronous replies."""

    def __init__(self, broker_url: str, queue_prefix: str, reply_host: str | None = None,
                 reply_limits: ReplyLimits = ReplyLimits()) -> None:
        self._address = parse_broker_url(broker_url)
        self._reply_host = reply_host  # where workers answer request threads straight (None: through the broker)
        self._reply_limits = reply_limits
        self._prefix = queue_prefix
        self._local = threading.local()  # each request thread's _Caller
        self._callers: set[_Caller] = set()  # all of them, closed by stop()
        self._callers_lock = threading.Lock()
        self._generation = 0  # counts the I/O thread's connections: a connection from an earlier one is stale
        self._conn: amqp.Connection | None = None
        self._publisher: tuple[int, amqp.Connection, amqp.Channel, set[str]] | None = None
        self._publish_lock = threading.Lock()
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
        """Stop the I/O thread and close every connection (the request threads' too: no call may be running)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        with self._callers_lock:
            callers, self._callers = self._callers, set()
        for caller in callers:
            caller.close()
        with self._publish_lock:
            if self._publisher is not None:
                close_quietly(self._publisher[1])
                self._publisher = None

    @property
    def connected(self) -> bool:
        """Tell whether the broker connection is up right now."""
        return self._connected.is_set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = self._connect()
                backoff = 0.1
                while not self._stopping.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except socket.timeout:
                        pass
                    conn.heartbeat_tick()
            except Exception as exc:  # any failure of the connection means reconnect
                if not self._stopping.is_set():
                    logger.warning("broker connection lost: %s; reconnecting", exc)
            finally:
                self._connected.clear()
                conn_, self._conn = self._conn, None
                close_quietly(conn_)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _connect(self) -> amqp.Connection:
        conn = connect(self._address, heartbeat=30, name="modeldeck-api-events")
        self._conn = conn
        channel = conn.channel()
        channel.exchange_declare(self._events_exchange, "fanout", durable=True, auto_delete=False)
        events = channel.queue_declare(queue="", exclusive=True, auto_delete=True).queue
        channel.queue_bind(events, self._events_exchange)
        channel.basic_consume(events, callback=self._on_event, no_ack=True)
        for handler in self._connect_handlers:
            handler()
        self._generation += 1
        self._connected.set()
        logger.info("connected to the broker")
        return conn

    def _on_event(self, message: amqp.Message) -> None:
        try:
            event = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        for handler in self._event_handlers:
            handler(event)

    # -- request side ----------------------------------------------------------------------
    def _caller(self) -> tuple[_Caller, bool]:
        """Return this thread's connection and whether it was kept from an earlier call; open it on first use or
        after the broker came back."""
        caller: _Caller | None = getattr(self._local, "caller", None)
        now = time.monotonic()
        if (caller is not None and caller.generation == self._generation and caller.conn.connected
                and now - caller.used < _CALLER_IDLE_S):
            caller.used = now
            return caller, True
        if caller is not None:
            self._drop_caller(caller)
        try:
            caller = _Caller(self._address, self._generation, self._reply_host, self._reply_limits)
        except Exception as exc:  # the broker went away between the state check and here
            logger.warning("could not open this thread's broker connection: %r", exc)
            raise UnavailableError(BROKER_DOWN) from exc
        with self._callers_lock:
            self._callers.add(caller)
        self._local.caller = caller
        return caller, False

    def _drop_caller(self, caller: _Caller) -> None:
        caller.close()
        self._local.caller = None
        with self._callers_lock:
            self._callers.discard(caller)

    def _send_call(self, caller: _Caller, queue: str, body: bytes, headers: dict[str, Any], task_id: str) -> None:
        """Publish a prediction on the thread's connection, replies to its queue or its listener."""
        if caller.listener is not None:
            headers[wire.HEADER_REPLY_ADDRESS] = caller.listener.address
            headers[wire.HEADER_REPLY_KEY] = caller.listener.key
        message = amqp.Message(body, content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
                               reply_to=caller.reply_queue, delivery_mode=1, priority=0, application_headers=headers)
        if queue not in caller.declared:
            caller.channel.queue_declare(queue=queue, **POOL_QUEUE_ARGS)
            caller.declared.add(queue)
        caller.channel.basic_publish(message, exchange="", routing_key=queue)

    def call(self, pool: str, request: wire.PredictRequest, timeout_s: float, request_id: str) -> wire.Reply:
        """Send a prediction to a pool's queue and wait for its reply, at most timeout_s, on this thread."""
        if not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        caller, kept = self._caller()
        task_id = request_id + "." + uuid.uuid4().hex[:8]
        body, headers = task_message(wire.PREDICT_TASK, request.to_args(), task_id, sync=True, expires_s=timeout_s)
        queue = self._prefix + pool
        try:
            self._send_call(caller, queue, body, headers, task_id)
        except Exception as exc:
            logger.warning("could not send to queue %s on this thread's broker connection: %r", queue, exc)
            self._drop_caller(caller)
            if not kept or not self._connected.is_set():
                raise UnavailableError(BROKER_DOWN) from exc
            # A kept connection that died unnoticed (the broker restarted between two calls of this thread) while
            # the I/O thread says the broker is up: one fresh connection, then 503.
            caller, _ = self._caller()
            try:
                self._send_call(caller, queue, body, headers, task_id)
            except Exception as exc2:
                logger.warning("could not send to queue %s on a fresh broker connection: %r", queue, exc2)
                self._drop_caller(caller)
                raise UnavailableError(BROKER_DOWN) from exc2
        deadline = time.monotonic() + timeout_s
        replies = caller.replies
        try:
            while task_id not in replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayTimeoutError(
                        f"no answer from pool '{pool}' within {timeout_s:g} s (request {request_id}); the late result will be dropped",
                        {"request_id": request_id, "pool": pool},
                    )
                caller.wait(left)
        except GatewayTimeoutError:
            raise
        except Exception as exc:  # the connection died while waiting
            self._drop_caller(caller)
            raise UnavailableError("the connection to the message broker was lost while waiting for the reply; retry") from exc
        finally:
            reply = replies.pop(task_id, None)
            replies.clear()  # late replies to earlier calls of this thread: their callers have given up
            if caller.listener is not None:
                caller.listener.close_pending()  # nothing unauthenticated outlives the call
        assert reply is not None
        return reply

    def _publish(self, message: amqp.Message, exchange: str, routing_key: str, declare: str | None,
                 timeout_s: float) -> None:
        """Publish with a publisher confirm on the shared publisher connection; reopen it once if it went stale."""
        with self._publish_lock:
            for attempt in (1, 2):
                publisher = self._publisher
                fresh = publisher is None or publisher[0] != self._generation or not publisher[1].connected
                if fresh:
                    if publisher is not None:
                        close_quietly(publisher[1])
                    conn = connect(self._address, confirm_publish=True, name="modeldeck-api-publisher")
                    publisher = self._publisher = (self._generation, conn, conn.channel(), set())
                assert publisher is not None
                _, conn, channel, declared = publisher
                try:
                    if declare is not None and declare not in declared:
                        channel.queue_declare(queue=declare, **POOL_QUEUE_ARGS)
                        declared.add(declare)
                    channel.basic_publish(message, exchange=exchange, routing_key=routing_key, confirm_timeout=timeout_s)
                    return
                except Exception:
                    close_quietly(conn)
                    self._publisher = None
                    if fresh or attempt == 2:
                        raise

    def send(self, pool: str, task: str, args: list[Any], task_id: str, timeout_s: float = 5.0) -> None:
        """Publish a durable task with a publisher confirm and return once the broker has it."""
        if not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        body, headers = task_message(task, args, task_id, sync=False, expires_s=None)
        message = amqp.Message(body, content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
                               delivery_mode=2, priority=0, application_headers=headers)
        queue = self._prefix + pool
        try:
            self._publish(message, "", queue, queue, timeout_s)
        except Exception as exc:
            logger.warning("could not queue task %s: %s", task_id, exc)
            raise UnavailableError("the message broker did not accept the job; nothing was queued, retry shortly") from exc

    def broadcast(self, event: dict[str, Any], timeout_s: float = 2.0) -> bool:
        """Publish a change event to every API process; return whether the broker took it."""
        if not self._connected.is_set():
            return False
        try:
            self._publish(amqp.Message(orjson.dumps(event)), self._events_exchange, "", None, timeout_s)
        except Exception as exc:
            logger.warning("could not broadcast an event: %s", exc)
            return False
        return True


def wait_connected(router: Router, timeout_s: float) -> bool:
    """Wait until the router is connected; return whether it is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if router.connected:
            return True
        time.sleep(0.05)
    return router.connected
