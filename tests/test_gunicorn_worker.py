"""The API's gunicorn worker class (server/http/gunicorn_worker.py) on a real server: kept-alive connections and the linger."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from server.http.gunicorn_worker import internals_missing


def _request(path: str, request_id: str, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n{auth}\r\n".encode()


def _read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """Read count complete responses (headers, body) from the socket, in order."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 10
    while len(out) < count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end]
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(buf) >= head_end + 4 + length:
                out.append((head, buf[head_end + 4:head_end + 4 + length]))
                buf = buf[head_end + 4 + length:]
                continue
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(out)} of {count} responses arrived: {buf[:300]!r}")
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {len(out)} of {count} responses"
        buf += chunk
    return out


def test_one_connection_serves_pipelined_back_to_back_and_idle_requests_in_order(api_url: str, admin_key: str) -> None:
    host, port = api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # Two requests in one write: the second is already buffered when the first is answered.
        sock.sendall(_request("/healthz", "pipe-1") + _request("/api/v1/me", "pipe-2", admin_key))
        # One right after its answer (served on the same thread), one after the connection went idle
        # (back through gunicorn's poller), then an authenticated one again.
        answers = _read_responses(sock, 2)
        sock.sendall(_request("/healthz", "pipe-3"))
        answers += _read_responses(sock, 1)
        time.sleep(0.2)
        sock.sendall(_request("/api/v1/me", "pipe-4", admin_key))
        answers += _read_responses(sock, 1)
    ids = [next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-request-id:")) for head, _ in answers]
    assert ids == ["pipe-1", "pipe-2", "pipe-3", "pipe-4"]
    assert all(head.startswith(b"HTTP/1.1 200") for head, _ in answers), [head[:40] for head, _ in answers]
    assert b'"role":"admin"' in answers[1][1].replace(b" ", b"") and b'"role":"admin"' in answers[3][1].replace(b" ", b"")


def _lingered(api_url: str, admin_key: str) -> float:
    text = requests.get(api_url + "/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "modeldeck_http_lingered_requests":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    pytest.fail("/metrics has no modeldeck_http_lingered_requests")


def test_a_kept_alive_connections_next_request_is_served_by_the_lingering_thread(api_url: str, admin_key: str) -> None:
    """The worker class leans on gthread's internals (gunicorn is pinned); if the trick stops taking effect, every
    request takes gthread's main-thread path again and this count stays flat."""
    assert internals_missing() == []
    host, port = api_url.removeprefix("http://").split(":")
    before = _lingered(api_url, admin_key)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for i in range(20):
            sock.sendall(_request("/healthz", f"linger-{i}"))  # sent as soon as the last answer is read
            assert _read_responses(sock, 1)[0][0].startswith(b"HTTP/1.1 200")
    served = _lingered(api_url, admin_key) - before
    assert served >= 10, f"only {served:.0f} of 19 follow-up requests were served by the lingering thread"


def test_gunicorns_response_takes_its_date_header_from_the_workers_once_a_second_formatter() -> None:
    """What the worker installs at start (install_date_cache) must reach the Date header that gunicorn's own
    Response writes: if gunicorn stopped calling util.http_date() there, the cache would do nothing."""
    from types import SimpleNamespace

    from gunicorn import util
    from gunicorn.http.wsgi import Response

    from server.http import gunicorn_worker

    previous = gunicorn_worker.install_date_cache()
    saved = gunicorn_worker._date
    try:
        assert util.http_date is gunicorn_worker._http_date
        for _ in range(3):  # a second may turn between setting the cache and reading the header
            gunicorn_worker._date = (int(time.time()), "Cached, 01 Jan 2000 00:00:00 GMT")
            resp = Response(SimpleNamespace(version=(1, 1), should_close=lambda: False, method="GET"), None, None)
            resp.status, resp.response_length = "200 OK", 0
            if int(time.time()) == gunicorn_worker._date[0]:
                assert "Date: Cached, 01 Jan 2000 00:00:00 GMT\r\n" in resp.default_headers()
                break
        else:
            pytest.fail("the clock turned a second three times in a row")
        # Past the second it was cached for, the value is formatted anew, as gunicorn would.
        gunicorn_worker._date = (0, "stale")
        fresh = gunicorn_worker._http_date()
        assert fresh != "stale" and fresh.endswith(" GMT") and gunicorn_worker._date[0] > 0
    finally:
        gunicorn_worker._date = saved
        util.http_date = previous  # this test process is no gunicorn worker
