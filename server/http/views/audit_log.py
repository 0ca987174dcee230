"""The audit trail: browse with filters, export as CSV, verify the hash chain."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, Literal

from flask import Response, current_app, stream_with_context
from pydantic import BaseModel, Field

from server.http.api import MAX_INT, Api, json_response
from server.core import audit_repo
from server.core.errors import InvalidInputError

api = Api("audit", "/api/v1/audit")

COLUMNS = ["seq", "time", "actor", "method", "role", "action", "target", "outcome", "status", "request_id", "client",
           "details", "hash"]


class AuditQuery(BaseModel):
    model_config = {"extra": "forbid"}

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    target_prefix: str | None = None
    outcome: Literal["success", "denied", "failed"] | None = None
    since: str | None = Field(default=None, description="ISO-8601 UTC, inclusive")
    until: str | None = Field(default=None, description="ISO-8601 UTC, exclusive")
    limit: int = Field(default=100, ge=1, le=1000)
    before: int | None = Field(default=None, ge=1, le=MAX_INT, description="return entries older than this seq (from next_before)")


def entry_view(doc: dict[str, Any]) -> dict[str, Any]:
    """Return an entry as the API shows it."""
    return {"seq": doc["seq"], **{k: doc.get(k) for k in audit_repo.FIELDS}, "hash": doc.get("hash")}


def _filters(query: AuditQuery) -> dict[str, str | None]:
    return query.model_dump(include={"actor", "action", "target", "target_prefix", "outcome", "since", "until"})


@api.route("", "GET", "operator", "Browse the audit trail, newest first", query=AuditQuery)
def list_entries(query: AuditQuery) -> Response:
    db = current_app.extensions["modeldeck"].db
    docs = audit_repo.query(db, _filters(query), query.limit, query.before)
    next_before = docs[-1]["seq"] if len(docs) == query.limit else None
    return json_response({"entries": [entry_view(d) for d in docs], "next_before": next_before})


@api.route("/export", "GET", "admin", "Export the filtered audit trail as CSV", query=AuditQuery)
def export(query: AuditQuery) -> Response:
    db = current_app.extensions["modeldeck"].db
    filters = _filters(query)

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(COLUMNS)
        before = query.before
        while True:
            docs = audit_repo.query(db, filters, audit_repo.WALK_BATCH, before)
            for doc in docs:
                view = entry_view(doc)
                view["details"] = str(view["details"])
                writer.writerow([view[c] for c in COLUMNS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(docs) < audit_repo.WALK_BATCH:
                return
            before = docs[-1]["seq"]

    resp = Response(stream_with_context(rows()), mimetype="text/csv")
    resp.headers["Content-Disposition"] = 'attachment; filename="modeldeck-audit.csv"'
    return resp


class VerifyQuery(BaseModel):
    model_config = {"extra": "forbid"}

    head_seq: int | None = Field(default=None, ge=1, le=MAX_INT, description="the 'head.seq' of an earlier answer you kept")
    head_mac: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="the 'head.mac' of that answer")


@api.route("/verify", "GET", "admin", "Verify the audit trail's HMAC chain (and against a head you kept); keep the answer's head",
           query=VerifyQuery)
def verify(query: VerifyQuery) -> Response:
    if (query.head_seq is None) != (query.head_mac is None):
        raise InvalidInputError("query parameters 'head_seq' and 'head_mac': give both (from the 'head' of an earlier "
                                f"answer) or neither, got head_seq={query.head_seq!r}, head_mac={query.head_mac!r}")
    ctx = current_app.extensions["modeldeck"]
    kept = (query.head_seq, query.head_mac) if query.head_seq is not None and query.head_mac is not None else None
    return json_response(audit_repo.verify(ctx.db, ctx.audit_keys, kept))
