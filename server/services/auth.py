"""Authenticate a request (API key now; Keycloak tokens plug in at ``_verify_token``) and check its role."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field

from pymongo.database import Database

from server.services.cache import RepoCache
from server.core import keys_repo
from server.core.clock import now_iso
from server.core.errors import ForbiddenError, UnauthorizedError
from server.core.keys_repo import ROLES, role_rank
from server.services.keycloak import TokenVerifier

ANYONE = "anyone"
# last_used_at is written at most this often per key, so the hot path does not write on every call.
_TOUCH_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    method: str
    key_id: str | None = None
    models: tuple[str, ...] | None = None
    roles: tuple[str, ...] = field(default_factory=tuple)

    def may_use_model(self, name: str) -> bool:
        """Tell whether a model-scoped credential covers this model."""
        return self.models is None or name in self.models


class Authenticator:
    """Turn an Authorization header into a Principal, or raise 401."""

    def __init__(self, db: Database, cache: RepoCache, verifier: TokenVerifier | None = None) -> None:
        self.db = db
        self.cache = cache
        self.verifier = verifier
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def authenticate(self, header: str | None) -> Principal:
        """Return the caller's identity from a Bearer credential."""
        if not header:
            raise UnauthorizedError("missing credential: send 'Authorization: Bearer <API key or token>'")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise UnauthorizedError("malformed Authorization header: expected 'Bearer <API key or token>'")
        if credential.startswith(keys_repo.KEY_PREFIX):
            return self._verify_key(credential)
        return self._verify_token(credential)

    def _verify_key(self, secret: str) -> Principal:
        key_hash = keys_repo.hash_key(secret)
        doc = self.cache.get("apikey", key_hash, None, lambda: keys_repo.find_key(self.db, secret))
        # The lookup is by hash; compare again in constant time so timing reveals nothing.
        if doc is None or not hmac.compare_digest(doc["key_hash"], key_hash):
            raise UnauthorizedError("invalid API key")
        now = now_iso()
        if doc.get("revoked_at") is not None:
            raise UnauthorizedError("API key has been revoked")
        expires = doc.get("expires_at")
        if expires is not None and expires <= now:
            raise UnauthorizedError("API key has expired")
        self._touch(doc["_id"])
        models = doc.get("models")
        return Principal(
            subject=f"apikey:{doc['name']}",
            role=doc["role"],
            method="apikey",
            key_id=doc["_id"],
            models=tuple(models) if models else None,
            roles=(doc["role"],),
        )

    def _verify_token(self, token: str) -> Principal:
        if self.verifier is None:
            raise UnauthorizedError("invalid credential: not an API key, and Keycloak sign-in is not configured on this server")
        claims = self.verifier.verify(token)
        name = claims.get("preferred_username") or claims.get("sub") or "unknown"
        # The role check may refuse the caller (403); the audit entry should still say who it was.
        principal_stub = Principal(subject=f"keycloak:{name}", role="service", method="keycloak")
        try:
            role = self.verifier.role(claims)
        except ForbiddenError as exc:
            exc.details["subject"] = principal_stub.subject
            raise
        return Principal(subject=principal_stub.subject, role=role, method="keycloak",
                         roles=tuple(self.verifier.roles(claims)))

    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < _TOUCH_EVERY_S:
                return
            self._touched[key_id] = now
        keys_repo.touch_key(self.db, key_id, now_iso())


def require_role(principal: Principal, role: str) -> None:
    """Raise 403 unless the principal's role includes the required one."""
    if role != ANYONE and role_rank(principal.role) < role_rank(role):
        raise ForbiddenError(
            f"this operation needs role '{role}' or higher; your credential has role '{principal.role}'",
            {"required_role": role, "role": principal.role},
        )


__all__ = ["ANYONE", "ROLES", "Authenticator", "Principal", "require_role"]
