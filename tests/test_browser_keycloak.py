"""Keycloak sign-in to the console in a real browser: st.login → the realm's login form → back with a token."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, expect, sync_playwright

from conftest import Client, Proc, Stack, free_port, start_api, unique, wait_for
from test_browser import CHROMIUM, FLAGS, shot


@dataclass
class Urls:
    console: str
    api: str


@pytest.fixture(scope="module")
def kc_console(stack: Stack, worker: Proc, oidc: Any) -> Iterator[Urls]:
    """An API that accepts the realm's tokens and a console that signs in through it (python -m console)."""
    api, api_url = start_api(stack, MODELDECK_KEYCLOAK_URL=oidc.url)
    port = free_port()
    log = stack.tmp / f"console-kc-{port}.log"
    proc = Proc([sys.executable, "-m", "console"], {
        **stack.env, "MODELDECK_CONSOLE_API_URL": api_url, "MODELDECK_CONSOLE_PORT": str(port),
        "MODELDECK_CONSOLE_KEYCLOAK_REALM_URL": oidc.issuer}, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(url + "/_stcore/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, 60, "console", log)
    yield Urls(console=url, api=api_url)
    proc.stop()
    api.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def sign_in(browser: Browser, console: str, oidc: Any, user: str, password: str | None = None) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(console)
    page.get_by_role("button", name="Sign in with Keycloak").click()
    page.wait_for_url(f"{oidc.issuer}/protocol/openid-connect/auth*", timeout=30000)
    page.locator("#username").fill(user)
    page.locator("#password").fill(password or oidc.passwords[user])
    page.get_by_role("button", name="Sign In").click()
    return page


@pytest.mark.parametrize("user, role, offered, hidden", [
    ("anna", "analyst", ["Try a model", "Monitoring"], ["Models", "Runtimes", "Audit trail", "API keys"]),
    ("olga", "operator", ["Models", "Runtimes", "Audit trail"], ["API keys"]),
])
def test_keycloak_users_sign_in_and_see_their_roles_pages(browser: Browser, kc_console: Urls, oidc: Any, user: str,
                                                          role: str, offered: list[str], hidden: list[str],
                                                          iris_skops: bytes) -> None:
    if user == "olga":  # something of hers to show: a model uploaded with her Keycloak token
        olga = Client(kc_console.api, oidc.password_token("olga"))
        assert olga.upload(unique("kc-iris"), iris_skops).status_code == 201
    page = sign_in(browser, kc_console.console, oidc, user)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
    expect(page.get_by_text(f"keycloak:{user}")).to_be_visible()
    expect(page.get_by_text(f"role: {role}")).to_be_visible()
    for title in offered:
        expect(page.get_by_role("link", name=title)).to_be_visible()
    for title in hidden:
        expect(page.get_by_role("link", name=title)).to_have_count(0)
    # The pages call the API with the user's Keycloak access token: the overview shows the API's own readiness.
    expect(page.get_by_text("ready").first).to_be_visible()
    if user == "olga":
        page.get_by_role("link", name="Models").click()
        expect(page.get_by_role("heading", name="Models")).to_be_visible(timeout=30000)
        expect(page.get_by_text("keycloak:olga").first).to_be_visible()
        shot(page, "sign-in-keycloak-operator")
    page.context.close()


def test_a_wrong_password_stays_on_the_realms_form(browser: Browser, kc_console: Urls, oidc: Any) -> None:
    page = sign_in(browser, kc_console.console, oidc, "anna", "not-her-password")
    expect(page.get_by_text("Invalid username or password.")).to_be_visible(timeout=30000)
    assert page.url.startswith(oidc.issuer)
    page.context.close()


def test_a_keycloak_user_without_a_modeldeck_role_is_told_so(browser: Browser, kc_console: Urls, oidc: Any) -> None:
    page = sign_in(browser, kc_console.console, oidc, "nora")
    expect(page.get_by_role("button", name="Sign out of Keycloak")).to_be_visible(timeout=30000)
    expect(page.get_by_role("alert")).to_have_text(
        "your Keycloak account has none of the roles ModelDeck maps: modeldeck-admin, modeldeck-analyst, "
        "modeldeck-operator, modeldeck-service")
    expect(page.get_by_role("link", name="Overview")).to_have_count(0)
    page.context.close()
