"""A real OIDC server for the tests: keycloak-mockup's app, wrapped to act like Keycloak for the ModelDeck realm.

keycloak-mockup serves Keycloak's URL layout (discovery, certs, realm info, login form, userinfo) and signs RS256
tokens with its ``KeyManager``. It knows one client, no client secrets and no password grant, and its tokens carry
``aud`` = its configured client id and no ``azp``. This module leaves the installed package alone and serves an
outer app in front of it that:

* reads the realm export (``compose/keycloak/modeldeck-realm.json``): its clients, their secrets (``${NAME}``
  placeholders resolved like Keycloak does at import), which grants each client allows, their audience mappers,
  and the roles of service-account users;
* checks browser sign-ins like Keycloak (client, standard flow, redirect URI patterns, PKCE) around the mockup's
  login form, and redeems their codes once, for the same client and redirect URI, verifying the PKCE verifier;
* answers the token endpoint itself: the authorization-code grant (ID token with the request's nonce), the
  password grant, the client-credentials grant and the refresh grant,
  authenticating clients (client_secret_post or client_secret_basic) with Keycloak's error bodies;
* builds Keycloak-shaped access tokens and signs them with the mockup's ``KeyManager.sign_token`` (the key the
  certs endpoint publishes);
* adds two test-only endpoints: ``POST /_test/rotate-key`` and ``POST /_test/token`` (mint with claim overrides);
* and, with ``--backchannel-dynamic``, answers discovery like Keycloak with ``KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true``
  (as compose runs it): issuer and browser-facing endpoints at ``--base-url``, back-channel endpoints (token,
  certs, userinfo) at the host the request came in on, so a container can redeem codes at ``http://keycloak:8080``
  for tokens whose issuer is the public URL.

Everything else (realm info, login page, userinfo, logout) falls through to keycloak-mockup's own app.

Run it::

    python tests/oidc_server.py --realm-file compose/keycloak/modeldeck-realm.json --port 8180 \\
        --secrets-json '{"MODELDECK_API_CLIENT_SECRET": "a", "MODELDECK_INTEGRATION_CLIENT_SECRET": "b"}' \\
        --users-json '[{"username": "alice", "password": "pw", "realm_roles": ["modeldeck-admin"]}]' \\
        --direct-grant modeldeck-console
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt  # PyJWT: what keycloak-mockup signs with
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from keycloak_mockup import main as mockup
from keycloak_mockup.config import Config, UserConfig
from keycloak_mockup.crypto import KeyManager

# Keycloak resolves ${NAME} and ${NAME:default} in a realm file from the environment at import.
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^}]*))?\}")
# Roles and clients every Keycloak realm has without the export naming them.
BUILTIN_CLIENTS = {"account", "account-console", "broker", "realm-management", "security-admin-console", "admin-cli"}
# What Keycloak's discovery answers from the request's host under KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true; issuer,
# authorization_endpoint, end_session_endpoint and the other browser-facing ones keep the public URL.
BACKCHANNEL_ENDPOINTS = ("token_endpoint", "introspection_endpoint", "userinfo_endpoint", "jwks_uri",
                         "revocation_endpoint", "registration_endpoint", "pushed_authorization_request_endpoint",
                         "backchannel_authentication_endpoint", "device_authorization_endpoint")


class SetupError(Exception):
    pass


def resolve_placeholders(value: Any, values: dict[str, str]) -> Any:
    """Substitute ${NAME} / ${NAME:default} in every string of a parsed realm export; unknown names are errors."""
    if isinstance(value, dict):
        return {k: resolve_placeholders(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v, values) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in values:
            return values[name]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise SetupError(f"realm file placeholder ${{{name}}} has no value (give it in --secrets-json)")

    return PLACEHOLDER.sub(one, value)


@dataclass
class Client:
    client_id: str
    public: bool
    secret: str | None
    direct_grants: bool
    service_accounts: bool
    audiences: list[str]
    web_origins: list[str]
    standard_flow: bool = False
    redirect_uris: list[str] = field(default_factory=list)
    pkce_method: str | None = None

    def allows_redirect(self, uri: str) -> bool:
        """Keycloak's rule: an exact match, or a prefix match for a pattern ending in '*'."""
        return any(uri == p or (p.endswith("*") and uri.startswith(p[:-1])) for p in self.redirect_uris)


