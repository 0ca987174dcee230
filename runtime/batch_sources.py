"""Read a batch job's rows in one pass, chunk by chunk, as arrow tables (sources that cannot be split into ranges).

These are a query without a key, a CSV file or upload, and any source on a database other than PostgreSQL. A resumed
job continues after its last committed chunk: past the last key when the source is ordered by a unique key, else
after skipping the rows already scored (a query needs a deterministic ORDER BY). Sources that can be split
(runtime/batch_plan.py) are read range by range instead, by every worker of the pool.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pymongo.database import Database
from sqlalchemy import MetaData, Table, bindparam, func, literal_column, select, text
from sqlalchemy.sql import column

from runtime import batch_pg
from runtime.batch_arrow import table_from_rows
from server.core import crypto, datasources_repo, files, sqlsource
from server.core.artifacts import iter_artifact
from server.core.settings import Settings


@dataclass(frozen=True)
class Committed:
    """How far a job's output got: chunks and rows committed, and the key of the last row."""

    chunks: int = 0
    rows: int = 0
    last_key: Any = None


def key_columns(source: dict[str, Any]) -> list[str]:
    """Return the columns a source is ordered and resumed by (none for a source read in its own order)."""
    key = source.get("key")
    return [key] if isinstance(key, str) else list(key or [])


def _rechunk(tables: Iterator[pa.Table], n: int, skip: int) -> Iterator[pa.Table]:
    """Yield tables of exactly n rows (the last may be shorter), after dropping the first `skip` rows."""
    pending: list[pa.Table] = []
    size = 0
    for table in tables:
        if skip:
            cut = min(skip, table.num_rows)
            table, skip = table.slice(cut), skip - cut
        if not table.num_rows:
            continue
        pending.append(table)
        size += table.num_rows
        while size >= n:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, n)
            rest = joined.slice(n)
            pending, size = ([rest] if rest.num_rows else []), rest.num_rows
    if size:
        yield pa.concat_tables(pending)


def _sql_statement(conn: Any, source: dict[str, Any], done: Committed) -> tuple[Any, dict[str, Any], int]:
    """Return the statement, its parameters and how many leading rows to skip."""
    keys = key_columns(source)
    params = dict(source.get("params") or {})
    if source.get("table"):
        table = Table(source["table"], MetaData(), schema=source.get("schema"), autoload_with=conn)
        base, key_cols = select(table), [table.c[k] for k in keys]
    elif keys:
        sub = text(source["query"]).columns(*map(column, keys)).subquery("modeldeck_source")
        base, key_cols = select(literal_column("*")).select_from(sub), [sub.c[k] for k in keys]
    else:
        return text(source["query"]), params, done.rows
    if len(key_cols) != 1:
        # Another dialect's table without a single-column key: read in its own order, not resumable (stated in the job).
        return base.order_by(*key_cols) if key_cols else base, params, done.rows
    stmt = base.order_by(key_cols[0])
    if done.last_key is not None:
        stmt = stmt.where(key_cols[0] > bindparam("modeldeck_last_key"))
        params["modeldeck_last_key"] = done.last_key
    return stmt, params, 0


def _sqlalchemy_chunks(settings: Settings, url: str, source: dict[str, Any], chunk_rows: int, done: Committed) -> Iterator[pa.Table]:
    with sqlsource.read_only(url, settings.batch_statement_timeout_s) as conn:
        stmt, params, skip = _sql_statement(conn, source, done)
        result = conn.execution_options(yield_per=chunk_rows).execute(stmt, params)
        names = list(result.keys())
        tables = (table_from_rows(names, list(map(tuple, part))) for part in result.partitions(chunk_rows))
        yield from _rechunk(tables, chunk_rows, skip)


def _postgres_chunks(settings: Settings, url: str, source: dict[str, Any], columns: list[str], as_float: set[str],
                     chunk_rows: int, done: Committed) -> Iterator[pa.Table]:
    with sqlsource.read_only(url, settings.batch_statement_timeout_s) as conn:
        raw = conn.connection.driver_connection
        pg = batch_pg.source_for(raw, source, columns)
        types = {c: batch_pg.arrow_type(t, c in as_float) for c, t in pg.types.items()}
        yield from _rechunk(batch_pg.stream_csv(raw, pg.select, types, chunk_rows), chunk_rows, done.rows)


def _file_chunks(path: Path, columns: list[str], chunk_rows: int, done: Committed) -> Iterator[pa.Table]:
    tables = (pa.Table.from_batches([b]).select(columns) for b in files.iter_batches(path, chunk_rows))
    yield from _rechunk(tables, chunk_rows, done.rows)


@contextmanager
def _spooled(db: Database, sha256: str) -> Iterator[Path]:
    """Copy an uploaded CSV from the repository to a local temporary file, chunk by chunk."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as tmp:
        for block in iter_artifact(db, sha256):
            tmp.write(block)
        tmp.flush()
        yield Path(tmp.name)


def source_url(settings: Settings, db: Database, name: str) -> str:
    """Decrypt a SQL data source's URL (in the worker, never sent anywhere)."""
    doc = datasources_repo.get_datasource(db, name)
    return crypto.decrypt(settings, doc.get("url_token") or "")


def file_path(db: Database, source: dict[str, Any]) -> Path:
    """Return a file source's path, confined to its data source's directory."""
    doc = datasources_repo.get_datasource(db, source["datasource"])
    return files.confine(Path(doc.get("path") or ""), source["file"])


def read_chunks(settings: Settings, db: Database, source: dict[str, Any], columns: list[str], as_float: set[str],
                chunk_rows: int, done: Committed) -> Iterator[pa.Table]:
    """Yield a source's columns in tables of chunk_rows rows, starting after what was committed."""
    kind = source["kind"]
    if kind == "sql":
        url = source_url(settings, db, source["datasource"])
        if sqlsource.engine_for(url).dialect.name == "postgresql":
            yield from _postgres_chunks(settings, url, source, columns, as_float, chunk_rows, done)
        else:
            yield from (t.select(columns) for t in _sqlalchemy_chunks(settings, url, source, chunk_rows, done))
    elif kind == "file":
        yield from _file_chunks(file_path(db, source), columns, chunk_rows, done)
    else:
        with _spooled(db, source["artifact"]) as path:
            yield from _file_chunks(path, columns, chunk_rows, done)


def count_rows(settings: Settings, db: Database, source: dict[str, Any]) -> int | None:
    """Count a source's rows for progress (None when counting would mean reading an upload twice)."""
    kind = source["kind"]
    if kind == "sql":
        url = source_url(settings, db, source["datasource"])
        with sqlsource.read_only(url, settings.batch_statement_timeout_s) as conn:
            if source.get("table"):
                table = Table(source["table"], MetaData(), schema=source.get("schema"), autoload_with=conn)
                stmt = select(func.count()).select_from(table)
            else:
                stmt = select(func.count()).select_from(text(source["query"]).columns().subquery("modeldeck_source"))
            return int(conn.execute(stmt, dict(source.get("params") or {})).scalar_one())
    if kind == "file":
        return files.count_rows(file_path(db, source))
    return None
