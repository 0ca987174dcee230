"""Service-account API keys: random ``mdk_`` secrets stored only as their sha256."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, TypedDict

from pymongo.database import Database

from server.core.clock import now_iso
from server.core.errors import NotFoundError

ROLES = ("service", "analyst", "operator", "admin")
KEY_PREFIX = "mdk_"


class KeyDoc(TypedDict, total=False):
    _id: str
    name: str
    role: str
    models: list[str] | None
    key_hash: str
    prefix: str
    expires_at: str | None
    revoked_at: str | None
    created_at: str
    created_by: str
    last_used_at: str | None


def role_rank(role: str) -> int:
    """Return a role's rank; higher roles include the lower ones."""
    return ROLES.index(role)


def hash_key(key: str) -> str:
    """Hash a key for storage and lookup (keys carry 256 random bits, so a plain sha256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    db: Database, name: str, role: str, models: list[str] | None, expires_at: str | None, created_by: str
) -> tuple[KeyDoc, str]:
    """Create a key and return its stored document and the secret, which is never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    doc: KeyDoc = {
        "_id": "key_" + secrets.token_hex(8),
        "name": name,
        "role": role,
        "models": models,
        "key_hash": hash_key(secret),
        "prefix": secret[:8],
        "expires_at": expires_at,
        "revoked_at": None,
        "created_at": now_iso(),
        "created_by": created_by,
        "last_used_at": None,
    }
    db.apikeys.insert_one(dict(doc))
    return doc, secret


def find_key(db: Database, secret: str) -> KeyDoc | None:
    """Return the stored key matching a presented secret, or None."""
    return db.apikeys.find_one({"key_hash": hash_key(secret)})  # type: ignore[return-value]


def list_keys(db: Database) -> list[dict[str, Any]]:
    """Return every key, newest first, without hashes."""
    return list(db.apikeys.find({}, {"key_hash": 0}).sort("created_at", -1))


def revoke_key(db: Database, key_id: str) -> KeyDoc:
    """Mark a key revoked and return it (with its hash, so callers can drop cached copies)."""
    doc = db.apikeys.find_one({"_id": key_id})
    if doc is None:
        raise NotFoundError(f"API key '{key_id}' does not exist", {"id": key_id})
    if doc.get("revoked_at") is None:
        doc["revoked_at"] = now_iso()
        db.apikeys.update_one({"_id": key_id}, {"$set": {"revoked_at": doc["revoked_at"]}})
    return doc  # type: ignore[return-value]


def touch_key(db: Database, key_id: str, when: str) -> None:
    """Record when a key was last used."""
    db.apikeys.update_one({"_id": key_id}, {"$set": {"last_used_at": when}})
