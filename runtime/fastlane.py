"""A lean Celery task strategy for synchronous predictions.

Celery's default strategy builds a ``Request`` per message, runs the task through its tracer (signals,
state bookkeeping, logging) and has the rpc result backend build and publish a result message with a
producer from a pool: about 2 ms of Python per prediction on a 2-core machine, several times the model's
own time. ``runtime.predict`` is a plain request/reply task with nothing to trace, so its strategy
(``Task.Strategy``, Celery's per-task hook for how the worker's consumer handles a message) does only
what the reply needs:

* on the consumer thread: decode the JSON body, drop a message already past its ``expires`` (its caller
  has given up), and hand the work to the worker's own thread pool;
* on a pool thread: run the prediction, publish a Celery-shaped result (``status``, ``result``,
  ``task_id``) to the message's ``reply_to`` with its ``correlation_id`` (on a publisher connection kept
  per thread), then acknowledge the message.

Acknowledging after the answer means a worker that dies holding a request (SIGKILL, the OOM killer, a
crash in native code) leaves it unacknowledged, and RabbitMQ hands it to another worker of the pool the
moment the dead worker's connection closes. That worker does not run it again (a request that kills its
worker must not take down the pool one worker after another): it answers at once with the error
``worker_lost``, which the API turns into a 503, instead of the caller waiting out its timeout.

The message still comes from the pool's queue through Celery's consumer, with its prefetch limit, so
queue depth, scaling and fair dispatch across workers are unchanged; other tasks use Celery's default.

Proven-fast models skip the pool thread (``_InlineGate``): handing a message to a pool thread and its
ack back to the consumer's loop costs two thread wake-ups, about 0.3 ms of a 2.5 ms answer on a 2-core
machine. A model whose format runs no code of its own (skops, ONNX) and whose last ``RUNS`` warm
predictions each took at most MODELDECK_WORKER_INLINE_MAX_MS is run on the consumer thread itself, for
at most as many rows as those runs had. The consumer takes no other message meanwhile, so the bound keeps
that pause to a few milliseconds; a run slower than the bound sends the model back to the pool to be proven
again (one ten times over it on the consumer thread, for good), and pickled, joblib and TorchScript models,
which may run arbitrary code, always run on the pool.

A run is slower than the bound when both its wall time and the worker process's CPU time meanwhile (all
threads, so a model's own thread pool counts) exceed it. A run whose wall time alone does (the process was
not scheduled: a busy or noisy machine) is not held against the model: it would have paused on the pool
too. Counting such pauses sent a proven model back to the pool for ``RUNS`` predictions after each one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

import orjson
import pika
from celery.worker.strategy import default as default_strategy

from runtime.predict import run_prediction
from runtime.state import WorkerState, get_state
from server.core.direct_reply import HEADER_ADDRESS, HEADER_KEY, DirectSender

logger = logging.getLogger(__name__)


class _Replies:
    """Answers to callers: straight to the API thread where the message names its listener (one connection per
    listener, shared by this worker's threads; see server/core/direct_reply.py), else or when that fails through
    the broker to ``reply_to``, on one pika publisher connection per thread (pika's are not thread-safe)."""

    def __init__(self, broker_url: str) -> None:
        self.direct = DirectSender()
        params = pika.URLParameters(broker_url)
        if params.virtual_host in ("", "/"):
            params.virtual_host = "/"
        # Publish-only: no heartbeats, since nothing reads this connection between replies.
        params.heartbeat = 0
        params.socket_timeout = 3
        params.connection_attempts = 1
        self._params = params
        self._local = threading.local()

    def answer(self, message: Any, correlation_id: str, body: bytes) -> None:
        """Send one reply to the caller of message, straight if it can be, else through the broker."""
        props = message.properties
        headers = message.headers or {}
        address = headers.get(HEADER_ADDRESS)
        if address and self.direct.send(address, headers.get(HEADER_KEY), correlation_id, body):
            return
        if props.get("reply_to"):
            self.publish(props["reply_to"], correlation_id, body)

    def publish(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        """Send one reply through the broker; reconnect once if the connection was lost meanwhile."""
        props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                     correlation_id=correlation_id, delivery_mode=1)
        for attempt in (1, 2):
            channel = getattr(self._local, "channel", None)
            try:
                if channel is None or channel.is_closed:
                    channel = pika.BlockingConnection(self._params).channel()
                    self._local.channel = channel
                channel.basic_publish(exchange="", routing_key=reply_to, body=body, properties=props)
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._local.channel = None
                if attempt == 2:
                    logger.warning("could not publish the reply %s: %s", correlation_id, exc)


@dataclass
class _Record:
    fast_runs: int = 0  # consecutive warm runs within the bound
    max_rows: int = 0  # the most rows among those runs
    banned: bool = False  # an inline run took BAN_FACTOR times the bound: never inline again


class _InlineGate:
    """Decide which predictions run on the consumer thread (see the module's docstring)."""

    RUNS = 20
    BAN_FACTOR = 10  # an inline run this many times over the bound is no pause of the process: never inline again
    FORMATS = ("skops", "onnx")  # formats that cannot carry code of their own

    def __init__(self, max_ms: float) -> None:
        self.max_ms = max_ms
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def allows(self, args: Any) -> bool:
        """Tell whether this prediction (the task's [spec, rows]) may run on the consumer thread."""
        if self.max_ms <= 0 or not isinstance(args, list) or len(args) != 2:
            return False
        spec, rows = args
        if not isinstance(spec, dict) or spec.get("format") not in self.FORMATS:
            return False
        record = self._records.get(spec.get("sha256", ""))
        return (record is not None and not record.banned and record.fast_runs >= self.RUNS
                and isinstance(rows, list) and len(rows) <= record.max_rows)

    def observe(self, spec: Any, rows: Any, outcome: dict[str, Any], inline: bool) -> None:
        """Count a finished prediction for or against running its model inline."""
        if self.max_ms <= 0 or not isinstance(spec, dict) or spec.get("format") not in self.FORMATS:
            return
        if not outcome.get("ok") or outcome.get("cold"):
            return  # a load's time or a failure says nothing about the model's speed
        with self._lock:
            record = self._records.setdefault(spec["sha256"], _Record())
            took = outcome.get("model_ms", self.max_ms + 1)
            if outcome.get("process_cpu_ms") is not None:
                took = min(took, outcome["process_cpu_ms"])
            if took <= self.max_ms:
                record.fast_runs += 1
                record.max_rows = max(record.max_rows, len(rows))
                return
            # Slower than the bound: proven again from zero, on the pool.
            record.fast_runs = 0
            record.max_rows = 0
            if inline and took > self.BAN_FACTOR * self.max_ms:
                record.banned = True
                logger.warning("model '%s' version %s took %.1f ms on the consumer thread (bound %.1f ms): "
                               "it runs on the pool from now on", spec.get("name"), spec.get("version"), took, self.max_ms)


def _expired(expires: Any) -> bool:
    if not expires:
        return False
    try:
        return dt.datetime.fromisoformat(expires) <= dt.datetime.now(dt.timezone.utc)
    except (TypeError, ValueError):
        return False


def worker_lost_reply(spec: Any, task_id: str) -> dict[str, Any]:
    """Return the answer to a prediction whose first worker died holding it."""
    label = (f"model '{spec.get('name')}' version {spec.get('version')}" if isinstance(spec, dict) else "the model")
    message = (f"{label}: the worker running this request stopped before answering (killed or crashed); the request "
               "was not run again, so that a request that kills its worker cannot take down the pool one worker "
               "after another; retry it if the worker's death had another cause")
    return {"status": "SUCCESS", "task_id": task_id,
            "result": {"ok": False, "error": {"code": "worker_lost", "message": message}}}


def _answer_lost(replies: _Replies, message: Any, ack: Any, args: list[Any], task_id: str) -> None:
    replies.answer(message, message.properties.get("correlation_id") or task_id,
                   orjson.dumps(worker_lost_reply(args[0] if args else None, task_id)))
    ack()


def _run(state: WorkerState, replies: _Replies, gate: _InlineGate, message: Any, ack: Any, args: list[Any],
         task_id: str, inline: bool = False) -> None:
    props = message.properties
    with state.lock:
        state.busy += 1
    try:
        outcome = run_prediction(state, args[0], args[1])
        outcome["lane"] = "inline" if inline else "pool"
        gate.observe(args[0], args[1], outcome, inline)
        reply = {"status": "SUCCESS", "result": outcome, "task_id": task_id}
    except Exception as exc:  # a bug of ours, not the model's (run_prediction reports those as data)
        logger.exception("prediction task %s failed", task_id)
        reply = {"status": "FAILURE", "result": {"exc_type": type(exc).__name__}, "task_id": task_id}
    finally:
        with state.lock:
            state.busy -= 1
    replies.answer(message, props.get("correlation_id") or task_id, orjson.dumps(reply))
    ack()  # bound to the consumer's ack_log_error arguments in strategy(); after the answer (see above)


def strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Any:
    """Return the message handler the worker's consumer calls for every ``runtime.predict`` message."""
    state = get_state()
    if not state.settings.worker_fast_lane:
        return default_strategy(task, app, consumer, **_)
    logger.info("runtime.predict messages take the fast lane")
    replies = _Replies(state.settings.broker_url)
    pool = consumer.pool
    errors = consumer.connection_errors
    gate = _InlineGate(state.settings.worker_inline_max_ms)

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
        headers = message.headers or {}
        task_id = headers.get("id", "")
        try:
            args = orjson.loads(message.body)[0] if body is None else body[0]
        except (orjson.JSONDecodeError, TypeError, IndexError, KeyError):
            logger.warning("rejected a malformed prediction message %s", task_id)
            reject(logger, errors, requeue=False)
            return
        if _expired(headers.get("expires")):
            ack(logger, errors)  # its caller has given up; answering would only be dropped
            return
        if (message.delivery_info or {}).get("redelivered"):
            # Its first worker took it and died before answering (see the module's docstring).
            logger.warning("prediction %s was redelivered: its first worker died holding it; answering worker_lost", task_id)
            pool.apply_async(_answer_lost, args=(replies, message, lambda: ack(logger, errors), args, task_id))
            return
        if gate.allows(args):
            # On the consumer's own thread the ack is written at once: through Celery's call_soon it would wait for
            # the end of this batch of deliveries, and the broker sends no more past the prefetch limit meanwhile.
            _run(state, replies, gate, message, lambda: message.ack_log_error(logger, errors), args, task_id, inline=True)
            return
        pool.apply_async(_run, args=(state, replies, gate, message, lambda: ack(logger, errors), args, task_id))

    return handle
