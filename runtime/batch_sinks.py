"""Write a batch job's output chunk by chunk, each chunk committed together with its marker, exactly once.

SQL: the chunk's marker row in ``modeldeck_job_chunks`` (job id, chunk number) and its rows go in one transaction,
the marker first: a second run of the same chunk (a redelivered task, another worker) finds the marker and rolls
back, so no chunk is ever written twice. PostgreSQL gets the rows through COPY from arrow's CSV writer; other
dialects through SQLAlchemy inserts. Files: each chunk is one document in ``job_parts`` (a single insert is
atomic); the parts become one CSV or Parquet artifact at the end.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import tempfile
from typing import Any, Protocol

import pyarrow as pa
from bson import Binary
from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from psycopg import sql
from sqlalchemy import BigInteger, Boolean, Column, Date, DateTime, Float, Integer, MetaData, String, Table, Text, inspect, select, text
from sqlalchemy.exc import IntegrityError

from runtime.batch_pg import copy_in, pg_type_of
from runtime.batch_sources import Committed
from server.core import sqlsource
from server.core.artifacts import put_artifact
from server.core.clock import now_iso
from server.core.errors import ConflictError, InvalidInputError

MARKERS = "modeldeck_job_chunks"
MAX_PART_BYTES = 15 * 1024 * 1024


class Sink(Protocol):
    def committed(self) -> Committed: ...

    def is_committed(self, n: int) -> bool: ...

    def write(self, n: int, out: pa.Table, rows_done: int, last_key: Any = None) -> bool: ...

    def finish(self, rows: int, chunks: int) -> dict[str, Any]: ...

    def cleanup(self) -> None: ...


def _sql_type(values: list[Any]) -> Any:
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            return Boolean()
        if isinstance(v, int):
            return BigInteger()
        if isinstance(v, (float, decimal.Decimal)):
            return Float(precision=53)
        if isinstance(v, dt.datetime):
            return DateTime(timezone=v.tzinfo is not None)
        if isinstance(v, dt.date):
            return Date()
        return Text()
    return Text()


def _markers(metadata: MetaData, schema: str | None) -> Table:
    return Table(MARKERS, metadata, Column("job_id", String(64), primary_key=True),
                 Column("chunk", Integer, primary_key=True), Column("rows_done", BigInteger, nullable=False),
                 Column("last_key", Text), Column("committed_at", String(40), nullable=False), schema=schema)


class SqlSink:
    """Output rows into a table of a SQL data source."""

    def __init__(self, job_id: str, name: str, url: str, dest: dict[str, Any], timeout_s: float,
                 source_types: dict[str, str] | None = None) -> None:
        self.job_id, self.name, self.url, self.dest, self.timeout_s = job_id, name, url, dest, timeout_s
        self.engine = sqlsource.engine_for(url)
        self.postgres = self.engine.dialect.name == "postgresql"
        self.markers = _markers(MetaData(), dest.get("schema"))
        self.source_types = source_types or {}  # PostgreSQL sources: carried columns keep their type
        self.table: Table | None = None
        self._ready = False

    def _timeout(self, conn: Any) -> None:
        if self.postgres:
            conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(self.timeout_s * 1000))})

    def _target(self) -> sql.Composable:
        parts = [self.dest["schema"], self.dest["table"]] if self.dest.get("schema") else [self.dest["table"]]
        return sql.Identifier(*parts)

    def committed(self) -> Committed:
        """Return the last chunk this job committed (creating the marker table on first use)."""
        self.markers.create(self.engine, checkfirst=True)
        with self.engine.connect() as conn:
            row = conn.execute(select(self.markers).where(self.markers.c.job_id == self.job_id)
                               .order_by(self.markers.c.chunk.desc()).limit(1)).first()
        if row is None:
            exists = inspect(self.engine).has_table(self.dest["table"], schema=self.dest.get("schema"))
            if exists and self.dest["if_exists"] == "fail":
                raise ConflictError(sqlsource.table_exists_message(self.dest["table"], self.name))
            return Committed()
        return Committed(row.chunk, row.rows_done, json.loads(row.last_key) if row.last_key is not None else None)

    def is_committed(self, n: int) -> bool:
        """Tell whether chunk n of this job is in the table."""
        with self.engine.connect() as conn:
            return conn.execute(select(self.markers.c.chunk).where(self.markers.c.job_id == self.job_id,
                                                                     self.markers.c.chunk == n)).first() is not None

    def _check_columns(self, conn: Any, columns: list[str]) -> bool:
        schema = self.dest.get("schema")
        if not inspect(conn).has_table(self.dest["table"], schema=schema):
            return False
        have = {c["name"] for c in inspect(conn).get_columns(self.dest["table"], schema=schema)}
        missing = [c for c in columns if c not in have]
        if missing:
            raise InvalidInputError(f"table '{self.dest['table']}' exists without column(s) {', '.join(missing)}; "
                                    "the output needs " + ", ".join(columns))
        return True

    def _create_pg(self, conn: Any, out: pa.Table) -> None:
        if self._ready or self._check_columns(conn, out.column_names):
            self._ready = True
            return
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(self.source_types.get(c) or pg_type_of(out.schema.field(c).type)))
            for c in out.column_names)
        # In the first chunk's transaction: a crash before it commits leaves no table.
        conn.connection.driver_connection.execute(sql.SQL("CREATE TABLE {} ({})").format(self._target(), columns))
        self._ready = True

    def _output_table(self, conn: Any, columns: list[str], rows: list[tuple[Any, ...]]) -> Table:
        if self.table is not None:
            return self.table
        schema = self.dest.get("schema")
        table = Table(self.dest["table"], MetaData(), *(Column(c, _sql_type([r[i] for r in rows[:1000]]))
                                                        for i, c in enumerate(columns)), schema=schema)
        if not self._check_columns(conn, columns):
            table.create(conn)
        self.table = table
        return table

    def write(self, n: int, out: pa.Table, rows_done: int, last_key: Any = None) -> bool:
        """Write chunk n and its marker in one transaction; return False when the chunk was already written."""
        marker = {"job_id": self.job_id, "chunk": n, "rows_done": rows_done, "committed_at": now_iso(),
                  "last_key": json.dumps(sqlsource.json_value(last_key)) if last_key is not None else None}
        with self.engine.connect() as conn:
            with conn.begin() as txn:
                self._timeout(conn)
                if self.postgres:
                    stmt = text(f"INSERT INTO {self._markers_name()} (job_id, chunk, rows_done, last_key, committed_at) "
                                "VALUES (:job_id, :chunk, :rows_done, :last_key, :committed_at) ON CONFLICT DO NOTHING")
                    if conn.execute(stmt, marker).rowcount == 0:
                        txn.rollback()  # another run committed this chunk (it waited for that run to finish)
                        return False
                    self._create_pg(conn, out)
                    with conn.connection.driver_connection.cursor() as cur:
                        copy_in(cur, self._target(), out)
                    return True
                try:
                    conn.execute(self.markers.insert().values(**marker))
                except IntegrityError:
                    txn.rollback()
                    return False
                rows = [tuple(r.values()) for r in out.to_pylist()]
                table = self._output_table(conn, out.column_names, rows)
                conn.execute(table.insert(), [dict(zip(out.column_names, row)) for row in rows])
                return True

    def _markers_name(self) -> str:
        return sqlsource.quoted_table(self.url, MARKERS, self.dest.get("schema"))

    def finish(self, rows: int, chunks: int) -> dict[str, Any]:
        """Return the job's result (the markers stay: they prove which chunks were written)."""
        table = f"{self.dest['schema']}.{self.dest['table']}" if self.dest.get("schema") else self.dest["table"]
        return {"datasource": self.name, "table": table, "rows": rows, "chunks": chunks}

    def cleanup(self) -> None:
        """Nothing to remove: the rows are the result."""


