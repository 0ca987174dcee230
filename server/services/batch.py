"""Batch-scoring jobs for callers: check model, source and destination, record the job, send it to the model's pool."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from server.services import predictions
from server.services.auth import Principal
from server.services.context import Context
from server.core import datasources_repo, files, jobs_repo, sqlsource, wire
from server.core.errors import InvalidInputError, UnavailableError, UnprocessableError
from server.services.datasources import require_access, url_of

Scalar = str | int | float | bool | None


class SourceSpec(BaseModel):
    """Where the rows come from: a data source (query, table or file), or the file uploaded with the job."""

    model_config = {"extra": "forbid"}

    datasource: str | None = Field(default=None, description="a data source the caller may read")
    query: str | None = Field(default=None, max_length=100000, description="SQL sources: a SELECT; values as :name parameters")
    params: dict[str, Scalar] = Field(default={}, description="bound parameters of the query")
    table: str | None = Field(default=None, description="SQL sources: a table (or schema.table) instead of a query")
    file: str | None = Field(default=None, description="file sources: a CSV or Parquet path inside the source")
    key: str | None = Field(default=None, description="a unique column to order and resume by (a table's primary key by default)")
    keep: list[str] = Field(default=[], description="source columns copied into every output row")
    features: list[str] | None = Field(default=None, description="columns fed to the model; default: the model's input schema")


class DestinationSpec(BaseModel):
    """Where the predictions go: a table in a SQL data source the caller may write, or a downloadable file."""

    model_config = {"extra": "forbid"}

    datasource: str | None = Field(default=None, description="a SQL data source the caller may write")
    table: str | None = Field(default=None, description="output table (or schema.table); created when absent")
    if_exists: Literal["fail", "append"] = Field(default="fail", description="what to do when the table already exists")
    format: Literal["csv", "parquet"] | None = Field(default=None, description="a file result, kept for MODELDECK_BATCH_RESULT_TTL_S")


def _split_table(value: str, field: str) -> tuple[str | None, str]:
    schema, _, table = value.rpartition(".")
    return (sqlsource.check_identifier(schema, field) if schema else None), sqlsource.check_identifier(table, field)


def _check_columns(columns: list[str], wanted: list[str], what: str) -> None:
    for name in wanted:
        if name not in columns:
            raise UnprocessableError(f"source has no column '{name}' ({what}); its columns are: {', '.join(columns)}",
                                     {"column": name, "columns": columns})


def _source(ctx: Context, principal: Principal, src: SourceSpec, upload: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Check a source and return what the worker needs (names only, never secrets) and its columns."""
    if upload is not None:
        if src.datasource or src.query or src.table or src.file:
            raise InvalidInputError("a job with an uploaded file takes its rows from that file; leave out "
                                    "'source.datasource', 'query', 'table' and 'file'")
        return ({"kind": "upload", "artifact": upload["sha256"], "filename": upload["filename"], "rows_total": upload["rows"]},
                upload["columns"])
    if not src.datasource:
        raise InvalidInputError("field 'source.datasource': expected the name of a data source (or upload a CSV "
                                "with POST /api/v1/jobs/upload), got nothing")
    doc = datasources_repo.get_datasource(ctx.db, src.datasource)
    require_access(doc, principal)
    if doc["kind"] == "file":
        if not src.file or src.query or src.table:
            raise InvalidInputError(f"data source '{src.datasource}' is a directory of files: give 'source.file'")
        path = files.confine(Path(doc["path"] or ""), src.file)
        files.file_format(path)
        names, _ = files.iter_rows(path, 1)
        return {"kind": "file", "datasource": src.datasource, "file": src.file}, names
    if src.file or bool(src.query) == bool(src.table):
        raise InvalidInputError(f"data source '{src.datasource}' is SQL: give exactly one of 'source.query' or 'source.table'")
    url = url_of(ctx.settings, doc)
    spec: dict[str, Any] = {"kind": "sql", "datasource": src.datasource, "params": src.params}
    if src.table:
        schema, table = _split_table(src.table, "source.table")
        key = src.key or sqlsource.primary_key(src.datasource, url, table, schema, ctx.settings.preview_timeout_s)
        spec |= {"table": table, "schema": schema, "key": key}
        query = sqlsource.select_all(url, table, schema)
    else:
        spec |= {"query": src.query, "key": src.key}
        query = src.query or ""
    columns = sqlsource.columns_of(src.datasource, url, query, src.params, ctx.settings.preview_timeout_s)
    return spec, columns


