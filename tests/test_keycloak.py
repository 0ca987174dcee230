"""Keycloak sign-in against a real OIDC server: roles, service accounts, key rotation and every bad token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from conftest import Client, Proc, Stack, start_api


@pytest.fixture(scope="module")
def kc_url(stack: Stack, worker: Proc, oidc: Any) -> Iterator[str]:
    proc, url = start_api(stack, MODELDECK_KEYCLOAK_URL=oidc.url)
    yield url
    proc.stop()


def bearer(url: str, token: str) -> Client:
    return Client(url, token)


@pytest.mark.parametrize("user,role", [("alice", "admin"), ("olga", "operator"), ("anna", "analyst"), ("sam", "service")])
def test_users_sign_in_with_their_mapped_role(kc_url: str, oidc: Any, user: str, role: str) -> None:
    me = bearer(kc_url, oidc.password_token(user)).get("/api/v1/me")
    assert me.status_code == 200, me.text
    body = me.json()
    assert (body["subject"], body["role"], body["method"]) == (f"keycloak:{user}", role, "keycloak")
    assert f"modeldeck-{role}" in body["roles"]


def test_a_user_without_mapped_roles_is_403_and_audited(kc_url: str, oidc: Any, stack: Stack) -> None:
    resp = bearer(kc_url, oidc.password_token("nora")).get("/api/v1/me", headers={"X-Request-ID": "nora-1"})
    assert resp.status_code == 403
    assert resp.json()["error"]["message"] == (
        "your Keycloak account has none of the roles ModelDeck maps: "
        "modeldeck-admin, modeldeck-analyst, modeldeck-operator, modeldeck-service")
    entry = stack.db.audit.find_one({"request_id": "nora-1"})
    assert entry["actor"] == "keycloak:nora" and entry["outcome"] == "denied" and entry["status"] == 403


def test_service_account_can_predict_but_not_list(kc_url: str, oidc: Any, operator: Client, iris_skops: bytes) -> None:
    name = "kc-" + str(int(time.time() * 1000))
    assert operator.upload(name, iris_skops).status_code == 201
    service = bearer(kc_url, oidc.client_token())
    assert service.get("/api/v1/me").json()["subject"] == "keycloak:service-account-modeldeck-integration"
    assert service.post(f"/api/v1/models/{name}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
    assert service.get("/api/v1/models").status_code == 403


def test_rotated_signing_key_is_fetched_once_and_unknown_keys_fail(kc_url: str, oidc: Any) -> None:
    assert bearer(kc_url, oidc.password_token("alice")).get("/api/v1/me").status_code == 200
    oidc.rotate_key(keep_old=False)
    time.sleep(10.5)  # the verifier refetches keys at most every 10 s
    assert bearer(kc_url, oidc.password_token("alice")).get("/api/v1/me").status_code == 200
    # A token naming a key the realm does not publish: one refetch, then 401.
    token = oidc.password_token("alice")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    header["kid"] = "no-such-key"
    forged = _b64(json.dumps(header).encode()) + "." + token.split(".", 1)[1]
    resp = bearer(kc_url, forged).get("/api/v1/me")
    assert (resp.status_code, resp.json()["error"]["message"]) == (401, "invalid token: signed by a key the realm does not publish")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _alg_none(oidc: Any) -> str:
    payload = oidc.password_token("alice").split(".")[1]
    return _b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."


def _hs256_with_public_key(oidc: Any) -> str:
    # The classic confusion attack: sign with HMAC, using the realm's public key as the shared secret.
    cert = oidc.certs()["keys"][0]
    payload = oidc.password_token("alice").split(".")[1]
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": cert["kid"]}).encode())
    secret = json.dumps(cert, sort_keys=True).encode()
    signature = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(signature)}"


BAD_TOKENS = [
    ("expired", lambda o: o.mint("alice", exp=time.time() - 600), "invalid token: expired"),
    ("not yet valid", lambda o: o.mint("alice", nbf=time.time() + 600), "invalid token: not valid yet"),
    ("wrong issuer", lambda o: o.mint("alice", iss="https://evil.example/realms/modeldeck"), "invalid token: wrong issuer"),
    ("wrong audience", lambda o: o.mint("alice", aud="someone-else"), "invalid token: wrong audience"),
    ("id token", lambda o: o.mint("alice", typ="ID"), "invalid token: not an access token"),
    ("alg none", _alg_none, "invalid token: algorithm must be RS256, got 'none'"),
    ("HS256 with the public key", _hs256_with_public_key, "invalid token: algorithm must be RS256, got 'HS256'"),
    ("truncated", lambda o: o.password_token("alice")[:-20], "invalid token: bad signature"),
    ("tampered payload", lambda o: (lambda t: t.split(".")[0] + "." + _b64(json.dumps({"sub": "x", "realm_access": {
        "roles": ["modeldeck-admin"]}}).encode()) + "." + t.split(".")[2])(o.password_token("anna")), "invalid token: bad signature"),
    ("garbage", lambda o: "this.is.garbage", "invalid token: its header is not base64url JSON"),
    ("not a JWT", lambda o: "hello", "invalid token: not a JWS compact token (expected three dot-separated parts)"),
]


@pytest.mark.parametrize("case,make,message", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_token_is_401_with_a_reason_and_an_audit_entry(kc_url: str, oidc: Any, stack: Stack, case, make, message) -> None:  # type: ignore[no-untyped-def]
    rid = "badtoken-" + case.replace(" ", "-")
    resp = requests.get(kc_url + "/api/v1/models", headers={"Authorization": f"Bearer {make(oidc)}", "X-Request-ID": rid},
                        timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == message
    entry = stack.db.audit.find_one({"request_id": rid})
    assert entry is not None and entry["outcome"] == "denied" and entry["details"]["reason"] == message


def test_a_public_issuer_can_differ_from_the_url_keys_are_fetched_from(stack: Stack, worker: Proc, oidc: Any) -> None:
    # As in compose: browsers sign in at a public URL, the API fetches keys inside the network.
    public = "https://sso.example.com/realms/modeldeck"
    proc, url = start_api(stack, MODELDECK_KEYCLOAK_URL=oidc.url, MODELDECK_KEYCLOAK_ISSUER=public)
    try:
        assert bearer(url, oidc.mint("alice", iss=public)).get("/api/v1/me").json()["role"] == "admin"
        resp = bearer(url, oidc.password_token("alice")).get("/api/v1/me")
        assert (resp.status_code, resp.json()["error"]["message"]) == (401, "invalid token: wrong issuer")
    finally:
        proc.stop()
