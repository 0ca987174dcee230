"""Models: upload versions, list, inspect, move aliases, archive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, g, request, stream_with_context
from pydantic import BaseModel, Field

from server.services import audit
from server.http.api import MAX_INT, MAX_OFFSET, Api, json_response
from server.http.scope import scope_models
from server.core import models_repo
from server.core.artifacts import iter_artifact
from server.core.errors import InvalidInputError
from server.core.models_repo import ALIAS_RE
from server.services.uploads import MonitoringPolicy, UploadMetadata, upload_model

api = Api("models", "/api/v1/models")


class ListQuery(BaseModel):
    prefix: str = ""
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class AliasBody(BaseModel):
    version: int = Field(ge=1, le=MAX_INT)


def version_view(doc: Any) -> dict[str, Any]:
    """Return a version as the API shows it (no reference samples, no internal ids)."""
    stats = doc.get("reference_stats")
    summary = None
    if stats:
        summary = {"rows": stats["rows"], "features": {
            k: {kk: vv for kk, vv in v.items() if kk != "sample"} for k, v in stats["features"].items()}}
    return {
        "name": doc["name"], "version": doc["version"], "format": doc["format"], "pool": doc["pool"],
        "min_memory_mb": doc.get("min_memory_mb", 0), "sha256": doc["sha256"], "size": doc["size"],
        "input_schema": doc.get("input_schema"), "description": doc.get("description", ""),
        "requirements": doc.get("requirements", []), "reference": summary, "filename": doc.get("filename"),
        "created_at": doc["created_at"], "created_by": doc.get("created_by"),
        "status": "archived" if doc.get("archived") else "active",
        "monitoring": doc.get("monitoring"),
        "methods": doc.get("methods"), "classes": doc.get("classes"), "feature_names": doc.get("feature_names"),
        "example": doc.get("example"),
        **({"task": doc.get("task"), "parameters": doc.get("parameters"), "weights_bytes": doc.get("weights_bytes"),
            "serving": doc.get("serving")} if doc.get("format") == "huggingface" else {}),
    }


def _ctx() -> Any:
    return current_app.extensions["modeldeck"]


upload_schema = {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "metadata"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the model artifact"},
            "metadata": {"type": "string", "description": "JSON: " + ", ".join(UploadMetadata.model_fields)},
            "reference": {"type": "string", "format": "binary", "description": "optional CSV with a header row"},
        },
    }}
}


@api.route("", "POST", "operator", "Upload a new model version", request_schema=upload_schema, status=201,
           scope="form:metadata.name")
def upload() -> Response:
    ctx = _ctx()
    doc = upload_model(ctx.db, ctx.settings, g.principal, request.form.get("metadata"),
                       request.files.get("file"), request.files.get("reference"))
    ctx.changed("model", doc["name"])
    audit.record("model.upload", f"{doc['name']}:{doc['version']}", status=201, details={
        "format": doc["format"], "pool": doc["pool"], "sha256": doc["sha256"], "size": doc["size"],
        "pickle": doc["format"] in ("pickle", "joblib")})
    return json_response(version_view(doc), 201)


@api.route("", "GET", "analyst", "List models, filtered by name prefix", query=ListQuery, scope="list")
def list_models(query: ListQuery) -> Response:
    models, total = models_repo.list_models(_ctx().db, query.prefix, query.limit, query.offset, scope_models())
    items = [{"name": m["_id"], "aliases": m.get("aliases", {}), "latest_version": m["latest_version"],
              "created_at": m["created_at"]} for m in models]
    return json_response({"models": items, "total": total, "limit": query.limit, "offset": query.offset})


@api.route("/<name>", "GET", "service", "Show a model with its versions and aliases", scope="path:name")
def get_model(name: str) -> Response:
    model = models_repo.get_model(_ctx().db, name)
    versions = [version_view(v) for v in model["versions"]]
    live = [v for v in versions if v["status"] == "active"]
    return json_response({
        "name": name, "aliases": model.get("aliases", {}), "versions": versions,
        "latest_version": live[-1]["version"] if live else None, "created_at": model["created_at"],
        "input_schema": live[-1]["input_schema"] if live else None,
    })


@api.route("/<name>/versions/<int:version>", "GET", "service", "Show one version", scope="path:name")
def get_version(name: str, version: int) -> Response:
    return json_response(version_view(models_repo.get_version(_ctx().db, name, version)))


@api.route("/<name>/versions/<int:version>/artifact", "GET", "operator", "Download a version's artifact, byte for byte",
           scope="path:name")
def download_artifact(name: str, version: int) -> Response:
    doc = models_repo.get_version(_ctx().db, name, version)
    chunks = iter_artifact(_ctx().db, doc["sha256"])
    first = next(chunks, b"")  # fail before the headers are sent if the artifact is missing
    resp = Response(stream_with_context(_chain(first, chunks)), mimetype="application/octet-stream")
    resp.headers["Content-Length"] = str(doc["size"])
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}-{version}.{doc["format"]}"'
    resp.headers["X-Checksum-Sha256"] = doc["sha256"]
    return resp


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


@api.route("/<name>/aliases/<alias>", "PUT", "operator", "Point an alias at a version (promote or roll back)", body=AliasBody,
           scope="path:name")
def set_alias(name: str, alias: str, body: AliasBody) -> Response:
    if not ALIAS_RE.match(alias) or alias == "latest":
        raise InvalidInputError(
            f"alias {alias!r} is not allowed: use a letter then letters, digits, '_' or '-' (at most 50), not 'latest'"
        )
    old, aliases = models_repo.set_alias(_ctx().db, name, alias, body.version)
    _ctx().changed("model", name)
    audit.record("model.alias", name, details={"alias": alias, "old_version": old, "new_version": body.version})
    return json_response({"name": name, "alias": alias, "version": body.version, "aliases": aliases})


@api.route("/<name>/versions/<int:version>/monitoring", "PUT", "operator",
           "Replace a version's prediction logging and alert thresholds", body=MonitoringPolicy, scope="path:name")
def set_monitoring(name: str, version: int, body: MonitoringPolicy) -> Response:
    old, doc = models_repo.set_monitoring(_ctx().db, name, version, body.model_dump())
    _ctx().changed("model", name)
    audit.record("model.monitoring", f"{name}:{version}", details={"old": old, "new": doc["monitoring"]})
    return json_response(version_view(doc))


@api.route("/<name>/versions/<int:version>", "DELETE", "admin", "Archive a version no alias points at", scope="path:name")
def archive_version(name: str, version: int) -> Response:
    doc = models_repo.archive_version(_ctx().db, name, version)
    _ctx().changed("model", name)
    audit.record("model.archive", f"{name}:{version}")
    return json_response(version_view(doc))
