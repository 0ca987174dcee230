"""One failed-sign-in limiter for every API process: failures counted in the repository, per client address.

Two real API processes on a repository of the test's own, behind one (trusted) reverse proxy: the client address
is the one X-Forwarded-For names, as MODELDECK_TRUSTED_PROXIES resolves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from conftest import Proc, Stack, start_api
from isolation import admin_of, isolated_stack

LIMIT, WINDOW_S = 4, 3.0


@pytest.fixture(scope="module")
def two_apis(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    with isolated_stack(stack, tmp_path_factory.mktemp("limiter")) as (own, _):
        procs: list[Proc] = []
        urls: list[str] = []
        try:
            for _ in range(2):
                proc, url = start_api(own, MODELDECK_AUTH_FAILURE_LIMIT=str(LIMIT),
                                      MODELDECK_AUTH_FAILURE_WINDOW_S=str(WINDOW_S), MODELDECK_TRUSTED_PROXIES="1")
                procs.append(proc)
                urls.append(url)
            yield urls, admin_of(own, urls[0]).key or ""
        finally:
            for proc in procs:
                proc.stop()


def me(url: str, client: str, key: str) -> requests.Response:
    """GET /api/v1/me as the proxy forwards it for a client address."""
    return requests.get(url + "/api/v1/me", timeout=10,
                        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": client})


def test_failures_in_two_processes_add_up_and_block_the_address_in_both(two_apis: tuple[list[str], str]) -> None:
    (a, b), admin_key = two_apis
    client = "198.51.100.7"
    assert [me(url, client, "mdk_guess").status_code for url in (a, b, a, b)] == [401] * LIMIT
    time.sleep(1.1)  # the other process reads the blocks at least once a second
    for url in (a, b):
        limited = me(url, client, "mdk_guess")
        assert limited.status_code == 429
        assert limited.json()["error"]["message"].startswith(f"too many failed sign-ins from {client}; retry in ")
        assert 1 <= int(limited.headers["Retry-After"]) <= WINDOW_S
        # While blocked, a right key from that address waits too: guessing must not go on in parallel.
        assert me(url, client, admin_key).status_code == 429
    # Another client behind the same proxy is not affected: the limit is per resolved address, not per proxy.
    assert me(a, "198.51.100.8", admin_key).status_code == 200
    assert me(b, "198.51.100.8", "mdk_guess").status_code == 401
    # Each address expires on its own: a window after its last failure, it signs in again in both processes.
    time.sleep(WINDOW_S + 1.1)
    assert [me(url, client, admin_key).status_code for url in (a, b)] == [200, 200]


def test_only_failed_authentications_count(two_apis: tuple[list[str], str]) -> None:
    (a, b), admin_key = two_apis
    client = "198.51.100.9"
    for _ in range(3 * LIMIT):
        assert me(a if _ % 2 else b, client, admin_key).status_code == 200
    assert [me(url, client, "mdk_guess").status_code for url in (a, b, a)] == [401] * (LIMIT - 1)
    time.sleep(1.1)
    assert me(b, client, admin_key).status_code == 200  # three failures, whatever the successes: not blocked


