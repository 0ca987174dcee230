"""Read a batch job's rows in chunks: a SQL query or table (server-side cursor), a CSV/Parquet file, an upload.

A resumed job continues after its last committed chunk: past the last key when the source is ordered
by a unique key, else after skipping the rows already scored (a query needs a deterministic ORDER BY).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.database import Database
from sqlalchemy import MetaData, Table, bindparam, func, literal_column, select, text
from sqlalchemy.sql import column

from server.core import crypto, datasources_repo, files, sqlsource
from server.core.artifacts import iter_artifact
from server.core.settings import Settings

Chunk = tuple[list[str], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class Committed:
    """How far a job's output got: chunks and rows committed, and the key of the last row."""

    chunks: int = 0
    rows: int = 0
    last_key: Any = None


def _skip(chunks: Iterator[list[tuple[Any, ...]]], n: int) -> Iterator[list[tuple[Any, ...]]]:
    for rows in chunks:
        if n >= len(rows):
            n -= len(rows)
            continue
        yield rows[n:]
        n = 0


def _sql_statement(url: str, conn: Any, source: dict[str, Any], done: Committed) -> tuple[Any, dict[str, Any], int]:
    """Return the statement, its parameters and how many leading rows to skip."""
    key = source.get("key")
    params = dict(source.get("params") or {})
    if source.get("table"):
        table = Table(source["table"], MetaData(), schema=source.get("schema"), autoload_with=conn)
        base = select(table)
        key_col = table.c[key]
    elif key:
        sub = text(source["query"]).columns(column(key)).subquery("modeldeck_source")
        base = select(literal_column("*")).select_from(sub)
        key_col = sub.c[key]
    else:
        return text(source["query"]), params, done.rows
    stmt = base.order_by(key_col)
    if done.last_key is not None:
        stmt = stmt.where(key_col > bindparam("modeldeck_last_key"))
        params["modeldeck_last_key"] = done.last_key
    return stmt, params, 0


def _sql_chunks(settings: Settings, name: str, url: str, source: dict[str, Any], chunk_rows: int,
                done: Committed) -> Iterator[Chunk]:
    with sqlsource.read_only(url, settings.batch_statement_timeout_s) as conn:
        stmt, params, skip = _sql_statement(url, conn, source, done)
        result = conn.execution_options(yield_per=chunk_rows).execute(stmt, params)
        names = list(result.keys())
        for rows in _skip((list(map(tuple, part)) for part in result.partitions(chunk_rows)), skip):
            yield names, rows


def _file_chunks(path: Path, chunk_rows: int, done: Committed) -> Iterator[Chunk]:
    names, chunks = files.iter_rows(path, chunk_rows)
    for rows in _skip(chunks, done.rows):
        yield names, rows


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


def read_chunks(settings: Settings, db: Database, source: dict[str, Any], chunk_rows: int, done: Committed) -> Iterator[Chunk]:
    """Yield (column names, rows) chunks of a job's source, starting after what was committed."""
    kind = source["kind"]
    if kind == "sql":
        url = source_url(settings, db, source["datasource"])
        yield from _sql_chunks(settings, source["datasource"], url, source, chunk_rows, done)
    elif kind == "file":
        doc = datasources_repo.get_datasource(db, source["datasource"])
        yield from _file_chunks(files.confine(Path(doc.get("path") or ""), source["file"]), chunk_rows, done)
    else:
        with _spooled(db, source["artifact"]) as path:
            yield from _file_chunks(path, chunk_rows, done)


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
        doc = datasources_repo.get_datasource(db, source["datasource"])
        path = files.confine(Path(doc.get("path") or ""), source["file"])
        return files.count_rows(path)
    return None