@dataclass
class Subject:
    """Whoever a token is about: a user from --users-json or a client's service-account user."""

    sub: str
    username: str
    realm_roles: list[str]
    client_roles: dict[str, list[str]]
    profile: dict[str, Any] = field(default_factory=dict)
    service_client: str | None = None


@dataclass
class Realm:
    name: str
    issuer: str
    clients: dict[str, Client]
    service_accounts: dict[str, Subject]
    access_ttl: int
    refresh_ttl: int
    keys: list[KeyManager]  # current first; all of them are published in certs
    hmac_key: bytes = field(default_factory=lambda: secrets.token_bytes(64))
    hmac_kid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def current(self) -> KeyManager:
        return self.keys[0]


def load_realm(path: Path, placeholder_values: dict[str, str], base_url: str, access_ttl: int | None,
               direct_grant_clients: list[str], extra_redirects: list[str] = ()) -> tuple[Realm, dict[str, Any]]:  # type: ignore[assignment]
    export = resolve_placeholders(json.loads(path.read_text()), placeholder_values)
    name = export["realm"]
    role_names = {r["name"] for r in export.get("roles", {}).get("realm", [])}
    role_names |= {"offline_access", "uma_authorization", f"default-roles-{name}"}
    clients: dict[str, Client] = {}
    for c in export.get("clients", []):
        if not c.get("enabled", True):
            continue
        audiences = [m["config"]["included.client.audience"] for m in c.get("protocolMappers", [])
                     if m.get("protocolMapper") == "oidc-audience-mapper"
                     and m.get("config", {}).get("access.token.claim", "true") == "true"
                     and m["config"].get("included.client.audience")]
        public = bool(c.get("publicClient", False))
        clients[c["clientId"]] = Client(
            client_id=c["clientId"], public=public, secret=None if public else c.get("secret"),
            direct_grants=bool(c.get("directAccessGrantsEnabled", False)) or c["clientId"] in direct_grant_clients,
            service_accounts=bool(c.get("serviceAccountsEnabled", False)), audiences=audiences,
            web_origins=[o for o in c.get("webOrigins", []) if o != "+"],
            standard_flow=bool(c.get("standardFlowEnabled", True)), redirect_uris=list(c.get("redirectUris") or []),
            pkce_method=(c.get("attributes") or {}).get("pkce.code.challenge.method") or None)
    unknown = set(direct_grant_clients) - set(clients)
    if unknown:
        raise SetupError(f"--direct-grant names clients the realm does not have: {sorted(unknown)}")
    for item in extra_redirects:
        client_id, _, uri = item.partition("=")
        if client_id not in clients or not uri:
            raise SetupError(f"--redirect-uri wants CLIENT_ID=URI with a client of the realm, got {item!r}")
        clients[client_id].redirect_uris.append(uri)
    service_accounts: dict[str, Subject] = {}
    for u in export.get("users", []):
        client_id = u.get("serviceAccountClientId")
        if client_id and client_id in clients and clients[client_id].service_accounts:
            service_accounts[client_id] = Subject(
                sub=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/service-account/{client_id}")),
                username=u.get("username", f"service-account-{client_id}"),
                realm_roles=list(u.get("realmRoles", [])), client_roles=dict(u.get("clientRoles", {})),
                service_client=client_id)
    for client_id, client in clients.items():  # Keycloak creates the service-account user if the export lacks it
        if client.service_accounts and client_id not in service_accounts:
            service_accounts[client_id] = Subject(
                sub=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/service-account/{client_id}")),
                username=f"service-account-{client_id}", realm_roles=[], client_roles={}, service_client=client_id)
    realm = Realm(name=name, issuer=f"{base_url}/realms/{name}", clients=clients, service_accounts=service_accounts,
                  access_ttl=access_ttl or int(export.get("accessTokenLifespan", 300)),
                  refresh_ttl=int(export.get("ssoSessionIdleTimeout", 1800)), keys=[KeyManager()])
    return realm, {"role_names": role_names}


