"""Data sources for callers: register, change, list, preview; who may read and write each one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.services.auth import Principal
from server.services.context import Context
from server.core import crypto, datasources_repo, files, sqlsource
from server.core.clock import now_iso
from server.core.datasources_repo import DataSourceDoc
from server.core.errors import ForbiddenError, InvalidInputError
from server.core.keys_repo import role_rank
from server.core.settings import Settings


def may_access(doc: DataSourceDoc, principal: Principal, write: bool = False) -> bool:
    """Tell whether a caller may read (or write) a data source: admins, the listed roles and those above, listed keys."""
    if principal.role == "admin":
        return True
    roles = doc.get("writers" if write else "readers") or []
    keys = doc.get("writer_keys" if write else "reader_keys") or []
    if principal.key_id is not None and principal.key_id in keys:
        return True
    return any(role_rank(principal.role) >= role_rank(r) for r in roles)


def require_access(doc: DataSourceDoc, principal: Principal, write: bool = False) -> None:
    """Raise 403 unless the caller may read (or write) the data source."""
    if not may_access(doc, principal, write):
        verb = "write to" if write else "read"
        listed = doc.get("writers" if write else "readers") or []
        raise ForbiddenError(
            f"data source '{doc['_id']}' may be {'written' if write else 'read'} by roles {', '.join(listed) or 'admin only'}"
            f" (and listed API keys); your role '{principal.role}' may not {verb} it; ask an admin to add it",
            {"datasource": doc["_id"], "role": principal.role})


def view(doc: DataSourceDoc) -> dict[str, Any]:
    """Return a data source as the API shows it: never the secret, the URL only with its password masked."""
    return {"name": doc["_id"], "kind": doc["kind"], "url": doc.get("url_display"), "path": doc.get("path"),
            "readers": doc.get("readers", []), "writers": doc.get("writers", []),
            "reader_keys": doc.get("reader_keys", []), "writer_keys": doc.get("writer_keys", []),
            "description": doc.get("description", ""), "created_at": doc.get("created_at"),
            "created_by": doc.get("created_by"), "updated_at": doc.get("updated_at")}


def _connection_fields(settings: Settings, kind: str, url: str | None, path: str | None) -> dict[str, Any]:
    # Checked here rather than in the pydantic model: a validation message would echo the URL, password and all.
    if kind == "sql":
        if not url or path:
            raise InvalidInputError("a data source of kind 'sql' needs 'url' (a SQLAlchemy URL) and no 'path'")
        return {"url_token": crypto.encrypt(settings, url), "url_display": sqlsource.display_url(url), "path": None}
    if not path or url:
        raise InvalidInputError("a data source of kind 'file' needs 'path' (a directory inside a data root) and no 'url'")
    return {"url_token": None, "url_display": None, "path": str(files.check_directory(settings.data_roots, path))}


def register(ctx: Context, principal: Principal, fields: dict[str, Any]) -> DataSourceDoc:
    """Store a new data source with its URL encrypted."""
    crypto.cipher(ctx.settings)  # refuse before anything is stored when no key is configured
    now = now_iso()
    doc: DataSourceDoc = {
        "_id": fields["name"], "kind": fields["kind"],
        **_connection_fields(ctx.settings, fields["kind"], fields.get("url"), fields.get("path")),  # type: ignore[typeddict-item]
        "readers": fields["readers"], "writers": fields["writers"], "reader_keys": fields["reader_keys"],
        "writer_keys": fields["writer_keys"], "description": fields["description"],
        "created_at": now, "created_by": principal.subject, "updated_at": now,
    }
    return datasources_repo.create_datasource(ctx.db, doc)


def update(ctx: Context, name: str, fields: dict[str, Any]) -> tuple[DataSourceDoc, bool]:
    """Change a data source; return it and whether its secret (the URL) changed."""
    doc = datasources_repo.get_datasource(ctx.db, name)
    changes = {k: v for k, v in fields.items() if k not in ("url", "path") and v is not None}
    secret_changed = fields.get("url") is not None
    if secret_changed or fields.get("path") is not None:
        changes |= _connection_fields(ctx.settings, doc["kind"], fields.get("url"), fields.get("path"))
    return datasources_repo.update_datasource(ctx.db, name, changes), secret_changed


def url_of(settings: Settings, doc: DataSourceDoc) -> str:
    """Decrypt a SQL data source's URL (server side and in workers only)."""
    token = doc.get("url_token")
    if doc["kind"] != "sql" or not token:
        raise InvalidInputError(f"data source '{doc['_id']}' is not a SQL data source")
    return crypto.decrypt(settings, token)


def preview(ctx: Context, principal: Principal, name: str, query: str | None, table: str | None, file: str | None,
            params: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """Run a bounded read-only query (or read a file's first rows) for a caller allowed to read the source."""
    doc = datasources_repo.get_datasource(ctx.db, name)
    require_access(doc, principal)
    settings = ctx.settings
    rows = min(limit or settings.preview_max_rows, settings.preview_max_rows)
    if doc["kind"] == "file":
        if not file or query or table:
            raise InvalidInputError(f"data source '{name}' is a directory of files: give 'file' (a path inside it), "
                                    "not 'query' or 'table'")
        return files.preview_file(files.confine(Path(doc["path"] or ""), file), rows)
    if file or bool(query) == bool(table):
        raise InvalidInputError(f"data source '{name}' is SQL: give exactly one of 'query' (a SELECT, with :name "
                                "parameters from 'params') or 'table'")
    url = url_of(settings, doc)
    if table:
        schema, _, bare = table.rpartition(".")
        query = sqlsource.select_all(url, sqlsource.check_identifier(bare, "table"),
                                     sqlsource.check_identifier(schema, "table") if schema else None)
    return sqlsource.preview(name, url, query or "", params, rows, settings.preview_timeout_s)
