"""API keys and roles: who may call what, scoped keys, expiry and immediate revocation."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from conftest import Client, unique


def test_admin_creates_a_key_that_is_shown_once_and_stored_as_a_hash(stack, admin: Client) -> None:  # type: ignore[no-untyped-def]
    created = admin.post("/api/v1/apikeys", json={"name": "ci-bot", "role": "analyst"})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("mdk_") and body["role"] == "analyst"
    listed = admin.get("/api/v1/apikeys").json()["keys"]
    mine = next(k for k in listed if k["id"] == body["id"])
    assert "key" not in mine and "key_hash" not in mine
    stored = stack.db.apikeys.find_one({"_id": body["id"]})
    assert body["key"] not in str(stored)
    me = Client(admin.base, body["key"]).get("/api/v1/me").json()
    assert me == {"subject": "apikey:ci-bot", "role": "analyst", "roles": ["analyst"], "method": "apikey",
                  "key_id": body["id"], "models": None}


CREDENTIAL_CASES = [
    (None, "missing credential: send 'Authorization: Bearer <API key or token>'"),
    ("Basic dXNlcjpwYXNz", "malformed Authorization header: expected 'Bearer <API key or token>'"),
    ("Bearer mdk_not-a-real-key", "invalid API key"),
    ("Bearer eyJhbGciOiJub25lIn0.e30.", "invalid credential: not an API key, and Keycloak sign-in is not configured on this server"),
]


@pytest.mark.parametrize("header,message", CREDENTIAL_CASES)
def test_wrong_or_missing_credential_is_401(api_url: str, header, message) -> None:  # type: ignore[no-untyped-def]
    client = Client(api_url, None)
    resp = client.get("/api/v1/models", headers={"Authorization": header} if header else {})
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == message


@pytest.mark.parametrize("role,path,method,required", [
    ("analyst", "/api/v1/models", "POST", "operator"),
    ("service", "/api/v1/models", "GET", "analyst"),
    ("operator", "/api/v1/apikeys", "GET", "admin"),
    ("operator", "/api/v1/models/x/versions/1", "DELETE", "admin"),
])
def test_right_key_wrong_role_is_403(make_client, role, path, method, required) -> None:  # type: ignore[no-untyped-def]
    resp = make_client(role).request(method, path)
    assert resp.status_code == 403
    assert resp.json()["error"]["message"] == (
        f"this operation needs role '{required}' or higher; your credential has role '{role}'")


def test_revoked_key_is_refused_at_once(admin: Client) -> None:
    created = admin.post("/api/v1/apikeys", json={"name": "temp", "role": "service"}).json()
    client = Client(admin.base, created["key"])
    assert client.get("/api/v1/me").status_code == 200
    revoked = admin.delete(f"/api/v1/apikeys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    resp = client.get("/api/v1/me")
    assert (resp.status_code, resp.json()["error"]["message"]) == (401, "API key has been revoked")


def test_expired_key_is_refused(stack, admin: Client) -> None:  # type: ignore[no-untyped-def]
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
    created = admin.post("/api/v1/apikeys", json={"name": "short", "role": "service", "expires_at": soon}).json()
    client = Client(admin.base, created["key"])
    assert client.get("/api/v1/me").status_code == 200
    time.sleep(1.2)
    resp = client.get("/api/v1/me")
    assert (resp.status_code, resp.json()["error"]["message"]) == (401, "API key has expired")


@pytest.mark.parametrize("body,message", [
    ({"name": "x", "role": "root"}, "field 'role': Input should be 'admin', 'operator', 'analyst' or 'service', got 'root'"),
    ({"role": "service"}, "field 'name': Field required, got nothing"),
    ({"name": "x", "role": "service", "expires_at": "2020-01-01T00:00:00Z"},
     "field 'expires_at': must be in the future, got 2020-01-01T00:00:00+00:00"),
    ({"name": "x", "role": "service", "expires_at": "2030-01-01T00:00:00"},
     "field 'expires_at': Input should have timezone info, got '2030-01-01T00:00:00'"),
])
def test_bad_key_request_is_400(admin: Client, body, message) -> None:  # type: ignore[no-untyped-def]
    resp = admin.post("/api/v1/apikeys", json=body)
    assert (resp.status_code, resp.json()["error"]["message"]) == (400, message)


def test_unknown_key_revocation_is_404(admin: Client) -> None:
    resp = admin.delete("/api/v1/apikeys/key_nope")
    assert (resp.status_code, resp.json()["error"]["message"]) == (404, "API key 'key_nope' does not exist")


def test_scoped_service_key_reaches_only_its_models(operator: Client, make_client, iris_skops: bytes) -> None:  # type: ignore[no-untyped-def]
    mine, other = unique("mine"), unique("other")
    for name in (mine, other):
        assert operator.upload(name, iris_skops).status_code == 201
    service = make_client("service", models=[mine])
    assert service.post(f"/api/v1/models/{mine}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
    refused = service.post(f"/api/v1/models/{other}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    # Outside its scope a model looks like one that does not exist (tests/test_scope.py walks every operation).
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == f"model '{other}' does not exist"
    assert service.get(f"/api/v1/models/{other}").status_code == 404
    assert service.get(f"/api/v1/models/{mine}").status_code == 200


def test_revocation_reaches_every_api_process_at_once(admin: Client, tight_api: Client) -> None:
    created = admin.post("/api/v1/apikeys", json={"name": "two-apis", "role": "service"}).json()
    on_a, on_b = Client(admin.base, created["key"]), Client(tight_api.base, created["key"])
    for _ in range(3):  # warm both processes' caches
        assert on_a.get("/api/v1/me").status_code == 200 and on_b.get("/api/v1/me").status_code == 200
    assert admin.delete(f"/api/v1/apikeys/{created['id']}").status_code == 200
    assert on_b.get("/api/v1/me").status_code == 401
    assert on_a.get("/api/v1/me").status_code == 401
