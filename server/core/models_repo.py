"""Models, their immutable versions and movable aliases, stored in MongoDB."""

from __future__ import annotations

import re
from typing import Any, TypedDict

from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from server.core.clock import now_iso
from server.core.errors import ConflictError, NotFoundError

ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,49}$")


class _FieldRequired(TypedDict):
    name: str
    type: str  # number | integer | string | boolean | category


class FieldSpec(_FieldRequired, total=False):
    nullable: bool  # null (None, NaN, pd.NA as fits the dtype) is a valid value
    categories: list[Any]  # a category field's categories, in the order the model was fitted with


class VersionDoc(TypedDict, total=False):
    _id: str
    name: str
    version: int
    format: str
    pool: str
    min_memory_mb: int
    sha256: str
    size: int
    input_schema: list[FieldSpec] | None
    description: str
    requirements: list[str]
    trusted_types: list[str]
    reference_stats: dict[str, Any] | None
    monitoring: dict[str, Any] | None
    created_at: str
    created_by: str
    archived: bool
    filename: str
    methods: list[str] | None  # what the model offers (server/core/model_info.py); None: not known until loaded
    classes: list[Any] | None  # a classifier's labels, in the order of its probability columns
    feature_names: list[str] | None  # the named features it was fitted on; None: it takes an array
    example: dict[str, Any] | None  # one input row, the console form's starting point when there is no reference
    task: str  # huggingface: "embedding" | "text-generation"
    parameters: int  # huggingface: elements of its weight tensors
    weights_bytes: int  # huggingface: bytes of its weights as stored (what loading them needs at least)
    serving: dict[str, Any]  # huggingface: device and dtype its pool loads it with


def create_version(db: Database, doc: VersionDoc) -> VersionDoc:
    """Insert the next version of a model; the version doc is written last, so it is all-or-nothing."""
    name = doc["name"]
    for _ in range(20):
        last = db.versions.find_one({"name": name}, {"version": 1}, sort=[("version", DESCENDING)])
        version = (last["version"] if last else 0) + 1
        new: VersionDoc = {**doc, "_id": f"{name}:{version}", "version": version, "created_at": now_iso(), "archived": False}
        try:
            db.versions.insert_one(dict(new))
        except DuplicateKeyError:
            # A concurrent upload took this number; take the next one.
            continue
        try:
            db.models.insert_one({"_id": name, "name": name, "created_at": new["created_at"], "aliases": {}})
        except DuplicateKeyError:
            pass
        return new
    raise ConflictError(f"could not allocate a version for model '{name}': too many concurrent uploads; retry")


def list_models(db: Database, prefix: str, limit: int, offset: int,
                names: tuple[str, ...] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Return one page of models whose name starts with a prefix (and is one of names, when given), and the total."""
    clauses: list[dict[str, Any]] = []
    if prefix:
        clauses.append({"_id": {"$regex": "^" + re.escape(prefix)}})
    if names is not None:
        clauses.append({"_id": {"$in": list(names)}})
    query: dict[str, Any] = {"$and": clauses} if len(clauses) > 1 else (clauses[0] if clauses else {})
    total = db.models.count_documents(query)
    models = list(db.models.find(query).sort("_id", 1).skip(offset).limit(limit))
    for model in models:
        latest = db.versions.find_one(
            {"name": model["_id"], "archived": False}, {"version": 1}, sort=[("version", DESCENDING)]
        )
        model["latest_version"] = latest["version"] if latest else None
    return models, total


def get_model(db: Database, name: str) -> dict[str, Any]:
    """Return a model with its versions, or raise NotFoundError."""
    model = db.models.find_one({"_id": name})
    if model is None:
        raise NotFoundError(f"model '{name}' does not exist", {"name": name})
    model["versions"] = list(db.versions.find({"name": name}).sort("version", 1))
    return model


def get_version(db: Database, name: str, version: int) -> VersionDoc:
    """Return one version, archived or not, or raise NotFoundError."""
    doc = db.versions.find_one({"_id": f"{name}:{version}"})
    if doc is None:
        if db.models.find_one({"_id": name}, {"_id": 1}) is None:
            raise NotFoundError(f"model '{name}' does not exist", {"name": name})
        raise NotFoundError(f"model '{name}' has no version {version}", {"name": name, "version": version})
    return doc  # type: ignore[return-value]


def resolve_version(db: Database, name: str, ref: int | str | None) -> VersionDoc:
    """Resolve a version number, an alias or nothing (production alias, else latest) to a live version."""
    model = db.models.find_one({"_id": name})
    if model is None:
        raise NotFoundError(f"model '{name}' does not exist", {"name": name})
    aliases: dict[str, int] = model.get("aliases") or {}
    if isinstance(ref, str):
        if ref not in aliases:
            raise NotFoundError(
                f"model '{name}' has no alias '{ref}'; known aliases: {', '.join(sorted(aliases)) or 'none'}",
                {"name": name, "alias": ref},
            )
        doc = get_version(db, name, aliases[ref])
    elif isinstance(ref, int):
        doc = get_version(db, name, ref)
    elif "production" in aliases:
        doc = get_version(db, name, aliases["production"])
    else:
        found = db.versions.find_one({"name": name, "archived": False}, sort=[("version", DESCENDING)])
        if found is None:
            raise NotFoundError(f"model '{name}' has no live version", {"name": name})
        doc = found  # type: ignore[assignment]
    if doc.get("archived"):
        raise NotFoundError(f"model '{name}' version {doc['version']} is archived", {"name": name, "version": doc["version"]})
    return doc


def set_alias(db: Database, name: str, alias: str, version: int) -> tuple[int | None, dict[str, int]]:
    """Point an alias at a live version; return the version it pointed at before and the model's aliases."""
    doc = get_version(db, name, version)
    if doc.get("archived"):
        raise ConflictError(f"model '{name}' version {version} is archived; an alias cannot point at it")
    before = (db.models.find_one({"_id": name}, {"aliases": 1}) or {}).get("aliases", {}).get(alias)
    db.models.update_one({"_id": name}, {"$set": {f"aliases.{alias}": version}})
    return before, get_model(db, name).get("aliases", {})


def set_monitoring(db: Database, name: str, version: int, policy: dict[str, Any]) -> tuple[dict[str, Any] | None, VersionDoc]:
    """Replace a version's monitoring policy (logging and thresholds); return the old policy and the version."""
    doc = get_version(db, name, version)
    old = doc.get("monitoring")
    db.versions.update_one({"_id": doc["_id"]}, {"$set": {"monitoring": policy}})
    doc["monitoring"] = policy
    return old, doc


def archive_version(db: Database, name: str, version: int) -> VersionDoc:
    """Archive a version no alias points at."""
    doc = get_version(db, name, version)
    aliases = (db.models.find_one({"_id": name}) or {}).get("aliases", {})
    pointing = sorted(a for a, v in aliases.items() if v == version)
    if pointing:
        raise ConflictError(
            f"model '{name}' version {version} is the target of alias {', '.join(repr(a) for a in pointing)}; "
            "move the alias to another version first",
            {"aliases": pointing},
        )
    db.versions.update_one({"_id": doc["_id"]}, {"$set": {"archived": True, "archived_at": now_iso()}})
    doc["archived"] = True
    return doc
