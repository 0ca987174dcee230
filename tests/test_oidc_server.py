"""The test OIDC server itself, seen through python-keycloak as the API sees Keycloak."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt as pyjwt
import pytest
import requests
from jwcrypto import jwt as jwc
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakAuthenticationError, KeycloakPostError

from conftest import REALM_FILE, ROOT, Oidc, Proc, free_port, wait_for


def kc(oidc: Oidc, client_id: str = "modeldeck-console", secret: str | None = None) -> KeycloakOpenID:
    return KeycloakOpenID(server_url=oidc.url, realm_name="modeldeck", client_id=client_id, client_secret_key=secret)


def checks(oidc: Oidc) -> dict[str, object]:
    return {"iss": oidc.issuer, "aud": "modeldeck-api", "exp": None}


def error_of(exc: pytest.ExceptionInfo) -> str:
    return str(json.loads(exc.value.response_body)["error"])


def test_discovery_and_certs(oidc: Oidc) -> None:
    known = kc(oidc).well_known()
    assert known["issuer"] == oidc.issuer == f"{oidc.url}/realms/modeldeck"
    assert known["jwks_uri"] == f"{oidc.issuer}/protocol/openid-connect/certs"
    assert {"password", "client_credentials"} <= set(known["grant_types_supported"])
    keys = kc(oidc).certs()["keys"]
    assert keys and all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" and k["kid"] for k in keys)


def test_password_grant_token_validates_against_published_certs(oidc: Oidc) -> None:
    tokens = kc(oidc).token("alice", oidc.passwords["alice"])
    access = tokens["access_token"]
    header = pyjwt.get_unverified_header(access)
    assert header["alg"] == "RS256" and header["kid"] in {k["kid"] for k in oidc.certs()["keys"]}
    claims = kc(oidc).decode_token(access, check_claims=checks(oidc))
    assert claims["iss"] == oidc.issuer
    assert claims["aud"] == ["modeldeck-api", "account"]
    assert claims["azp"] == "modeldeck-console" and claims["typ"] == "Bearer"
    assert claims["preferred_username"] == "alice" and claims["sub"]
    assert "modeldeck-admin" in claims["realm_access"]["roles"]
    assert "view-profile" in claims["resource_access"]["account"]["roles"]
    assert claims["iat"] <= time.time() < claims["exp"] and "nbf" not in claims
    # The ID token is for the console, not the API: a verifier checking aud must refuse it.
    id_claims = kc(oidc).decode_token(tokens["id_token"])
    assert id_claims["aud"] == "modeldeck-console" and id_claims["typ"] == "ID"
    with pytest.raises(jwc.JWTInvalidClaimValue):
        kc(oidc).decode_token(tokens["id_token"], check_claims=checks(oidc))
    # The fixture's shortcut goes through the same endpoint.
    assert kc(oidc).decode_token(oidc.password_token("olga"))["realm_access"]["roles"][0] == "modeldeck-operator"


def test_nora_has_no_modeldeck_role_and_sam_a_single_audience(oidc: Oidc) -> None:
    nora = kc(oidc).decode_token(oidc.password_token("nora"), check_claims=checks(oidc))
    assert not [r for r in nora["realm_access"]["roles"] if r.startswith("modeldeck-")]
    assert "offline_access" in nora["realm_access"]["roles"]
    sam = kc(oidc).decode_token(oidc.password_token("sam"), check_claims=checks(oidc))
    assert sam["aud"] == "modeldeck-api" and "resource_access" not in sam


def test_wrong_password_is_invalid_grant(oidc: Oidc) -> None:
    with pytest.raises(KeycloakAuthenticationError) as exc:
        kc(oidc).token("alice", "not-her-password")
    assert exc.value.response_code == 401 and error_of(exc) == "invalid_grant"


def test_wrong_client_secret_is_unauthorized_client(oidc: Oidc) -> None:
    with pytest.raises(KeycloakAuthenticationError) as exc:
        kc(oidc, "modeldeck-integration", "wrong-secret").token("alice", oidc.passwords["alice"])
    assert exc.value.response_code == 401 and error_of(exc) == "unauthorized_client"
    with pytest.raises(KeycloakAuthenticationError) as exc:
        kc(oidc, "modeldeck-integration", "wrong-secret").token(grant_type="client_credentials")
    assert exc.value.response_code == 401 and error_of(exc) == "unauthorized_client"


def test_realm_flags_are_honoured(oidc: Oidc) -> None:
    # The realm enables no direct grant for the integration client, and no service account for the API client.
    secret = oidc.client_secrets["modeldeck-integration"]
    with pytest.raises(KeycloakPostError) as exc:
        kc(oidc, "modeldeck-integration", secret).token("alice", oidc.passwords["alice"])
    assert exc.value.response_code == 400 and error_of(exc) == "unauthorized_client"
    with pytest.raises(KeycloakAuthenticationError) as exc:
        kc(oidc, "modeldeck-api", oidc.client_secrets["modeldeck-api"]).token(grant_type="client_credentials")
    assert error_of(exc) == "unauthorized_client"


def test_client_credentials_for_the_integration_client(oidc: Oidc) -> None:
    tokens = kc(oidc, "modeldeck-integration", oidc.client_secrets["modeldeck-integration"]).token(
        grant_type="client_credentials")
    assert "refresh_token" not in tokens
    claims = kc(oidc).decode_token(tokens["access_token"], check_claims=checks(oidc))
    assert claims["azp"] == claims["client_id"] == "modeldeck-integration"
    assert claims["preferred_username"] == "service-account-modeldeck-integration"
    assert claims["realm_access"]["roles"] == ["modeldeck-service"] and claims["aud"] == "modeldeck-api"
    assert kc(oidc).decode_token(oidc.client_token(), check_claims=checks(oidc))["azp"] == "modeldeck-integration"


def test_minted_tokens_are_genuine_but_fail_the_claim_checks(oidc: Oidc) -> None:
    now = time.time()
    expired = oidc.mint("anna", exp=now - 600, iat=now - 900)
    assert kc(oidc).decode_token(expired, validate=False)["exp"] == int(now - 600)
    with pytest.raises(jwc.JWTExpired):
        kc(oidc).decode_token(expired, check_claims=checks(oidc))
    with pytest.raises(jwc.JWTNotYetValid):  # jwcrypto checks nbf only when check_claims is not given (or names it)
        kc(oidc).decode_token(oidc.mint("anna", nbf=now + 600))
    with pytest.raises(jwc.JWTInvalidClaimValue):
        kc(oidc).decode_token(oidc.mint("anna", iss="http://evil.example/realms/modeldeck"), check_claims=checks(oidc))
    with pytest.raises(jwc.JWTInvalidClaimValue):
        kc(oidc).decode_token(oidc.mint("anna", aud="account"), check_claims=checks(oidc))
    with pytest.raises(jwc.JWTMissingClaim):
        kc(oidc).decode_token(oidc.mint("anna", drop=["aud"]), check_claims=checks(oidc))
    claims = kc(oidc).decode_token(oidc.mint("nora", roles=["modeldeck-admin"]), check_claims=checks(oidc))
    assert claims["realm_access"] == {"roles": ["modeldeck-admin"]} and claims["preferred_username"] == "nora"
    service = kc(oidc).decode_token(oidc.mint(None, client="modeldeck-integration"), check_claims=checks(oidc))
    assert service["azp"] == "modeldeck-integration" and service["realm_access"]["roles"] == ["modeldeck-service"]


def test_rotate_key_changes_the_kid(oidc: Oidc) -> None:
    old_token = oidc.password_token("alice")
    old_kid = pyjwt.get_unverified_header(old_token)["kid"]
    new_kid = oidc.rotate_key()
    assert new_kid != old_kid
    assert [k["kid"] for k in oidc.certs()["keys"]][:2] == [new_kid, old_kid]
    new_token = oidc.password_token("alice")
    assert pyjwt.get_unverified_header(new_token)["kid"] == new_kid
    assert pyjwt.get_unverified_header(oidc.mint("alice"))["kid"] == new_kid
    kc(oidc).decode_token(old_token, check_claims=checks(oidc))  # the old key is still published
    newest = oidc.rotate_key(keep_old=False)
    assert [k["kid"] for k in oidc.certs()["keys"]] == [newest]
    with pytest.raises(jwc.JWTMissingKey):  # its kid is no longer in certs
        kc(oidc).decode_token(new_token, check_claims=checks(oidc))
    kc(oidc).decode_token(oidc.password_token("alice"), check_claims=checks(oidc))


@dataclass
class Dynamic:
    """An OIDC server run as compose runs Keycloak: public URL http://localhost:PUBLIC, served on 127.0.0.1:PORT."""

    url: str  # where it listens (the in-network URL, as the console's and API's servers reach it)
    public: str  # --base-url: where browsers reach it
    console: str  # MODELDECK_CONSOLE_PUBLIC_URL, filled into the realm's redirect URIs
    password: str


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dynamic]:
    tmp = tmp_path_factory.mktemp("oidc-dynamic")
    port, public, console = free_port(), f"http://localhost:{free_port()}", f"http://localhost:{free_port()}"
    url, password = f"http://127.0.0.1:{port}", "pw-" + os.urandom(6).hex()
    users = [{"username": "alice", "password": password, "realm_roles": ["modeldeck-admin"]}]
    cmd = [sys.executable, str(ROOT / "tests" / "oidc_server.py"), "--realm-file", str(REALM_FILE), "--port", str(port),
           "--base-url", public, "--backchannel-dynamic", "--users-json", json.dumps(users),
           "--secrets-json", json.dumps({"MODELDECK_API_CLIENT_SECRET": "a", "MODELDECK_INTEGRATION_CLIENT_SECRET": "b"}),
           "--direct-grant", "modeldeck-console"]
    log = Path(tmp) / "oidc.log"
    proc = Proc(cmd, {**os.environ, "PYTHONUNBUFFERED": "1", "MODELDECK_CONSOLE_PUBLIC_URL": console}, log)

    def answers() -> bool:
        if not proc.alive():
            pytest.fail(f"OIDC server exited:\n{log.read_text()[-3000:]}")
        try:
            return requests.get(f"{url}/realms/modeldeck/.well-known/openid-configuration", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(answers, 30, "OIDC server with --backchannel-dynamic", log)
    yield Dynamic(url=url, public=public, console=console, password=password)
    proc.stop()


def discovery(base: str, host: str | None = None) -> dict[str, str]:
    headers = {"Host": host} if host else {}
    resp = requests.get(f"{base}/realms/modeldeck/.well-known/openid-configuration", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_by_default_discovery_names_the_base_url_whatever_the_host(oidc: Oidc) -> None:
    known = discovery(oidc.url, host="keycloak:8080")
    assert known["issuer"] == oidc.issuer
    for key in ("authorization_endpoint", "end_session_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        assert known[key].startswith(oidc.issuer + "/protocol/openid-connect/"), key


def test_backchannel_dynamic_answers_back_channel_endpoints_at_the_request_host(dynamic: Dynamic) -> None:
    """KC_HOSTNAME_BACKCHANNEL_DYNAMIC: a browser is sent to the public URL, a server calls the host it asked."""
    issuer = f"{dynamic.public}/realms/modeldeck"
    for base, host in ((dynamic.url, None), (dynamic.url, "keycloak:8080")):
        known = discovery(base, host)
        here = f"http://{host}" if host else dynamic.url
        assert known["issuer"] == issuer
        assert known["authorization_endpoint"] == f"{issuer}/protocol/openid-connect/auth"
        assert known["end_session_endpoint"] == f"{issuer}/protocol/openid-connect/logout"
        for key, path in (("token_endpoint", "token"), ("jwks_uri", "certs"), ("userinfo_endpoint", "userinfo")):
            assert known[key] == f"{here}/realms/modeldeck/protocol/openid-connect/{path}", key


def test_backchannel_tokens_name_the_public_issuer_and_verify_against_in_network_keys(dynamic: Dynamic) -> None:
    """What the API does in compose: keys from http://keycloak:8080, iss checked against the public URL."""
    known = discovery(dynamic.url)
    resp = requests.post(known["token_endpoint"], timeout=10, data={
        "grant_type": "password", "client_id": "modeldeck-console", "username": "alice", "password": dynamic.password})
    assert resp.status_code == 200, resp.text
    in_network = KeycloakOpenID(server_url=dynamic.url, realm_name="modeldeck", client_id="modeldeck-console")
    claims = in_network.decode_token(resp.json()["access_token"],
                                     check_claims={"iss": f"{dynamic.public}/realms/modeldeck", "aud": "modeldeck-api", "exp": None})
    assert claims["realm_access"]["roles"] == ["modeldeck-admin"]


def test_the_realm_allows_the_console_public_url_as_redirect(dynamic: Dynamic) -> None:
    """The realm file's ${MODELDECK_CONSOLE_PUBLIC_URL:http://localhost:8501}/* follows the variable at import."""
    auth = f"{dynamic.url}/realms/modeldeck/protocol/openid-connect/auth"
    params = {"client_id": "modeldeck-console", "response_type": "code", "scope": "openid", "state": "s",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}
    page = requests.get(auth, params={**params, "redirect_uri": f"{dynamic.console}/oauth2callback"}, timeout=10)
    assert page.status_code == 200 and 'name="password"' in page.text
    refused = requests.get(auth, params={**params, "redirect_uri": "http://localhost:8501/oauth2callback"}, timeout=10)
    assert (refused.status_code, refused.text) == (400, "Invalid parameter: redirect_uri")
