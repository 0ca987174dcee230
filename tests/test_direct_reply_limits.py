"""Reply listeners are bounded: a connection must present the key within the hello timeout, and only a few may wait to.

Real loopback sockets against server/core/direct_reply.py's listener, read on this test's thread as an API thread
reads it while a call waits.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from server.core.direct_reply import MAGIC, DirectSender, ReplyLimits, ReplyListener, listener_config
from server.core.settings import Settings


def connect(listener: ReplyListener) -> socket.socket:
    host, _, port = listener.address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(0.05)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the listener has closed this connection (EOF or reset); False while it is held open."""
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def serve(listener: ReplyListener, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listener.wait(0.05)


def test_a_connection_that_does_not_present_the_key_within_the_timeout_is_closed() -> None:
    listener = ReplyListener("127.0.0.1", ReplyLimits(hello_timeout_s=1.0, max_pending=4))
    silent, partial = connect(listener), connect(listener)
    partial.sendall(MAGIC + b"0123")  # the start of a hello, never finished
    try:
        started = time.monotonic()
        serve(listener, 0.8)
        assert not closed_by_peer(silent) and not closed_by_peer(partial)  # still within its second
        while not closed_by_peer(silent) and time.monotonic() - started < 3:
            listener.wait(0.05)
        took = time.monotonic() - started
        assert 0.95 <= took < 1.5, took
        assert closed_by_peer(partial)
        assert listener.refused == 2
    finally:
        silent.close()
        partial.close()
        listener.close()


def test_a_long_wait_still_closes_a_silent_connection_on_time() -> None:
    # One wait() of 5 s (a slow prediction) must not hold a silent connection past its deadline.
    listener = ReplyListener("127.0.0.1", ReplyLimits(hello_timeout_s=0.5, max_pending=4))
    silent = connect(listener)
    try:
        started = time.monotonic()
        while not closed_by_peer(silent) and time.monotonic() - started < 5:
            listener.wait(5.0)
        assert time.monotonic() - started < 1.2
    finally:
        silent.close()
        listener.close()


def test_only_a_few_connections_may_wait_to_present_the_key_and_a_worker_still_gets_through() -> None:
    listener = ReplyListener("127.0.0.1", ReplyLimits(hello_timeout_s=1.0, max_pending=3))
    idle = [connect(listener) for _ in range(5)]
    try:
        serve(listener, 0.3)
        held = [s for s in idle if not closed_by_peer(s)]
        assert len(held) == 3 and listener.refused == 2
        # A worker that connects while the cap is full is refused and sends through the broker (False) ...
        sender = DirectSender()
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.append(sender.send(listener.address, listener.key, "c1", b"{}")))
        worker.start()
        serve(listener, 0.3)
        worker.join(5)
        assert result == [False]
        # ... and once the silent ones are past their deadline, the next worker's answer comes straight.
        serve(listener, 1.0)
        assert all(closed_by_peer(s) for s in held)
        fresh = DirectSender()
        got: list[tuple[str, bytes]] = []
        worker = threading.Thread(target=lambda: result.append(fresh.send(listener.address, listener.key, "c2", b"{}")))
        worker.start()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += listener.wait(0.1)[0]
        worker.join(5)
        assert result[-1] is True and got == [("c2", b"{}")]
        sender.close()
        fresh.close()
    finally:
        for s in idle:
            s.close()
        listener.close()


def test_trusted_connections_do_not_count_against_the_cap_and_survive_the_end_of_a_call() -> None:
    listener = ReplyListener("127.0.0.1", ReplyLimits(hello_timeout_s=1.0, max_pending=1))
    sender = DirectSender()
    try:
        done: list[bool] = []
        worker = threading.Thread(target=lambda: done.append(sender.send(listener.address, listener.key, "a", b"1")))
        worker.start()
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += listener.wait(0.1)[0]
        worker.join(5)
        assert got == [("a", b"1")]
        silent = connect(listener)
        serve(listener, 0.2)
        assert not closed_by_peer(silent)  # the one allowed pending connection, beside the trusted one
        listener.close_pending()  # what the router does when a call ends
        assert closed_by_peer(silent)
        serve(listener, 1.2)  # past any hello deadline: the trusted connection stays
        later: list[tuple[str, bytes]] = []
        worker = threading.Thread(target=lambda: done.append(sender.send(listener.address, listener.key, "b", b"2")))
        worker.start()
        deadline = time.monotonic() + 5
        while not later and time.monotonic() < deadline:
            later += listener.wait(0.1)[0]
        worker.join(5)
        assert done == [True, True] and later == [("b", b"2")]
        silent.close()
    finally:
        sender.close()
        listener.close()


@pytest.mark.parametrize("url, allowed, expected", [
    ("amqps://u:p@broker:5671//", False, None),
    ("amqps://u:p@broker:5671//", True, "127.0.0.1"),
    ("amqp://u:p@127.0.0.1:5672//", False, "127.0.0.1"),
])
def test_direct_replies_are_not_used_beside_an_amqps_broker_unless_allowed(url: str, allowed: bool,
                                                                           expected: str | None) -> None:
    settings = Settings(broker_url=url, direct_replies_without_tls=allowed, direct_reply_hello_timeout_s=0.7,
                        direct_reply_max_pending=2)
    host, limits = listener_config(settings)
    assert host == expected and limits == ReplyLimits(0.7, 2)
