"""Synchronous replies from a worker straight to the waiting API thread over TCP, not back through RabbitMQ.

The request still travels through the pool's queue (fair dispatch, prefetch, queue depth for scaling); only its
answer skips the broker, saving the two process wake-ups of a hop through it (docs/performance.md). Each API
request thread listens on a socket of its own and names it in the task message with a random key (the headers
in server/core/wire.py); the worker that runs the task opens one connection to that address (kept for the next
answers), proves it knows the key, and writes the answer there.

Wire format: the worker's first bytes on a connection are ``MAGIC`` and the caller's key (32 ASCII hex digits),
which the listener acknowledges with one byte (``ACK``) before the worker sends anything else, or closes the
connection; each answer then is a 4-byte big-endian length and that many bytes: the correlation id, a newline and
the JSON body. An API thread reads these only while one of its calls waits; a late answer to a call that timed
out is read at the thread's next call and dropped by its correlation id, as on the broker path.

Whatever fails on the worker's side (no route to the API host, a refused or broken connection, a full send buffer
for a second) sends that answer through the broker's reply queue instead, which the API thread reads at the same
time; an address that could not be reached is not tried again for ``RETRY_AFTER_S``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from server.core.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

MAGIC = b"MDR1"
ACK = b"\x01"  # the listener's answer to a hello with its key
MAX_FRAME = 256 * 1024 * 1024  # larger than any reply the broker would take (RabbitMQ's default limit is 128 MiB)
_LENGTH = struct.Struct("!I")
_KEY_LEN = 32
_READ_SIZE = 64 * 1024  # per read; a larger answer takes several


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ReplyLimits:
    """How long a connection may take to present the key, and how many may be waiting to, per listener."""

    hello_timeout_s: float = 1.0
    max_pending: int = 4


def listener_config(settings: Settings) -> tuple[str | None, ReplyLimits]:
    """Return the address reply listeners bind (None: answers go through the broker) and their limits."""
    limits = ReplyLimits(settings.direct_reply_hello_timeout_s, settings.direct_reply_max_pending)
    if not settings.direct_replies:
        return None, limits
    if settings.broker_url.lower().startswith("amqps:") and not settings.direct_replies_without_tls:
        # Answers would cross the network in cleartext beside a broker link the deployment chose to encrypt.
        logger.warning("direct replies are off because the broker is amqps (TLS) and direct replies are cleartext; "
                       "set MODELDECK_DIRECT_REPLIES_WITHOUT_TLS=true to use them anyway")
        return None, limits
    return resolve_host(settings.direct_reply_host), limits


def resolve_host(setting: str) -> str:
    """Return the address workers reach this process at (the setting, or this host's own for ``auto``),
    checked by listening on it once; SettingsError names the variable if that fails."""
    try:
        host = socket.gethostbyname(socket.gethostname()) if setting == "auto" else setting
        ReplyListener(host).close()
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"MODELDECK_DIRECT_REPLY_HOST={setting!r}: cannot listen on it ({exc}); expected an address of this "
            "host that workers can reach, 'auto' for this host's own address, or MODELDECK_DIRECT_REPLIES=false"
        ) from exc
    return host


class _Inbound:
    __slots__ = ("sock", "buf", "trusted", "since")

    def __init__(self, sock: socket.socket, since: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.trusted = False
        self.since = since  # when it was accepted: it must present the key within the hello timeout


class ReplyListener:
    """One API thread's listening socket and the worker connections it accepted (used by that thread only).

    A connection that has not presented the key within ``limits.hello_timeout_s`` is closed, and at most
    ``limits.max_pending`` such connections are held at once (more are closed as they are accepted), so a client
    that can reach the port cannot hold this process's descriptors. The listener runs only while its thread's
    call waits: between calls, new connections wait in the kernel's backlog, and those already accepted but
    without the key are closed when the call ends (``close_pending``).
    """

    def __init__(self, host: str, limits: ReplyLimits = ReplyLimits()) -> None:
        self.limits = limits
        self.refused = 0  # connections closed for lack of the key in time, or over the cap (tests read it)
        self.key = secrets.token_hex(_KEY_LEN // 2)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family, backlog=64)
        self._listener.setblocking(False)
        self.address = format_address(host, self._listener.getsockname()[1])
        self._poll = select.poll()
        self._poll.register(self._listener.fileno(), select.POLLIN)
        self._inbound: dict[int, _Inbound] = {}
        self._watched: int | None = None
        # Reads land in one reused buffer: a fresh large bytes per recv() costs an mmap and munmap per answer.
        self._scratch = bytearray(_READ_SIZE)
        self._scratch_view = memoryview(self._scratch)

    def watch(self, fd: int) -> None:
        """Also wake wait() when fd (the thread's broker connection) has data."""
        self._poll.register(fd, select.POLLIN)
        self._watched = fd

    def wait(self, timeout_s: float) -> tuple[list[tuple[str, bytes]], bool]:
        """Wait up to timeout_s; return the answers that arrived and whether the watched fd is readable."""
        answers: list[tuple[str, bytes]] = []
        watched_ready = False
        first_deadline = self._expire(time.monotonic())
        if first_deadline is not None:
            # Wake for the hello deadline too; the caller waits again for what is left of its own timeout.
            timeout_s = min(timeout_s, max(0.0, first_deadline - time.monotonic()))
        for fd, _ in self._poll.poll(max(0, int(timeout_s * 1000) + 1)):
            if fd == self._watched:
                watched_ready = True
            elif fd == self._listener.fileno():
                self._accept()
            else:
                self._read(fd, answers)
        self._expire(time.monotonic())
        return answers, watched_ready

    def _expire(self, now: float) -> float | None:
        """Close connections past the hello deadline; return the earliest deadline of those left, if any."""
        first: float | None = None
        for fd, conn in list(self._inbound.items()):
            if conn.trusted:
                continue
            deadline = conn.since + self.limits.hello_timeout_s
            if now >= deadline:
                logger.info("closed a reply connection that did not present the key within %g s", self.limits.hello_timeout_s)
                self.refused += 1
                self._drop(fd)
            elif first is None or deadline < first:
                first = deadline
        return first

    def close_pending(self) -> None:
        """Close every connection that has not presented the key (the call it might answer is over)."""
        for fd, conn in list(self._inbound.items()):
            if not conn.trusted:
                self.refused += 1
                self._drop(fd)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("could not accept a worker's reply connection: %s", exc)
                return
            if sum(1 for c in self._inbound.values() if not c.trusted) >= self.limits.max_pending:
                # Over the cap: a worker refused here sends its answer through the broker instead.
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self._inbound[sock.fileno()] = _Inbound(sock, time.monotonic())
            self._poll.register(sock.fileno(), select.POLLIN)

    def _read(self, fd: int, answers: list[tuple[str, bytes]]) -> None:
        conn = self._inbound.get(fd)
        if conn is None:
            return
        try:
            size = conn.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self._drop(fd)
            return
        buf = conn.buf
        buf += self._scratch_view[:size]
        if not conn.trusted:
            if len(buf) < len(MAGIC) + _KEY_LEN:
                return
            hello = bytes(buf[:len(MAGIC) + _KEY_LEN])
            if not hmac.compare_digest(hello, MAGIC + self.key.encode()):
                logger.warning("closed a reply connection that did not present this caller's key")
                self._drop(fd)
                return
            conn.trusted = True
            del buf[:len(MAGIC) + _KEY_LEN]
            try:
                conn.sock.send(ACK)
            except OSError:
                self._drop(fd)
                return
        while len(buf) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buf)
            if size > MAX_FRAME:
                logger.warning("closed a reply connection that announced a %d-byte answer", size)
                self._drop(fd)
                return
            end = _LENGTH.size + size
            if len(buf) < end:
                return
            frame = bytes(buf[_LENGTH.size:end])
            del buf[:end]
            cid, sep, body = frame.partition(b"\n")
            if sep:
                answers.append((cid.decode("utf-8", "replace"), body))

    def _drop(self, fd: int) -> None:
        conn = self._inbound.pop(fd, None)
        if conn is not None:
            self._poll.unregister(fd)
            conn.sock.close()

    def close(self) -> None:
        for fd in list(self._inbound):
            self._drop(fd)
        self._listener.close()


class _Outbound:
    __slots__ = ("sock", "lock", "poll")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        # The API never writes on this connection: anything to read means its listener closed it.
        self.poll = select.poll()
        self.poll.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)


