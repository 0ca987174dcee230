"""The worker's handler for synchronous predictions: a Celery task strategy for ``runtime.predict``.

Celery's default strategy builds a Request per message, runs the task through its tracer and publishes the
result through the rpc backend; for a request/reply prediction that is several times the model's own time.
This handler does only what the reply needs: on the consumer thread it decodes the request (server/core/wire.py)
and drops one already past its ``expires``; a pool thread runs it (runtime/inference.py) and answers the
caller, straight to its listener where the message names one (server/core/direct_reply.py), else to its
``reply_to`` queue, then acknowledges the message.

Acknowledging after the answer means a worker that dies holding a request leaves it unacknowledged, and RabbitMQ
hands it to another worker of the pool at once. That worker does not run it again (a request that kills its
worker must not take down the pool one worker after another): it answers ``worker_lost``, a 503 for the caller.

Proven-fast models skip the pool thread (``InlineGate``): a model whose format runs no code of its own (skops,
ONNX) and whose last ``RUNS`` warm predictions each took at most MODELDECK_WORKER_INLINE_MAX_MS runs on the
consumer thread, for at most as many rows as those runs had, saving two thread wake-ups per request.

It leans on Celery's internals (the strategy signature, ``consumer.pool``, ``message.ack_log_error``): celery and
kombu are pinned to the tested minor versions, and tests/test_predict_handler.py fails if this handler stops
answering. Measurements: docs/performance.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import amqp
import orjson
from celery.worker.strategy import default as default_strategy

from runtime.inference import run_prediction
from runtime.state import WorkerState, get_state
from server.core import wire
from server.core.broker import close_quietly, connect, parse_broker_url
from server.core.direct_reply import DirectSender

logger = logging.getLogger(__name__)


class Replies:
    """Answers to callers: straight to the API thread's listener where the message names one, else (or when that
    fails) through the broker to ``reply_to``, on one publisher connection per thread (py-amqp's are not
    thread-safe)."""

    def __init__(self, broker_url: str) -> None:
        self.direct = DirectSender()
        self._address = parse_broker_url(broker_url)
        self._local = threading.local()

    def answer(self, message: Any, task_id: str, outcome: wire.PredictOutcome | None) -> None:
        """Send one reply to the caller of message, straight if it can be, else through the broker."""
        correlation_id = message.properties.get("correlation_id") or task_id
        body = wire.encode_reply(task_id, outcome)
        headers = message.headers or {}
        address = headers.get(wire.HEADER_REPLY_ADDRESS)
        if address and self.direct.send(address, headers.get(wire.HEADER_REPLY_KEY), correlation_id, body):
            return
        if message.properties.get("reply_to"):
            self.publish(message.properties["reply_to"], correlation_id, body)

    def publish(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        """Send one reply through the broker; reconnect once if the connection was lost meanwhile."""
        reply = amqp.Message(body, content_type="application/json", content_encoding="utf-8",
                             correlation_id=correlation_id, delivery_mode=1)
        for attempt in (1, 2):
            channel = getattr(self._local, "channel", None)
            try:
                if channel is None or not channel.is_open or not channel.connection.connected:
                    # Publish-only: no heartbeats, since nothing reads this connection between replies.
                    channel = connect(self._address, blocked_notifications=False, name="modeldeck-worker-replies").channel()
                    self._local.channel = channel
                channel.basic_publish(reply, exchange="", routing_key=reply_to)
                return
            except (amqp.exceptions.AMQPError, OSError) as exc:
                if channel is not None:
                    close_quietly(channel.connection)
                self._local.channel = None
                if attempt == 2:
                    logger.warning("could not publish the reply %s: %s", correlation_id, exc)


@dataclass
class _Record:
    fast_runs: int = 0  # consecutive warm runs within the bound
    max_rows: int = 0  # the most rows among those runs
    banned: bool = False  # an inline run took BAN_FACTOR times the bound: never inline again


class InlineGate:
    """Decide which predictions run on the consumer thread (see the module's docstring).

    A run is slower than the bound when both its wall time and the process's CPU time meanwhile exceed it: a run
    whose wall time alone does (the process was not scheduled) is not the model's doing.
    """

    RUNS = 20
    BAN_FACTOR = 10  # an inline run this many times over the bound is no pause of the process: never inline again
    FORMATS = ("skops", "onnx")  # formats that cannot carry code of their own

    def __init__(self, max_ms: float) -> None:
        self.max_ms = max_ms
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def allows(self, request: wire.PredictRequest) -> bool:
        """Tell whether this prediction may run on the consumer thread."""
        if self.max_ms <= 0 or request.model.get("format") not in self.FORMATS:
            return False
        record = self._records.get(request.model["sha256"])
        return (record is not None and not record.banned and record.fast_runs >= self.RUNS
                and len(request.rows) <= record.max_rows)

    def observe(self, request: wire.PredictRequest, outcome: wire.PredictOutcome, inline: bool) -> None:
        """Count a finished prediction for or against running its model inline."""
        if self.max_ms <= 0 or request.model.get("format") not in self.FORMATS:
            return
        if not outcome.ok or outcome.cold:
            return  # a load's time or a failure says nothing about the model's speed
        with self._lock:
            record = self._records.setdefault(request.model["sha256"], _Record())
            took = outcome.model_ms
            if outcome.process_cpu_ms is not None:
                took = min(took, outcome.process_cpu_ms)
            if took <= self.max_ms:
                record.fast_runs += 1
                record.max_rows = max(record.max_rows, len(request.rows))
                return
            # Slower than the bound: proven again from zero, on the pool.
            record.fast_runs = 0
            record.max_rows = 0
            if inline and took > self.BAN_FACTOR * self.max_ms:
                record.banned = True
                logger.warning("%s took %.1f ms on the consumer thread (bound %.1f ms): it runs on the pool from now on",
                               request.label, took, self.max_ms)


def _expired(expires: Any) -> bool:
    if not expires:
        return False
    try:
        return dt.datetime.fromisoformat(expires) <= dt.datetime.now(dt.timezone.utc)
    except (TypeError, ValueError):
        return False


def _answer(state: WorkerState, replies: Replies, gate: InlineGate, message: Any, ack: Callable[[], None],
            request: wire.PredictRequest, task_id: str, lane: wire.Lane) -> None:
    """Run one prediction, answer its caller, then acknowledge the message."""
    try:
        outcome: wire.PredictOutcome | None = run_prediction(state, request, lane)
        assert outcome is not None
        gate.observe(request, outcome, inline=lane == "inline")
    except Exception:  # a bug of ours, not the model's (run_prediction reports those as data)
        logger.exception("prediction task %s failed", task_id)
        outcome = None
    replies.answer(message, task_id, outcome)
    ack()


def _answer_lost(replies: Replies, message: Any, ack: Callable[[], None], request: wire.PredictRequest | None,
                 task_id: str) -> None:
    replies.answer(message, task_id, wire.worker_lost_outcome(request))
    ack()


def predict_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Return the message handler the worker's consumer calls for every ``runtime.predict`` message."""
    state = get_state()
    if not state.settings.worker_fast_lane:
        return default_strategy(task, app, consumer, **kwargs)
    logger.info("runtime.predict messages take the fast lane")
    replies = Replies(state.settings.broker_url)
    pool = consumer.pool
    errors = consumer.connection_errors
    gate = InlineGate(state.settings.worker_inline_max_ms)

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        headers = message.headers or {}
        task_id = headers.get("id", "")
        try:
            args = orjson.loads(message.body)[0] if body is None else body[0]
            request = wire.PredictRequest.from_args(args)
        except (orjson.JSONDecodeError, TypeError, IndexError, KeyError, wire.WireError):
            logger.warning("rejected a malformed prediction message %s", task_id)
            reject(logger, errors, requeue=False)
            return
        if _expired(headers.get("expires")):
            ack(logger, errors)  # its caller has given up; answering would only be dropped
            return
        if (message.delivery_info or {}).get("redelivered"):
            logger.warning("prediction %s was redelivered: its first worker died holding it; answering worker_lost", task_id)
            pool.apply_async(_answer_lost, args=(replies, message, lambda: ack(logger, errors), request, task_id))
            return
        if gate.allows(request):
            # On the consumer's own thread the ack is written at once: through Celery's call_soon it would wait for
            # the end of this batch of deliveries, and the broker sends no more past the prefetch limit meanwhile.
            _answer(state, replies, gate, message, lambda: message.ack_log_error(logger, errors), request, task_id, "inline")
            return
        pool.apply_async(_answer, args=(state, replies, gate, message, lambda: ack(logger, errors), request, task_id, "pool"))

    return handle
