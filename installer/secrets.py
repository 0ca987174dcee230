"""The key that encrypts data-source credentials: generate it for the local stack, rotate it."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from installer.processes import Layout
from server.core import audit_repo, crypto, datasources_repo
from server.core.clock import now_iso
from server.core.db import connect, ensure_indexes
from server.core.settings import Settings


def key_file(layout: Layout) -> Path:
    """Return where the local stack keeps its generated key."""
    return layout.home / "secret.key"


def write_key(path: Path, key: str) -> None:
    """Write a key readable by its owner only (mode 600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)


def ensure_secret_key(settings: Settings, layout: Layout) -> str:
    """Return MODELDECK_SECRET_KEY, else the local stack's key file, creating it on first start."""
    configured = settings.secret_key.get_secret_value()
    if configured:
        return configured
    path = key_file(layout)
    if path.exists():
        return path.read_text().strip()
    key = crypto.generate_key()
    write_key(path, key)
    return key


def rotate(settings: Settings, layout: Layout, new_key: str | None) -> tuple[str, int, bool]:
    """Re-encrypt every stored secret under a new key; return the key, how many were re-encrypted, and whether
    it was written to the local key file (else the caller must set MODELDECK_SECRET_KEY to it)."""
    path = key_file(layout)
    configured = settings.secret_key.get_secret_value()
    current = configured or (path.read_text().strip() if path.exists() else "")
    if not current:
        raise crypto.SecretKeyError("no current key: set MODELDECK_SECRET_KEY (or run `modeldeck up` once to generate one)")
    new = new_key or crypto.generate_key()
    crypto.check_key(new)
    db = connect(settings)
    ensure_indexes(db)
    count = 0
    for doc in datasources_repo.list_datasources(db):
        token = doc.get("url_token")
        if token:
            datasources_repo.replace_token(db, doc["_id"], token, crypto.rotate_token(token, new, [current]))
            count += 1
    local = not configured or (path.exists() and path.read_text().strip() == configured)
    if local:
        write_key(path, new)
    entry = {"time": now_iso(), "actor": "cli:modeldeck rotate-secret-key", "method": "cli", "role": "admin",
             "action": "secret_key.rotate", "target": "datasources", "outcome": "success", "status": 200,
             "details": {"reencrypted": count, "secret_changed": True}}
    keys = audit_repo.audit_keys(settings.model_copy(update={"secret_key": SecretStr(current)}))
    audit_repo.append(db, entry, keys)
    if not settings.audit_key.get_secret_value():
        # The chain's key is derived from the secret key: pass it on with one entry signed by the old and the new.
        new_keys = audit_repo.AuditKeys(current=audit_repo.derived_key(new), previous=(keys.current,), head_path=keys.head_path)
        audit_repo.append(db, {**entry, "action": audit_repo.ROTATE, "target": "audit", "old_key": keys.current,
                               "details": {"old_key_id": keys.current_id, "new_key_id": new_keys.current_id}}, new_keys)
    return new, count, local
