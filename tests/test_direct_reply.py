"""Answers from workers straight to the waiting API thread (server/core/direct_reply.py), and the broker fallback.

The first tests use the listener and the sender over real loopback sockets; the others run real predictions
through RabbitMQ and a real worker, with the broker's reply path or the direct one taken away.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest

from conftest import Client, Proc, Stack, unique
from server.core.direct_reply import MAGIC, DirectSender, ReplyListener, resolve_host
from server.core.errors import GatewayTimeoutError
from server.core.settings import SettingsError
from server.core import wire
from server.transport.router import Router


def _collect(listener: ReplyListener, want: int, timeout_s: float = 5.0) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        answers, _ = listener.wait(0.2)
        got += answers
    return got


def test_answers_reach_the_listener_whole_and_in_order_and_a_closed_listener_sends_them_to_the_broker() -> None:
    listener = ReplyListener("127.0.0.1")
    sender = DirectSender()
    big = orjson.dumps({"status": "SUCCESS", "result": {"predictions": list(range(400_000))}})  # ~3 MB: many reads
    sent: list[bool] = []

    def send_three() -> None:  # a worker's thread; the listener is read on this test's thread, as by an API thread
        sent.append(sender.send(listener.address, listener.key, "req-1.aa", b'{"status":"SUCCESS","result":1}'))
        sent.append(sender.send(listener.address, listener.key, "req-2.bb", big))
        sent.append(sender.send(listener.address, listener.key, "req-3.cc", b"{}"))

    worker = threading.Thread(target=send_three)
    worker.start()
    try:
        assert _collect(listener, 3) == [("req-1.aa", b'{"status":"SUCCESS","result":1}'), ("req-2.bb", big),
                                         ("req-3.cc", b"{}")]
        worker.join(5)
        assert sent == [True, True, True]
    finally:
        listener.close()
    # The listener is gone: the sender notices the closed connection and hands the answer back for the broker.
    assert not sender.send(listener.address, listener.key, "req-4.dd", b"{}")
    assert not sender.send(listener.address, listener.key, "req-5.ee", b"{}")  # refused, and not retried for a while
    sender.close()


def test_a_connection_without_the_callers_key_is_closed_and_its_answers_are_ignored() -> None:
    listener = ReplyListener("127.0.0.1")
    try:
        intruder = socket.create_connection(("127.0.0.1", int(listener.address.rsplit(":", 1)[1])), timeout=5)
        frame = b"req-1.aa\n" + b'{"status":"SUCCESS","result":"forged"}'
        intruder.sendall(MAGIC + b"0" * 32 + struct.pack("!I", len(frame)) + frame)
        assert _collect(listener, 1, timeout_s=1.0) == []
        assert intruder.recv(1) == b""  # closed by the listener
        intruder.close()
        # A sender with the wrong key (another listener at that address, say) is not acknowledged: it knows the
        # answer was not taken and hands it back for the broker; the listener delivers nothing.
        sender = DirectSender()
        outcome: list[bool] = []
        thread = threading.Thread(target=lambda: outcome.append(sender.send(listener.address, "f" * 32, "req-2.bb", b"{}")))
        thread.start()
        assert _collect(listener, 1, timeout_s=1.5) == []
        thread.join(5)
        assert outcome == [False]
        sender.close()
    finally:
        listener.close()


def test_an_address_the_api_cannot_listen_on_is_refused_at_start_with_the_variable_named() -> None:
    with pytest.raises(SettingsError, match=r"MODELDECK_DIRECT_REPLY_HOST='192\.0\.2\.1': cannot listen on it"):
        resolve_host("192.0.2.1")  # TEST-NET-1: never an address of this machine


@contextmanager
def started_router(stack: Stack, reply_host: str | None) -> Iterator[Router]:
    """A router of this test's own on the shared stack's broker (direct replies to reply_host, else none)."""
    router = Router(stack.settings.broker_url, stack.settings.queue_prefix, reply_host)
    router.start()
    try:
        yield router
    finally:
        router.stop()


@pytest.fixture(scope="module")
def iris_request(stack: Stack, worker: Proc, tight_api: Client, iris_skops: bytes) -> wire.PredictRequest:
    name = unique("direct")
    assert tight_api.upload(name, iris_skops).status_code == 201
    return wire.PredictRequest(wire.model_ref(stack.db.versions.find_one({"_id": f"{name}:1"})), [[5.1, 3.5, 1.4, 0.2]])


def test_with_the_broker_reply_queue_unread_a_prediction_is_still_answered_straight_to_the_caller(
        stack: Stack, iris_request: wire.PredictRequest) -> None:
    with started_router(stack, "127.0.0.1") as router:
        assert router.call("cpu", iris_request, 10.0, "direct-0").outcome.ok
        caller = router._caller()[0]
        caller.channel.basic_cancel(caller.consumer_tag)  # answers through the broker now stay in its queue, unread
        for i in range(1, 4):
            reply = router.call("cpu", iris_request, 10.0, f"direct-{i}")
            assert reply.task_id.startswith(f"direct-{i}.") and reply.outcome.predictions == [0], reply


def test_a_kept_broker_connection_that_died_unnoticed_is_replaced_once_and_the_call_answered(
        stack: Stack, iris_request: wire.PredictRequest) -> None:
    with started_router(stack, None) as router:
        assert router.call("cpu", iris_request, 10.0, "kept-0").outcome.ok
        dead = router._caller()[0]
        # As a broker restart between two calls of this thread leaves it: the socket is gone, py-amqp does not know.
        dead.conn.sock.shutdown(socket.SHUT_RDWR)
        reply = router.call("cpu", iris_request, 10.0, "kept-1")
        assert reply.outcome.ok and reply.outcome.predictions == [0], reply
        assert router._caller()[0] is not dead


def test_without_direct_replies_an_unread_reply_queue_times_the_call_out(
        stack: Stack, iris_request: wire.PredictRequest) -> None:
    """The control for the test above: it passes only because the answer skipped the broker."""
    with started_router(stack, None) as router:
        assert router.call("cpu", iris_request, 10.0, "broker-0").outcome.ok
        caller = router._caller()[0]
        caller.channel.basic_cancel(caller.consumer_tag)
        with pytest.raises(GatewayTimeoutError):
            router.call("cpu", iris_request, 2.0, "broker-1")


def test_a_worker_that_cannot_reach_the_callers_listener_answers_through_the_broker(
        stack: Stack, iris_request: wire.PredictRequest) -> None:
    with started_router(stack, "127.0.0.1") as router:
        caller = router._caller()[0]
        assert caller.listener is not None
        # Name a port nobody listens on, as a firewall between worker and API would make it: the worker's connect
        # fails and the answer takes the broker's reply queue, which the caller reads at the same time.
        caller.listener.address = f"127.0.0.1:{_closed_port()}"
        for i in range(3):
            started = time.monotonic()
            reply = router.call("cpu", iris_request, 10.0, f"fallback-{i}")
            assert reply.task_id.startswith(f"fallback-{i}.") and reply.outcome.predictions == [0], reply
            assert time.monotonic() - started < 2.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