def _destination(ctx: Context, principal: Principal, dest: DestinationSpec) -> dict[str, Any]:
    if dest.format is not None:
        if dest.datasource or dest.table:
            raise InvalidInputError("field 'destination': give either 'format' (a downloadable file) or "
                                    "'datasource' and 'table', not both")
        return {"kind": "file", "format": dest.format}
    if not dest.datasource or not dest.table:
        raise InvalidInputError("field 'destination': expected 'format' ('csv' or 'parquet') or 'datasource' and 'table'")
    doc = datasources_repo.get_datasource(ctx.db, dest.datasource)
    if doc["kind"] != "sql":
        raise InvalidInputError(f"field 'destination.datasource': output goes to SQL data sources; '{dest.datasource}' is a {doc['kind']} source")
    require_access(doc, principal, write=True)
    schema, table = _split_table(dest.table, "destination.table")
    return {"kind": "sql", "datasource": dest.datasource, "table": table, "schema": schema, "if_exists": dest.if_exists}


def submit_batch(ctx: Context, principal: Principal, model: str, ref: int | str | None, source: SourceSpec,
                 destination: DestinationSpec | None, chunk_rows: int | None, upload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a queued batch-scoring job and send it durably to the model's pool."""
    doc = predictions.resolve(ctx, principal, model, ref)
    if doc.get("format") == "huggingface":
        # Batch scoring sends table rows to predict; text models take strings and a method (not yet wired here).
        raise InvalidInputError(f"model '{model}' is a text model (format huggingface): batch scoring does not "
                                "serve text models yet; call predict with method encode or generate, or ?async=true",
                                {"field": "model", "value": model})
    if destination is None:
        raise InvalidInputError("field 'destination': expected {'format': 'csv' | 'parquet'} or "
                                "{'datasource': ..., 'table': ...}, got nothing")
    src, columns = _source(ctx, principal, source, upload)
    dest = _destination(ctx, principal, destination)
    schema_names = [f["name"] for f in doc.get("input_schema") or []]
    key = src.get("key")
    features = source.features or schema_names or [c for c in columns if c != key and c not in source.keep]
    if schema_names and features != schema_names:
        raise UnprocessableError(f"field 'source.features': model '{model}' takes {', '.join(schema_names)} in that "
                                 f"order, got {', '.join(features)}", {"expected": schema_names})
    _check_columns(columns, features, "a model feature")
    _check_columns(columns, source.keep, "in 'source.keep'")
    if key:
        _check_columns(columns, [key], "'source.key'")
    for name in (key, *source.keep):
        if name in ("row_number", "prediction"):
            raise InvalidInputError(f"source column '{name}' clashes with an output column (row_number, prediction); "
                                    "rename it in the query")
    predictions.check_pool(ctx, doc)
    job_id = "job_" + uuid.uuid4().hex
    params = {"model": model, "version": doc["version"], "model_ref": wire.model_ref(doc), "source": src,
              "destination": dest, "features": features, "keep": [c for c in source.keep if c != key],
              "feature_types": [f["type"] for f in doc.get("input_schema") or []] or None,
              "chunk_rows": chunk_rows or ctx.settings.batch_chunk_rows}
    progress = {"rows_done": 0, "rows_total": None, "chunks_done": 0}
    job = jobs_repo.create_job(ctx.db, job_id, "batch", principal.subject, params, ctx.settings.batch_result_ttl_s, progress)
    try:
        ctx.router.send(doc["pool"], wire.BATCH_JOB_TASK, [job_id], job_id)
    except UnavailableError:
        jobs_repo.delete_job(ctx.db, job_id)
        raise
    return job