def check_users(users: list[dict[str, Any]], realm: Realm, role_names: set[str]) -> None:
    """Refuse roles the realm does not define, as Keycloak cannot grant a role that does not exist."""
    for u in users:
        bad = set(u.get("realm_roles", [])) - role_names
        if bad:
            raise SetupError(f"user {u['username']!r}: realm roles not in the realm file: {sorted(bad)}")
        bad = set(u.get("client_roles", {})) - set(realm.clients) - BUILTIN_CLIENTS
        if bad:
            raise SetupError(f"user {u['username']!r}: client roles for clients the realm lacks: {sorted(bad)}")


# --------------------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------------------

def user_subject(user: UserConfig) -> Subject:
    return Subject(sub=mockup._user_sub(user), username=user.username, realm_roles=list(user.realm_roles),
                   client_roles={k: list(v) for k, v in user.client_roles.items()},
                   profile={"email_verified": True, "name": user.name, "email": user.email})


def audience(client: Client, client_roles: dict[str, list[str]]) -> str | list[str] | None:
    """Keycloak's aud: the client's audience mappers, then every other client the token carries roles of."""
    aud: list[str] = []
    for a in [*client.audiences, *(c for c, roles in client_roles.items() if roles and c != client.client_id)]:
        if a not in aud:
            aud.append(a)
    if not aud:
        return None
    return aud[0] if len(aud) == 1 else aud


def access_claims(realm: Realm, client: Client, subject: Subject, scope: str, sid: str | None,
                  client_address: str = "127.0.0.1") -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"exp": now + realm.access_ttl, "iat": now, "jti": str(uuid.uuid4()), "iss": realm.issuer}
    aud = audience(client, subject.client_roles)
    if aud is not None:
        claims["aud"] = aud
    claims.update({"sub": subject.sub, "typ": "Bearer", "azp": client.client_id})
    if sid:
        claims["sid"] = sid
    claims["acr"] = "1"
    if client.web_origins:
        claims["allowed-origins"] = client.web_origins
    if subject.realm_roles:
        claims["realm_access"] = {"roles": list(subject.realm_roles)}
    resource_access = {c: {"roles": list(r)} for c, r in subject.client_roles.items() if r}
    if resource_access:
        claims["resource_access"] = resource_access
    claims["scope"] = scope
    if subject.service_client:
        claims.update({"clientHost": client_address, "email_verified": False,
                       "preferred_username": subject.username, "clientAddress": client_address,
                       "client_id": subject.service_client})
    else:
        claims.update({**subject.profile, "preferred_username": subject.username})
    return claims


def id_token_claims(access: dict[str, Any], access_token: str, client: Client, nonce: str | None = None) -> dict[str, Any]:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()[:16]
    claims = {k: access[k] for k in ("exp", "iat", "iss", "sub") if k in access}
    if nonce:
        claims["nonce"] = nonce
    claims.update({"auth_time": access["iat"], "jti": str(uuid.uuid4()), "aud": client.client_id, "typ": "ID",
                   "azp": client.client_id, "at_hash": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()})
    claims.update({k: v for k, v in access.items()
                   if k in ("sid", "acr", "email_verified", "name", "preferred_username", "email")})
    return claims


def scope_of(requested: str) -> str:
    """Keycloak grants the default scopes; `openid` only when asked for."""
    return " ".join((["openid"] if "openid" in requested.split() else []) + ["profile", "email"])


