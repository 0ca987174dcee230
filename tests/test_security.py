"""Hardening: failed sign-ins are rate limited, responses carry security headers, CORS is closed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import Client, Stack, start_api
from isolation import admin_of, isolated_stack


@pytest.fixture(scope="module")
def strict_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, str]]:
    # A repository of its own: failed sign-ins are shared by every API process on a repository, and this
    # API's limit of 3 must not block 127.0.0.1 for the session's other API processes.
    with isolated_stack(stack, tmp_path_factory.mktemp("strict")) as (own, _):
        proc, url = start_api(own, MODELDECK_AUTH_FAILURE_LIMIT="3", MODELDECK_AUTH_FAILURE_WINDOW_S="2")
        yield own, url, admin_of(own, url).key or ""
        proc.stop()


def test_failed_sign_ins_are_limited_per_address_then_forgiven(strict_api: tuple[Stack, str, str]) -> None:
    stack, url, admin_key = strict_api
    wrong = Client(url, "mdk_guess")
    assert [wrong.get("/api/v1/me").status_code for _ in range(3)] == [401, 401, 401]
    limited = wrong.get("/api/v1/me")
    assert limited.status_code == 429
    assert limited.json()["error"]["message"].startswith("too many failed sign-ins from 127.0.0.1; retry in ")
    assert int(limited.headers["Retry-After"]) >= 1
    # While limited, even a right key from that address waits: guessing must not continue in parallel.
    assert Client(url, admin_key).get("/api/v1/me").status_code == 429
    assert stack.db.audit.count_documents({"outcome": "denied", "status": 429}) >= 1
    time.sleep(2.2)
    assert Client(url, admin_key).get("/api/v1/me").status_code == 200


def test_responses_carry_security_headers(admin: Client) -> None:
    headers = admin.get("/api/v1/me").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_cors_is_closed_by_default(admin: Client) -> None:
    preflight = admin.request("OPTIONS", "/api/v1/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    simple = admin.get("/api/v1/me", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in simple.headers


def test_errors_reveal_nothing_internal(admin: Client) -> None:
    resp = admin.get("/api/v1/no-such-thing")
    assert resp.status_code == 404
    body = resp.json()["error"]
    assert body["code"] == "not_found" and "Traceback" not in resp.text