class DirectSender:
    """A worker's connections to API threads' listeners, shared by its threads (one lock per connection)."""

    RETRY_AFTER_S = 60.0  # an address that could not be reached is not tried again for this long
    SEND_TIMEOUT_S = 1.0  # a connection that takes longer to take an answer is closed; the broker carries it
    MAX_CONNECTIONS = 512  # the least recently used are closed beyond this (each API thread is one)

    def __init__(self) -> None:
        self._conns: OrderedDict[tuple[str, str], _Outbound] = OrderedDict()
        self._unreachable: dict[str, float] = {}
        self._lock = threading.Lock()

    def send(self, address: str, key: str, correlation_id: str, body: bytes) -> bool:
        """Write one answer to the caller at address; False if it must go through the broker instead."""
        if not isinstance(address, str) or not isinstance(key, str) or len(key) != _KEY_LEN:
            return False
        frame = correlation_id.encode() + b"\n" + body
        if len(frame) > MAX_FRAME:
            return False
        conn = self._connection(address, key)
        if conn is None:
            return False
        with conn.lock:
            # A send on a connection its listener closed would vanish without an error: check first.
            if conn.poll.poll(0):
                self._forget(address, key, conn, ConnectionResetError("closed by the API"))
                return False
            try:
                conn.sock.sendall(_LENGTH.pack(len(frame)) + frame)
                return True
            except OSError as exc:  # timeout included
                self._forget(address, key, conn, exc)
                return False

    def _connection(self, address: str, key: str) -> _Outbound | None:
        try:
            host, port = parse_address(address)
        except ValueError:
            return None
        with self._lock:
            conn = self._conns.get((address, key))
            if conn is not None:
                self._conns.move_to_end((address, key))
                return conn
            now = time.monotonic()
            if now < self._unreachable.get(address, 0.0) or now < self._unreachable.get(host, 0.0):
                return None
        try:
            sock = socket.create_connection((host, port), timeout=self.SEND_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(MAGIC + key.encode("ascii"))
            # Wait for the listener to accept the key: an answer written to some other listener at that address
            # (another host's, where the address means something else; a later thread's on a reused port) would
            # be dropped there while this side believed it delivered.
            if sock.recv(1) != ACK:
                sock.close()
                raise ConnectionRefusedError("the listener there does not hold this caller's key")
        except (OSError, UnicodeError) as exc:
            # Refused: that listener is gone (its thread's connection was closed). Anything else (no route, a
            # timeout): the host cannot be reached from here, and waiting on it again for each thread would
            # cost every first answer the connect timeout.
            banned = address if isinstance(exc, ConnectionRefusedError) else host
            logger.warning("cannot send answers straight to %s (%s); they go through the broker for %.0f s",
                           banned, exc, self.RETRY_AFTER_S)
            with self._lock:
                now = time.monotonic()
                if len(self._unreachable) > 1024:
                    self._unreachable = {k: t for k, t in self._unreachable.items() if t > now}
                self._unreachable[banned] = now + self.RETRY_AFTER_S
            return None
        conn = _Outbound(sock)
        with self._lock:
            self._conns[(address, key)] = conn
            while len(self._conns) > self.MAX_CONNECTIONS:
                _, old = self._conns.popitem(last=False)
                old.sock.close()
        return conn

    def _forget(self, address: str, key: str, conn: _Outbound, exc: Exception) -> None:
        logger.info("reply connection to %s closed (%s); this answer goes through the broker", address, exc)
        conn.sock.close()
        with self._lock:
            if self._conns.get((address, key)) is conn:
                del self._conns[(address, key)]

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), OrderedDict()
        for conn in conns:
            conn.sock.close()
