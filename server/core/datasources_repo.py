"""Data sources in the repository: connection details, access lists, and the URL only as a Fernet token."""

from __future__ import annotations

from typing import Any, TypedDict

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from server.core.clock import now_iso
from server.core.errors import ConflictError, NotFoundError


class DataSourceDoc(TypedDict, total=False):
    _id: str  # the name
    kind: str  # "sql" | "file"
    url_token: str | None  # Fernet token of the full SQLAlchemy URL (sql only)
    url_display: str | None  # the URL with its password masked
    path: str | None  # absolute directory inside a data root (file only)
    readers: list[str]  # roles (and the roles above them) that may read
    writers: list[str]  # roles that may write scoring output into it
    reader_keys: list[str]  # API key ids that may read whatever their role
    writer_keys: list[str]
    description: str
    created_at: str
    created_by: str
    updated_at: str


def create_datasource(db: Database, doc: DataSourceDoc) -> DataSourceDoc:
    """Insert a new data source, refusing a name in use."""
    try:
        db.datasources.insert_one(dict(doc))
    except DuplicateKeyError as exc:
        raise ConflictError(f"data source '{doc['_id']}' already exists; update it with PUT or pick another name",
                            {"name": doc["_id"]}) from exc
    return doc


def get_datasource(db: Database, name: str) -> DataSourceDoc:
    """Return a data source or raise NotFoundError."""
    doc = db.datasources.find_one({"_id": name})
    if doc is None:
        raise NotFoundError(f"data source '{name}' does not exist", {"name": name})
    return doc  # type: ignore[no-any-return]


def list_datasources(db: Database) -> list[DataSourceDoc]:
    """Return every data source, by name."""
    return list(db.datasources.find({}).sort("_id", 1))


def update_datasource(db: Database, name: str, changes: dict[str, Any]) -> DataSourceDoc:
    """Apply changes to a data source and return it."""
    get_datasource(db, name)
    db.datasources.update_one({"_id": name}, {"$set": {**changes, "updated_at": now_iso()}})
    return get_datasource(db, name)


def delete_datasource(db: Database, name: str) -> DataSourceDoc:
    """Remove a data source and return what it was."""
    doc = get_datasource(db, name)
    db.datasources.delete_one({"_id": name})
    return doc


def count_datasources(db: Database) -> int:
    """Count registered data sources."""
    return db.datasources.count_documents({})


def replace_token(db: Database, name: str, old: str, new: str) -> bool:
    """Swap one data source's token if it is still the one read (key rotation); return whether it was."""
    return db.datasources.update_one({"_id": name, "url_token": old}, {"$set": {"url_token": new}}).modified_count == 1
