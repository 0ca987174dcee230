"""API keys for service accounts, and the caller's own identity."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from flask import Response, current_app, g
from pydantic import AwareDatetime, BaseModel, Field

from server.services import audit
from server.http.api import Api, json_response
from server.core import keys_repo
from server.core.clock import to_iso
from server.core.errors import InvalidInputError

api = Api("apikeys", "/api/v1")


class KeyBody(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=100)
    role: Literal["admin", "operator", "analyst", "service"]
    models: list[str] | None = Field(default=None, description="limit the key to these models")
    expires_at: AwareDatetime | None = Field(default=None, description="ISO-8601 with a time zone")


def key_view(doc: Any) -> dict[str, Any]:
    """Return a key's public fields (never its hash)."""
    return {k: doc.get(k) for k in ("name", "role", "models", "prefix", "expires_at", "revoked_at",
                                    "created_at", "created_by", "last_used_at")} | {"id": doc["_id"]}


@api.route("/me", "GET", "service", "Show the caller's identity and role", scope="none")
def me() -> Response:
    p = g.principal
    return json_response({"subject": p.subject, "role": p.role, "roles": list(p.roles), "method": p.method,
                          "key_id": p.key_id, "models": list(p.models) if p.models else None})


@api.route("/apikeys", "POST", "admin", "Create an API key (the key is shown only in this answer)", body=KeyBody, status=201)
def create_key(body: KeyBody) -> Response:
    if body.expires_at is not None and body.expires_at <= dt.datetime.now(dt.timezone.utc):
        raise InvalidInputError(f"field 'expires_at': must be in the future, got {body.expires_at.isoformat()}")
    ctx = current_app.extensions["modeldeck"]
    expires = to_iso(body.expires_at) if body.expires_at else None
    doc, secret = keys_repo.create_key(ctx.db, body.name, body.role, body.models, expires, g.principal.subject)
    audit.record("apikey.create", doc["_id"], status=201, details={
        "name": body.name, "role": body.role, "models": body.models, "expires_at": expires})
    return json_response(key_view(doc) | {"key": secret}, 201)


@api.route("/apikeys", "GET", "admin", "List API keys")
def list_keys() -> Response:
    ctx = current_app.extensions["modeldeck"]
    return json_response({"keys": [key_view(d) for d in keys_repo.list_keys(ctx.db)]})


@api.route("/apikeys/<key_id>", "DELETE", "admin", "Revoke an API key at once")
def revoke_key(key_id: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    doc = keys_repo.revoke_key(ctx.db, key_id)
    ctx.changed("apikey", doc["key_hash"])
    audit.record("apikey.revoke", key_id, details={"name": doc["name"]})
    return json_response(key_view(doc))
