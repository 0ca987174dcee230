"""Verify Keycloak access tokens: RS256 against the realm's JWKS (cached, refreshed once on an unknown kid)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import orjson
from jwcrypto import jwk, jws, jwt
from jwcrypto.common import JWException
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakError

from server.core.errors import ForbiddenError, UnauthorizedError, UnavailableError
from server.core.keys_repo import role_rank
from server.core.settings import Settings

logger = logging.getLogger(__name__)

# A flood of tokens with made-up key ids must not turn into a flood of JWKS fetches.
_MIN_REFRESH_INTERVAL_S = 10.0


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise UnauthorizedError("invalid token: not a JWS compact token (expected three dot-separated parts)")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise UnauthorizedError("invalid token: its header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise UnauthorizedError("invalid token: its header is not a JSON object")
    return header


class TokenVerifier:
    """Check a Keycloak access token and return its claims and the ModelDeck role it grants."""

    def __init__(self, settings: Settings) -> None:
        base = settings.keycloak_url.rstrip("/")
        self.issuer = settings.keycloak_issuer or f"{base}/realms/{settings.keycloak_realm}"
        self.audience = settings.keycloak_audience
        self.leeway = settings.keycloak_leeway_s
        self.role_map = settings.keycloak_role_map
        self.oidc = KeycloakOpenID(server_url=base + "/", realm_name=settings.keycloak_realm,
                                   client_id=settings.keycloak_client_id, timeout=5)
        self._keys: dict[str, jwk.JWK] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            certs = self.oidc.certs()
        except (KeycloakError, OSError) as exc:
            raise UnavailableError("cannot reach Keycloak to fetch the realm's signing keys; retry shortly") from exc
        keys = {}
        for cert in certs.get("keys", []):
            if cert.get("kty") == "RSA" and cert.get("use", "sig") == "sig" and cert.get("kid"):
                keys[cert["kid"]] = jwk.JWK(**cert)
        self._keys, self._fetched_at = keys, time.monotonic()
        logger.info("fetched %d signing keys for %s", len(keys), self.issuer)

    def _key(self, kid: str) -> jwk.JWK:
        with self._lock:
            key = self._keys.get(kid)
            if key is None and (not self._keys or time.monotonic() - self._fetched_at > _MIN_REFRESH_INTERVAL_S):
                self._refresh()
                key = self._keys.get(kid)
        if key is None:
            raise UnauthorizedError("invalid token: signed by a key the realm does not publish")
        return key

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token, or raise 401 with a short reason."""
        header = _header(token)
        if header.get("alg") != "RS256":
            raise UnauthorizedError(f"invalid token: algorithm must be RS256, got {str(header.get('alg'))[:20]!r}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise UnauthorizedError("invalid token: no key id (kid) in its header")
        key = self._key(kid)
        check = {"iss": self.issuer, "aud": self.audience, "exp": None}
        try:
            claims = self.oidc.decode_token(token, key=key, check_claims=check, leeway=self.leeway, algs=["RS256"])
        except jwt.JWTExpired as exc:
            raise UnauthorizedError("invalid token: expired") from exc
        except jwt.JWTNotYetValid as exc:
            raise UnauthorizedError("invalid token: not valid yet") from exc
        except jwt.JWTInvalidClaimValue as exc:
            claim = "issuer" if "'iss'" in str(exc) else "audience" if "'aud'" in str(exc) else "claim"
            raise UnauthorizedError(f"invalid token: wrong {claim}") from exc
        except jwt.JWTMissingClaim as exc:
            raise UnauthorizedError(f"invalid token: missing claim ({str(exc).split(':')[-1].strip()[:20]})") from exc
        except (jws.InvalidJWSSignature, jws.InvalidJWSObject) as exc:
            raise UnauthorizedError("invalid token: bad signature") from exc
        except (JWException, ValueError, TypeError) as exc:
            raise UnauthorizedError("invalid token: malformed") from exc
        # jwcrypto checks nbf only when told to, and then requires it; Keycloak omits it. Check it when present.
        now = time.time()
        if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] > now + self.leeway:
            raise UnauthorizedError("invalid token: not valid yet")
        if isinstance(claims.get("iat"), (int, float)) and claims["iat"] > now + self.leeway:
            raise UnauthorizedError("invalid token: issued in the future")
        if claims.get("typ", "Bearer") != "Bearer":
            raise UnauthorizedError("invalid token: not an access token")
        return claims

    def roles(self, claims: dict[str, Any]) -> list[str]:
        """Return the token's realm roles and client roles (as 'client/role')."""
        names = list((claims.get("realm_access") or {}).get("roles") or [])
        for client, access in (claims.get("resource_access") or {}).items():
            names += [f"{client}/{r}" for r in (access or {}).get("roles") or []]
        return [n for n in names if isinstance(n, str)]

    def role(self, claims: dict[str, Any]) -> str:
        """Return the highest ModelDeck role the token's roles map to, or raise 403."""
        mapped = [self.role_map[r] for r in self.roles(claims) if r in self.role_map]
        if not mapped:
            raise ForbiddenError(
                "your Keycloak account has none of the roles ModelDeck maps: " + ", ".join(sorted(self.role_map)),
                {"mapped_roles": sorted(self.role_map)},
            )
        return max(mapped, key=role_rank)
