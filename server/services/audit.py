"""Write audit entries for state changes and denied requests, with who, what, where and the request id."""

from __future__ import annotations

import logging
import random
from typing import Any

from flask import current_app, g, request

from server.services.request_scope import request_id
from server.core import audit_repo
from server.core.clock import now_iso

logger = logging.getLogger(__name__)


def record(action: str, target: str, outcome: str = "success", status: int = 200,
           details: dict[str, Any] | None = None, actor: str | None = None) -> None:
    """Append one audit entry for the current request."""
    principal = g.get("principal")
    ctx = current_app.extensions["modeldeck"]
    entry = {
        "time": now_iso(),
        "actor": actor or (principal.subject if principal else "anonymous"),
        "method": principal.method if principal else None,
        "role": principal.role if principal else None,
        "action": action,
        "target": target,
        "outcome": outcome,
        "status": status,
        "request_id": request_id(),
        "client": request.remote_addr,
        "details": details or {},
    }
    audit_repo.append(ctx.db, entry, ctx.audit_keys)


def record_denied(status: int, reason: str, actor: str | None = None) -> None:
    """Record a refused request (401, 403, 429); never raises, so the refusal itself still goes out."""
    endpoint = request.endpoint or "unknown"
    try:
        record(f"denied.{endpoint}", request.path, outcome="denied", status=status,
               details={"reason": reason, "method": request.method}, actor=actor)
    except Exception:  # the caller must still get its 401/403 if the repository is down
        logger.exception("could not write the audit entry for a denied request %s", request_id())


def maybe_record_prediction(name: str, version: int, rows: int) -> None:
    """Record a successful prediction at the configured sample rate (never its payload)."""
    rate = current_app.extensions["modeldeck"].settings.audit_prediction_sample_rate
    if rate and random.random() < rate:
        record("model.predict", f"{name}:{version}", details={"rows": rows, "sample_rate": rate})