def token_response(realm: Realm, client: Client, subject: Subject, requested_scope: str, request: Request,
                   sid: str | None = None, with_refresh: bool = True, nonce: str | None = None) -> dict[str, Any]:
    scope = scope_of(requested_scope)
    sid = sid or (None if subject.service_client else str(uuid.uuid4()))
    host = request.client.host if request.client else "127.0.0.1"
    claims = access_claims(realm, client, subject, scope, sid, host)
    access = realm.current.sign_token(claims)
    body: dict[str, Any] = {"access_token": access, "expires_in": realm.access_ttl,
                            "refresh_expires_in": realm.refresh_ttl if with_refresh else 0}
    if with_refresh:
        now = int(time.time())
        refresh = {"exp": now + realm.refresh_ttl, "iat": now, "jti": str(uuid.uuid4()), "iss": realm.issuer,
                   "aud": realm.issuer, "sub": subject.sub, "typ": "Refresh", "azp": client.client_id, "sid": sid,
                   "scope": scope}
        # Keycloak signs refresh tokens with the realm's HMAC key, not the RSA key.
        body["refresh_token"] = jwt.encode(refresh, realm.hmac_key, algorithm="HS512", headers={"kid": realm.hmac_kid})
    body["token_type"] = "Bearer"
    if "openid" in scope.split():
        body["id_token"] = realm.current.sign_token(id_token_claims(claims, access, client, nonce))
    body["not-before-policy"] = 0
    if sid:
        body["session_state"] = sid
    body["scope"] = scope
    return body


# --------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------

def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def backchannel_endpoints(doc: dict[str, Any], issuer: str, request: Request) -> dict[str, Any]:
    """Point the back-channel endpoints of a discovery document at the host the request came in on.

    Keycloak's KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true: the issuer and the front-channel endpoints (the ones a
    browser is sent to) keep the public URL; those a client's server calls directly use the request's own URL.
    """
    here = f"{str(request.base_url).rstrip('/')}/realms/{issuer.rsplit('/realms/', 1)[1]}"
    for key in BACKCHANNEL_ENDPOINTS:
        if isinstance(doc.get(key), str) and doc[key].startswith(issuer + "/"):
            doc[key] = here + doc[key][len(issuer):]
    return doc


