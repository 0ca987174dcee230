"""Data sources: admins register, change and remove them; listed roles and keys list and preview them."""

from __future__ import annotations

from typing import Any, Literal

from flask import Response, current_app, g
from pydantic import BaseModel, Field

from server.services import audit, datasources
from server.http.api import Api, json_response
from server.core import datasources_repo

api = Api("datasources", "/api/v1/datasources")

Role = Literal["admin", "operator", "analyst", "service"]
Scalar = str | int | float | bool | None


class DataSourceBody(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="letters, digits, '.', '_', '-'")
    kind: Literal["sql", "file"]
    url: str | None = Field(default=None, description="SQLAlchemy URL (write-only: never returned)")
    path: str | None = Field(default=None, description="absolute directory inside MODELDECK_DATA_ROOTS (file sources)")
    readers: list[Role] = Field(default=["operator"], description="roles that may read it (and the roles above them)")
    writers: list[Role] = Field(default=[], description="roles that may write scoring output into it")
    reader_keys: list[str] = Field(default=[], description="API key ids that may read it whatever their role")
    writer_keys: list[str] = Field(default=[], description="API key ids that may write to it")
    description: str = Field(default="", max_length=500)


class DataSourceChange(BaseModel):
    model_config = {"extra": "forbid"}

    url: str | None = None
    path: str | None = None
    readers: list[Role] | None = None
    writers: list[Role] | None = None
    reader_keys: list[str] | None = None
    writer_keys: list[str] | None = None
    description: str | None = Field(default=None, max_length=500)


class PreviewBody(BaseModel):
    model_config = {"extra": "forbid"}

    query: str | None = Field(default=None, max_length=100000, description="a SELECT; values only as :name parameters")
    params: dict[str, Scalar] = Field(default={}, description="bound parameters of the query")
    table: str | None = Field(default=None, description="instead of a query: a table, optionally schema.table")
    file: str | None = Field(default=None, description="file sources: a CSV or Parquet path inside the source")
    limit: int | None = Field(default=None, ge=1, description="rows to return; capped at MODELDECK_PREVIEW_MAX_ROWS")


def _audit_details(doc: Any, secret_changed: bool) -> dict[str, Any]:
    # Never the URL: the audit entry says that a secret changed, not what it is.
    return {"kind": doc["kind"], "readers": doc.get("readers"), "writers": doc.get("writers"),
            "reader_keys": doc.get("reader_keys"), "writer_keys": doc.get("writer_keys"), "secret_changed": secret_changed}


@api.route("", "POST", "admin", "Register a data source (its URL is encrypted and never returned)", body=DataSourceBody, status=201)
def create_datasource(body: DataSourceBody) -> Response:
    ctx = current_app.extensions["modeldeck"]
    doc = datasources.register(ctx, g.principal, body.model_dump())
    audit.record("datasource.create", doc["_id"], status=201, details=_audit_details(doc, doc["kind"] == "sql"))
    return json_response(datasources.view(doc), 201)


@api.route("", "GET", "analyst", "List the data sources the caller may read", scope="none")
def list_datasources() -> Response:
    ctx = current_app.extensions["modeldeck"]
    docs = [d for d in datasources_repo.list_datasources(ctx.db) if datasources.may_access(d, g.principal)]
    return json_response({"datasources": [datasources.view(d) for d in docs]})


@api.route("/<name>", "GET", "analyst", "Show a data source (without its secret)", scope="none")
def get_datasource(name: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    doc = datasources_repo.get_datasource(ctx.db, name)
    datasources.require_access(doc, g.principal)
    return json_response(datasources.view(doc))


@api.route("/<name>", "PUT", "admin", "Change a data source's URL, path or access lists", body=DataSourceChange)
def update_datasource(name: str, body: DataSourceChange) -> Response:
    ctx = current_app.extensions["modeldeck"]
    doc, secret_changed = datasources.update(ctx, name, body.model_dump())
    audit.record("datasource.update", name, details=_audit_details(doc, secret_changed))
    return json_response(datasources.view(doc))


@api.route("/<name>", "DELETE", "admin", "Remove a data source and its encrypted secret")
def delete_datasource(name: str) -> Response:
    ctx = current_app.extensions["modeldeck"]
    doc = datasources_repo.delete_datasource(ctx.db, name)
    audit.record("datasource.delete", name, details=_audit_details(doc, doc["kind"] == "sql"))
    return json_response(datasources.view(doc))


@api.route("/<name>/preview", "POST", "analyst", "Run a bounded read-only query and return rows and column types", body=PreviewBody,
           scope="none")
def preview_datasource(name: str, body: PreviewBody) -> Response:
    ctx = current_app.extensions["modeldeck"]
    return json_response(datasources.preview(ctx, g.principal, name, body.query, body.table, body.file,
                                             body.params, body.limit))
