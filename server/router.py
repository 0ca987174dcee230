"""The request router's link to RabbitMQ: Celery-protocol messages out, replies in.

Synchronous calls (predictions) run on the request's own thread: each API thread keeps one
connection of its own with an exclusive reply queue, publishes the task and reads its reply on
that connection, so no other thread has to be woken on the way out or back (on a 2-core machine
each cross-thread hand-off cost about 0.1 ms). A late reply to a call that timed out arrives on
the same thread's queue and is dropped by its correlation id, never handed to another caller.

One I/O thread per API process owns a further connection for everything else: durable job
messages with publisher confirms, change events broadcast to every API process, and the
broker's state. While the broker is away, calls fail at once with 503 (a check of that thread's
connection state, no retries on the request thread); the I/O thread reconnects by itself, and
request threads open fresh connections once it is back.
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
import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from server.core.direct_reply import HEADER_ADDRESS, HEADER_KEY, ReplyListener
from server.core.errors import GatewayTimeoutError, UnavailableError

logger = logging.getLogger(__name__)

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
BROKER_DOWN = "the message broker is unavailable; the request was not sent, retry shortly"


_CALLER_IDLE_S = 120.0  # a thread's connection unused this long is reopened rather than trusted


class _Caller:
    """One request thread's own connection, reply queue, reply listener and the replies read from them.

    The connection (py-amqp: a publish is one socket write, and its socket can be polled together with the
    listener's) has no heartbeats: the thread reads it only while a call of its own waits, so the broker
    would close a heartbeating connection of an idle thread. One unused for _CALLER_IDLE_S is reopened
    before use instead, and the I/O thread's reconnects mark every older one stale.
    """

    def __init__(self, params: pika.URLParameters, generation: int, reply_host: str | None) -> None:
        self.generation = generation
        self.used = time.monotonic()
        self.conn = amqp.Connection(
            host=f"{params.host}:{params.port}", userid=params.credentials.username,
            password=params.credentials.password, virtual_host=params.virtual_host,
            ssl=params.ssl_options is not None, heartbeat=0, connect_timeout=3, write_timeout=10,
        )
        # Without the broker's blocked notifications py-amqp skips a non-blocking read before every publish (it
        # cost as much as the publish itself); a blocked broker still shows, as a write timeout (503) or a 504.
        self.conn.negotiate_capabilities = {**amqp.Connection.negotiate_capabilities, "connection.blocked": False}
        self.listener: ReplyListener | None = None
        try:
            self.conn.connect()
            self.channel = self.conn.channel()
            self.reply_queue = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True).queue
            self.replies: dict[str, dict[str, Any]] = {}
            self.consumer_tag = self.channel.basic_consume(self.reply_queue, callback=self._on_reply, no_ack=True)
            self.declared: set[str] = set()
            if reply_host is not None:
                try:
                    self.listener = ReplyListener(reply_host)
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
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            logger.warning("dropped a reply that is not JSON (correlation id %s)", correlation_id)
            return
        if isinstance(message, dict) and message.get("status") in _READY_STATES:
            self.replies[correlation_id] = message

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
        try:
            self.conn.close()
        except Exception:  # already closed by the broker or the network
            pass


class Router:
    """Send tasks by name to pool queues and collect synchronous replies."""

    def __init__(self, broker_url: str, queue_prefix: str, reply_host: str | None = None) -> None:
        self._reply_host = reply_host  # where workers answer request threads straight (None: through the broker)
        self._params = pika.URLParameters(broker_url)
        if self._params.virtual_host in ("", "/"):
            # Celery and kombu read "amqp://host//" as the default vhost "/"; pika reads it as "".
            self._params.virtual_host = "/"
        self._params.heartbeat = 30
        self._params.socket_timeout = 3
        self._params.blocked_connection_timeout = 10
        self._params.connection_attempts = 1
        self._caller_params = pika.URLParameters(broker_url)
        self._caller_params.virtual_host = self._params.virtual_host
        self._caller_params.heartbeat = 0
        self._caller_params.socket_timeout = 3
        self._caller_params.blocked_connection_timeout = 10
        self._caller_params.connection_attempts = 1
        self._prefix = queue_prefix
        self._local = threading.local()  # each request thread's _Caller
        self._callers: set[_Caller] = set()  # all of them, closed by stop()
        self._callers_lock = threading.Lock()
        self._generation = 0  # counts the I/O thread's connections: a caller from an earlier one is stale
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._confirm_channel: BlockingChannel | None = None
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
        """Stop the I/O thread and close every connection (the request threads' too: no call may be running)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        with self._callers_lock:
            callers, self._callers = self._callers, set()
        for caller in callers:
            caller.close()

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
        self._generation += 1
        self._connected.set()
        logger.info("connected to the broker")

    def _disconnect(self) -> None:
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already closed by the broker or the network
                pass

    # -- I/O thread callbacks --------------------------------------------------------------
    def _declare(self, channel: BlockingChannel, queue: str) -> None:
        # Same arguments as Celery's Queue(name): durable, no extra arguments.
        if queue not in self._declared:
            channel.queue_declare(queue=queue, durable=True)
            self._declared.add(queue)

    def _on_event(self, _ch: Any, _method: Any, _props: pika.BasicProperties, body: bytes) -> None:
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        for handler in self._event_handlers:
            handler(event)

    # -- request side ----------------------------------------------------------------------
    def _message(self, task: str, args: list[Any], task_id: str, sync: bool, expires_s: float | None) -> tuple[bytes, dict[str, Any]]:
        """Return a Celery protocol-2 task message's JSON body and headers."""
        expires = None
        if expires_s is not None:
            expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_s)).isoformat()
        headers = {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": expires,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": "", "kwargsrepr": "", "origin": "modeldeck-api",
            "ignore_result": not sync,
        }
        return orjson.dumps([args, {}, _EMBED]), headers

    def _schedule(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        try:
            conn.add_callback_threadsafe(fn)
        except Exception as exc:
            raise UnavailableError(BROKER_DOWN) from exc

    def _caller(self) -> _Caller:
        """Return this thread's connection, opening it on first use or after the broker came back."""
        caller: _Caller | None = getattr(self._local, "caller", None)
        now = time.monotonic()
        if (caller is not None and caller.generation == self._generation and caller.conn.connected
                and now - caller.used < _CALLER_IDLE_S):
            caller.used = now
            return caller
        if caller is not None:
            self._drop_caller(caller)
        try:
            caller = _Caller(self._caller_params, self._generation, self._reply_host)
        except Exception as exc:  # the broker went away between the state check and here
            raise UnavailableError(BROKER_DOWN) from exc
        with self._callers_lock:
            self._callers.add(caller)
        self._local.caller = caller
        return caller

    def _drop_caller(self, caller: _Caller) -> None:
        caller.close()
        self._local.caller = None
        with self._callers_lock:
            self._callers.discard(caller)

    def call(self, pool: str, task: str, args: list[Any], timeout_s: float, request_id: str) -> dict[str, Any]:
        """Send a task to a pool's queue and wait for its result, at most timeout_s, on this thread."""
        if not self._connected.is_set():
            raise UnavailableError(BROKER_DOWN)
        caller = self._caller()
        task_id = request_id + "." + uuid.uuid4().hex[:8]
        body, headers = self._message(task, args, task_id, sync=True, expires_s=timeout_s)
        if caller.listener is not None:
            headers[HEADER_ADDRESS] = caller.listener.address
            headers[HEADER_KEY] = caller.listener.key
        message = amqp.Message(body, content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
                               reply_to=caller.reply_queue, delivery_mode=1, priority=0, application_headers=headers)
        queue = self._prefix + pool
        try:
            if queue not in caller.declared:
                # Same arguments as Celery's Queue(name): durable, no extra arguments.
                caller.channel.queue_declare(queue=queue, durable=True, auto_delete=False)
                caller.declared.add(queue)
            caller.channel.basic_publish(message, exchange="", routing_key=queue)
        except Exception as exc:
            self._drop_caller(caller)
            raise UnavailableError(BROKER_DOWN) from exc
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
        assert reply is not None
        return reply

    def send(self, pool: str, task: str, args: list[Any], task_id: str, timeout_s: float = 5.0) -> None:
        """Publish a durable task with publisher confirms and return once the broker has it."""
        done = threading.Event()
        failure: list[Exception] = []
        body, headers = self._message(task, args, task_id, sync=False, expires_s=None)
        props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
                                     delivery_mode=2, priority=0, headers=headers)
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
