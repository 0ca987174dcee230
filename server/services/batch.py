"""Batch-scoring jobs for callers: check model, source and destination, record the job, send it to the model's pool."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from server.services import predictions
from server.services.auth import Principal
from server.services.context import Context
from server.core import datasources_repo, files, jobs_repo, sqlsource, wire
from server.core.model_info import PROBA_METHODS
from server.core.errors import ConflictError, InvalidInputError, UnprocessableError
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
    key: str | list[str] | None = Field(default=None, description="a unique column, or columns, to order, split and resume "
                                       "by (a table's primary or unique key by default)")
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
        return ({"kind": "upload", "artifact": upload["sha256"], "filename": upload["filename"], "rows_total": upload["rows"],
                 "order": "position"},
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
        return {"kind": "file", "datasource": src.datasource, "file": src.file, "order": "position"}, names
    if src.file or bool(src.query) == bool(src.table):
        raise InvalidInputError(f"data source '{src.datasource}' is SQL: give exactly one of 'source.query' or 'source.table'")
    url = url_of(ctx.settings, doc)
    spec: dict[str, Any] = {"kind": "sql", "datasource": src.datasource, "params": src.params}
    declared = [src.key] if isinstance(src.key, str) else list(src.key or [])
    if src.table:
        schema, table = _split_table(src.table, "source.table")
        found, physical = sqlsource.table_order(src.datasource, url, table, schema, ctx.settings.preview_timeout_s)
        keys = declared or found
        # Without a key: PostgreSQL's physical order (ctid ranges), else one pass that cannot resume (job.source.order).
        order = "key" if keys else ("ctid" if physical else "none")
        spec |= {"table": table, "schema": schema, "key": _key_value(keys), "order": order}
        query = sqlsource.select_all(url, table, schema)
    else:
        spec |= {"query": src.query, "key": _key_value(declared), "order": "key" if declared else "position"}
        query = src.query or ""
    columns = sqlsource.columns_of(src.datasource, url, query, src.params, ctx.settings.preview_timeout_s)
    return spec, columns


def _key_value(keys: list[str]) -> str | list[str] | None:
    """Return a key as jobs show it: one column as its name, several as a list."""
    return keys[0] if len(keys) == 1 else (keys or None)


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
    if dest.if_exists == "fail" and sqlsource.has_table(dest.datasource, url_of(ctx.settings, doc), table, schema,
                                                        ctx.settings.preview_timeout_s):
        raise ConflictError(sqlsource.table_exists_message(dest.table, dest.datasource),
                            {"table": dest.table, "datasource": dest.datasource, "if_exists": ["fail", "append"]})
    return {"kind": "sql", "datasource": dest.datasource, "table": table, "schema": schema, "if_exists": dest.if_exists}


def output_columns(doc: Any, method: str) -> list[str]:
    """Name the columns a job writes its model's answer to: one per class for probabilities, else 'prediction'."""
    classes = doc.get("classes")
    if method not in PROBA_METHODS or not classes:
        return ["prediction"]
    names = ["proba_" + re.sub(r"[^A-Za-z0-9_]", "_", str(label)) for label in classes]
    if len(set(names)) < len(names):
        raise UnprocessableError(
            f"model '{doc['name']}' has class labels that give the same column name ({', '.join(map(str, classes))}); "
            "use method 'predict', or labels that differ in letters, digits or '_'", {"classes": classes})
    return names


def submit_batch(ctx: Context, principal: Principal, model: str, ref: int | str | None, source: SourceSpec,
                 destination: DestinationSpec | None, chunk_rows: int | None, upload: dict[str, Any] | None = None,
                 method: str = "predict") -> dict[str, Any]:
    """Record a queued batch-scoring job and send it durably to the model's pool."""
    doc = predictions.resolve(ctx, principal, model, ref)
    if doc.get("format") == "huggingface":
        # Batch scoring sends table rows to predict; text models take strings and a method (not yet wired here).
        raise InvalidInputError(f"model '{model}' is a text model (format huggingface): batch scoring does not "
                                "serve text models yet; call predict with method encode or generate, or ?async=true",
                                {"field": "model", "value": model})
    predictions.check_method(doc, method)
    outputs = output_columns(doc, method)
    if destination is None:
        raise InvalidInputError("field 'destination': expected {'format': 'csv' | 'parquet'} or "
                                "{'datasource': ..., 'table': ...}, got nothing")
    src, columns = _source(ctx, principal, source, upload)
    dest = _destination(ctx, principal, destination)
    schema_names = [f["name"] for f in doc.get("input_schema") or []]
    key = src.get("key")
    keys = [key] if isinstance(key, str) else list(key or [])
    features = source.features or schema_names or [c for c in columns if c not in keys and c not in source.keep]
    if schema_names and features != schema_names:
        raise UnprocessableError(f"field 'source.features': model '{model}' takes {', '.join(schema_names)} in that "
                                 f"order, got {', '.join(features)}", {"expected": schema_names})
    _check_columns(columns, features, "a model feature")
    _check_columns(columns, source.keep, "in 'source.keep'")
    _check_columns(columns, keys, "'source.key'")
    for name in (*keys, *source.keep):
        if name in ("row_number", *outputs):
            raise InvalidInputError(f"source column '{name}' clashes with an output column (row_number, "
                                    f"{', '.join(outputs)}); rename it in the query")
    predictions.check_pool(ctx, doc)
    job_id = "job_" + uuid.uuid4().hex
    params = {"model": model, "version": doc["version"], "model_ref": wire.model_ref(doc), "source": src,
              "destination": dest, "features": features, "keep": [c for c in source.keep if c not in keys],
              "feature_types": [f["type"] for f in doc.get("input_schema") or []] or None,
              "method": method, "columns": predictions.frame_columns(doc), "outputs": outputs,
              "chunk_rows": chunk_rows or ctx.settings.batch_chunk_rows}
    progress = {"rows_done": 0, "rows_total": None, "chunks_done": 0}
    job = jobs_repo.create_job(ctx.db, job_id, "batch", principal.subject, params, ctx.settings.batch_result_ttl_s, progress)
    return predictions.queue_job(ctx, doc["pool"], wire.BATCH_JOB_TASK, job)