class FileSink:
    """Output rows into parts in the repository, joined into one CSV or Parquet artifact at the end."""

    def __init__(self, db: Database, job_id: str, fmt: str) -> None:
        self.db, self.job_id, self.fmt = db, job_id, fmt

    def committed(self) -> Committed:
        part = self.db.job_parts.find_one({"job": self.job_id}, {"data": 0}, sort=[("n", DESCENDING)])
        return Committed(part["n"], part["rows_done"], part.get("last_key")) if part else Committed()

    def is_committed(self, n: int) -> bool:
        return self.db.job_parts.find_one({"_id": f"{self.job_id}_{n}"}, {"_id": 1}) is not None

    def write(self, n: int, out: pa.Table, rows_done: int, last_key: Any = None) -> bool:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        if self.fmt == "csv":
            pacsv.write_csv(out, buf, pacsv.WriteOptions(include_header=n == 1))
        else:
            pq.write_table(out, buf)
        data = buf.getvalue()
        if len(data) > MAX_PART_BYTES:
            raise InvalidInputError(f"one chunk of output is {len(data)} bytes, over {MAX_PART_BYTES}; lower chunk_rows")
        try:
            self.db.job_parts.insert_one({"_id": f"{self.job_id}_{n}", "job": self.job_id, "n": n, "rows_done": rows_done,
                                          "last_key": sqlsource.json_value(last_key), "data": Binary(data)})
        except DuplicateKeyError:
            return False  # another run of the same chunk committed it first; it holds the same rows
        return True

    def finish(self, rows: int, chunks: int) -> dict[str, Any]:
        """Join the parts into one file and store it as an artifact (the same bytes whoever joins them)."""
        import pyarrow.parquet as pq

        with tempfile.TemporaryFile() as out:
            writer = None
            for n in range(1, chunks + 1):
                part = self.db.job_parts.find_one({"_id": f"{self.job_id}_{n}"})
                if part is None:
                    raise ConflictError(f"job '{self.job_id}' lost output part {n}; run it again")
                if self.fmt == "csv":
                    out.write(bytes(part["data"]))
                    continue
                table = pq.read_table(io.BytesIO(bytes(part["data"])))
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
            if writer is not None:
                writer.close()
            out.flush()
            out.seek(0)
            stored = put_artifact(self.db, out)  # type: ignore[arg-type]
        return {"artifact": stored.sha256, "format": self.fmt, "size": stored.size, "rows": rows, "chunks": chunks}

    def cleanup(self) -> None:
        """Drop the parts once the job's result names the joined file."""
        self.db.job_parts.delete_many({"job": self.job_id})