def build_app(realm: Realm, users: list[dict[str, Any]], backchannel_dynamic: bool = False) -> FastAPI:
    # keycloak-mockup keeps its state in module globals, set by its own main(); set them the same way.
    mockup.cfg = Config({"realm": realm.name, "client_id": "modeldeck-api", "base_url": realm.issuer.rsplit("/realms/", 1)[0],
                         "access_token_ttl": realm.access_ttl, "refresh_token_ttl": realm.refresh_ttl,
                         "users": [{"email": f"{u['username']}@modeldeck.test", **u} for u in users]})
    mockup.keys = realm.current
    app = FastAPI(title="ModelDeck test OIDC server", docs_url=None, redoc_url=None, openapi_url=None)
    prefix = "/realms/{realm_name}"

    def no_realm(realm_name: str) -> JSONResponse | None:
        return None if realm_name == realm.name else JSONResponse({"error": "Realm does not exist"}, status_code=404)

    @app.get(prefix + "/.well-known/openid-configuration")
    async def discovery(realm_name: str, request: Request) -> Any:
        if (missing := no_realm(realm_name)) is not None:
            return missing
        doc = await mockup.oidc_discovery(realm_name, request)
        doc["grant_types_supported"] = ["authorization_code", "password", "client_credentials", "refresh_token"]
        doc["code_challenge_methods_supported"] = ["plain", "S256"]
        return backchannel_endpoints(doc, realm.issuer, request) if backchannel_dynamic else doc

    # ---- authorization-code flow: the mockup's login form, with Keycloak's checks around it -------------------
    codes: dict[str, dict[str, Any]] = {}  # code -> what the authorization request asked for

    def check_auth_request(params: Any) -> Client | HTMLResponse:
        """Keycloak refuses an unknown client, a redirect URI it does not allow, or a missing PKCE challenge."""
        client = realm.clients.get(str(params.get("client_id") or ""))
        if client is None:
            return HTMLResponse("Client not found.", status_code=400)
        if not client.standard_flow:
            return HTMLResponse("Client is not allowed to initiate browser login with given response_type.", 400)
        if not client.allows_redirect(str(params.get("redirect_uri") or "")):
            return HTMLResponse("Invalid parameter: redirect_uri", status_code=400)
        if params.get("response_type") != "code":
            return HTMLResponse("Invalid parameter: response_type", status_code=400)
        if client.pkce_method and (not params.get("code_challenge")
                                   or params.get("code_challenge_method") != client.pkce_method):
            return HTMLResponse("Missing parameter: code_challenge_method", status_code=400)
        return client

    @app.get(prefix + "/protocol/openid-connect/auth")
    async def auth_page(realm_name: str, request: Request) -> Any:
        if (missing := no_realm(realm_name)) is not None:
            return missing
        checked = check_auth_request(request.query_params)
        if isinstance(checked, HTMLResponse):
            return checked
        return await mockup.auth_get(realm_name, request, Response(), request.cookies.get(mockup.SESSION_COOKIE))

    @app.post(prefix + "/protocol/openid-connect/auth")
    async def auth_submit(realm_name: str, request: Request) -> Any:
        if (missing := no_realm(realm_name)) is not None:
            return missing
        form = await request.form()
        checked = check_auth_request(form)
        if isinstance(checked, HTMLResponse):
            return checked
        fields = ("username", "password", "redirect_uri", "state", "client_id", "scope", "response_type", "nonce",
                  "code_challenge", "code_challenge_method", "autologin_user")
        answer = await mockup.auth_post(realm_name, request, Response(), **{f: str(form.get(f) or "") for f in fields})
        location = answer.headers.get("location", "")
        found = re.search(r"[?&]code=([^&]+)", location)
        if found:
            codes[found.group(1)] = {f: str(form.get(f) or "") for f in
                                     ("client_id", "redirect_uri", "nonce", "code_challenge", "code_challenge_method",
                                      "scope")}
        return answer

    def redeem_code(form: Any, client: Client) -> Subject | JSONResponse:
        """Exchange a code once, for the client and redirect URI it was issued to, checking the PKCE verifier."""
        code = str(form.get("code") or "")
        asked = codes.pop(code, None)
        entry = mockup._auth_codes.pop(code, None)
        if asked is None or entry is None or entry["expires"] < time.time():
            return oauth_error(400, "invalid_grant", "Code not valid")
        if asked["client_id"] != client.client_id:
            return oauth_error(400, "invalid_grant", "Auth error")
        if str(form.get("redirect_uri") or "") != asked["redirect_uri"]:
            return oauth_error(400, "invalid_grant", "Incorrect redirect_uri")
        if asked["code_challenge"]:
            verifier = str(form.get("code_verifier") or "")
            if asked["code_challenge_method"] == "S256":
                derived = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            else:
                derived = verifier
            if not verifier or not secrets.compare_digest(derived, asked["code_challenge"]):
                return oauth_error(400, "invalid_grant", "PKCE verification failed: Invalid code verifier")
        user = next((u for u in mockup.cfg.users if u.username == entry["username"] and u.enabled), None)
        if user is None:
            return oauth_error(400, "invalid_grant", "User not found or disabled")
        return user_subject(user)

    @app.get(prefix + "/protocol/openid-connect/certs")
    async def certs(realm_name: str) -> Any:
        if (missing := no_realm(realm_name)) is not None:
            return missing
        return {"keys": [k for km in realm.keys for k in km.jwks()["keys"]]}

    def authenticate(form: Any, request: Request) -> Client | JSONResponse:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                pair = base64.b64decode(basic[6:]).decode()
                client_id, secret = (unquote(p) for p in pair.split(":", 1))
            except ValueError:
                return oauth_error(400, "invalid_request", "Invalid Authorization header")
        if not client_id:
            return oauth_error(400, "invalid_client", "Missing client_id parameter")
        client = realm.clients.get(client_id)
        if client is None:
            return oauth_error(401, "invalid_client", "Invalid client or Invalid client credentials")
        if client.public:
            return client
        if not secret:
            return oauth_error(401, "unauthorized_client", "Client secret not provided in request")
        if not client.secret or not secrets.compare_digest(secret.encode(), client.secret.encode()):
            return oauth_error(401, "unauthorized_client", "Invalid client or Invalid client credentials")
        return client

    @app.post(prefix + "/protocol/openid-connect/token")
    async def token(realm_name: str, request: Request) -> Any:
        if (missing := no_realm(realm_name)) is not None:
            return missing
        form = await request.form()
        grant = form.get("grant_type")
        if not grant:
            return oauth_error(400, "invalid_request", "Missing form parameter: grant_type")
        if grant not in ("authorization_code", "password", "client_credentials", "refresh_token"):
            return oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")
        client = authenticate(form, request)
        if isinstance(client, JSONResponse):
            return client
        scope = str(form.get("scope") or "")
        if grant == "authorization_code":
            code = str(form.get("code") or "")
            asked_scope = codes.get(code, {}).get("scope", "")
            nonce = codes.get(code, {}).get("nonce") or None
            subject = redeem_code(form, client)
            if isinstance(subject, JSONResponse):
                return subject
            return token_response(realm, client, subject, asked_scope, request, nonce=nonce)
        if grant == "password":
            if not client.direct_grants:
                return oauth_error(400, "unauthorized_client", "Client not allowed for direct access grants")
            user = next((u for u in mockup.cfg.users if u.username == form.get("username")), None)
            if user is None or not secrets.compare_digest(str(form.get("password") or "").encode(),
                                                          user.password.encode()):
                return oauth_error(401, "invalid_grant", "Invalid user credentials")
            if not user.enabled:
                return oauth_error(400, "invalid_grant", "Account disabled")
            return token_response(realm, client, user_subject(user), scope, request)
        if grant == "client_credentials":
            if client.public:
                return oauth_error(401, "unauthorized_client", "Public client not allowed to retrieve service account")
            if not client.service_accounts:
                return oauth_error(401, "unauthorized_client", "Client not enabled to retrieve service account")
            return token_response(realm, client, realm.service_accounts[client.client_id], scope, request,
                                  with_refresh=False)
        try:  # refresh_token
            old = jwt.decode(str(form.get("refresh_token") or ""), realm.hmac_key, algorithms=["HS512"],
                             issuer=realm.issuer, audience=realm.issuer)
        except jwt.PyJWTError:
            return oauth_error(400, "invalid_grant", "Invalid refresh token")
        if old.get("typ") != "Refresh":
            return oauth_error(400, "invalid_grant", "Invalid refresh token")
        if old.get("azp") != client.client_id:
            return oauth_error(400, "invalid_grant", "Invalid refresh token. Token client and authorized client don't match")
        user = next((u for u in mockup.cfg.users if mockup._user_sub(u) == old.get("sub") and u.enabled), None)
        if user is None:
            return oauth_error(400, "invalid_grant", "User not found or disabled")
        return token_response(realm, client, user_subject(user), old.get("scope", ""), request, sid=old.get("sid"))

    # ---- test-only endpoints ----------------------------------------------------------------------------------

    @app.post("/_test/rotate-key")
    async def rotate_key(request: Request) -> Any:
        """Make a new signing key with a new kid; certs lists it first, and the old ones unless keep_old is false."""
        body = await request.json() if await request.body() else {}
        previous = realm.current.kid
        new = KeyManager()
        realm.keys = [new, *realm.keys] if body.get("keep_old", True) else [new]
        mockup.keys = new  # realm info's public_key and the mockup's userinfo follow the current key
        return {"kid": new.kid, "previous_kid": previous, "published": [k.kid for k in realm.keys]}

    @app.post("/_test/token")
    async def mint(request: Request) -> Any:
        """Mint an access token as the token endpoint would, then apply claim overrides; signed with the current key.

        Body: {"username": str | null (null: the client's service account), "client_id": str (default
        modeldeck-console), "roles": [realm roles] (replaces), "client_roles": {client: [roles]} (replaces),
        "overrides": {claim: value}, "remove": [claim, ...]}.
        """
        body = await request.json()
        client = realm.clients.get(body.get("client_id") or "modeldeck-console")
        if client is None:
            return JSONResponse({"error": f"no client {body.get('client_id')!r} in the realm"}, status_code=404)
        username = body.get("username")
        if username is None:
            if client.client_id not in realm.service_accounts:
                return JSONResponse({"error": f"client {client.client_id!r} has no service account"}, status_code=404)
            subject = realm.service_accounts[client.client_id]
        else:
            user = next((u for u in mockup.cfg.users if u.username == username), None)
            if user is None:
                return JSONResponse({"error": f"no user {username!r}"}, status_code=404)
            subject = user_subject(user)
        subject = Subject(**{**subject.__dict__})
        if body.get("roles") is not None:
            subject.realm_roles = list(body["roles"])
        if body.get("client_roles") is not None:
            subject.client_roles = dict(body["client_roles"])
        claims = access_claims(realm, client, subject, "profile email",
                               None if subject.service_client else str(uuid.uuid4()))
        if body.get("roles") is not None:  # an explicit empty list still yields realm_access, to test that shape
            claims["realm_access"] = {"roles": list(body["roles"])}
        claims.update(body.get("overrides") or {})
        for name in body.get("remove") or []:
            claims.pop(name, None)
        return {"access_token": realm.current.sign_token(claims), "claims": claims, "kid": realm.current.kid}

    app.mount("/", mockup.app)  # everything else: keycloak-mockup's own endpoints
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realm-file", type=Path, required=True, help="Keycloak realm export (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-url", help="advertised base URL, so iss = BASE/realms/REALM "
                                           "(default http://HOST:PORT); fixed, whatever Host a request uses")
    parser.add_argument("--secrets-json", default="{}",
                        help='values for the realm file\'s ${NAME} placeholders, e.g. {"MODELDECK_API_CLIENT_SECRET": '
                             '"..."}; missing names fall back to the environment, as in Keycloak')
    parser.add_argument("--users-json", default="[]",
                        help='[{"username", "password", "realm_roles": [...], "client_roles": {client: [...]}, '
                             '"email"?, "name"?, "enabled"?, "sub"?}, ...]')
    parser.add_argument("--direct-grant", action="append", default=[], metavar="CLIENT_ID",
                        help="also allow the password grant for this client (the realm file enables it for none)")
    parser.add_argument("--redirect-uri", action="append", default=[], metavar="CLIENT_ID=URI",
                        help="also allow this redirect URI (or pattern ending in *) for a client, e.g. an ephemeral port")
    parser.add_argument("--access-token-ttl", type=int, help="seconds (default: the realm's accessTokenLifespan)")
    parser.add_argument("--backchannel-dynamic", action="store_true",
                        help="like Keycloak's KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true: discovery gives the back-channel "
                             "endpoints (token, certs, userinfo, ...) at the host a request came in on, the issuer "
                             "and the browser-facing endpoints at --base-url")
    args = parser.parse_args(argv)

    try:
        base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
        realm, extra = load_realm(args.realm_file, json.loads(args.secrets_json), base, args.access_token_ttl,
                                  args.direct_grant, args.redirect_uri)
        users = json.loads(args.users_json)
        check_users(users, realm, extra["role_names"])
    except (SetupError, KeyError, ValueError, OSError) as exc:
        sys.exit(f"oidc_server: {exc}")
    app = build_app(realm, users, args.backchannel_dynamic)
    print(f"oidc_server: issuer {realm.issuer}, clients {sorted(realm.clients)}, "
          f"users {[u['username'] for u in users]}, kid {realm.current.kid}"
          + (", back-channel endpoints at the request's host" if args.backchannel_dynamic else ""), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
