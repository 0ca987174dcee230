"""Write a batch job's output chunk by chunk, each chunk committed together with its progress marker.

SQL: the chunk's rows and a row in ``modeldeck_job_chunks`` go in one transaction (PostgreSQL through
COPY), so after a crash the marker says exactly which rows exist. Files: each chunk is one document
in ``job_parts`` (a single insert is atomic); the parts become one CSV or Parquet artifact at the end.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import tempfile
from typing import Any, Protocol

from bson import Binary
from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from runtime.batch_sources import Committed
from server.core import sqlsource
from server.core.artifacts import put_artifact
from server.core.clock import now_iso
from server.core.errors import ConflictError, InvalidInputError

MARKERS = "modeldeck_job_chunks"
MAX_PART_BYTES = 15 * 1024 * 1024


class Sink(Protocol):
    def committed(self) -> Committed: ...

    def write(self, n: int, columns: list[str], rows: list[tuple[Any, ...]], done: Committed) -> None: ...

    def finish(self, done: Committed) -> dict[str, Any]: ...


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

    def __init__(self, job_id: str, name: str, url: str, dest: dict[str, Any], timeout_s: float) -> None:
        self.job_id, self.name, self.url, self.dest, self.timeout_s = job_id, name, url, dest, timeout_s
        self.engine = sqlsource.engine_for(url)
        self.markers = _markers(MetaData(), dest.get("schema"))
        self.table: Table | None = None

    def _timeout(self, conn: Any) -> None:
        if self.engine.dialect.name == "postgresql":
            conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(self.timeout_s * 1000))})

    def committed(self) -> Committed:
        """Return the last chunk this job committed (creating the marker table on first use)."""
        self.markers.create(self.engine, checkfirst=True)
        with self.engine.connect() as conn:
            row = conn.execute(select(self.markers).where(self.markers.c.job_id == self.job_id)
                               .order_by(self.markers.c.chunk.desc()).limit(1)).first()
        if row is None:
            exists = inspect(self.engine).has_table(self.dest["table"], schema=self.dest.get("schema"))
            if exists and self.dest["if_exists"] == "fail":
                raise ConflictError(f"table '{self.dest['table']}' already exists in data source '{self.name}'; "
                                    "choose another table or set destination.if_exists to 'append'")
            return Committed()
        return Committed(row.chunk, row.rows_done, json.loads(row.last_key) if row.last_key is not None else None)

    def _output_table(self, conn: Any, columns: list[str], rows: list[tuple[Any, ...]]) -> Table:
        if self.table is not None:
            return self.table
        schema = self.dest.get("schema")
        table = Table(self.dest["table"], MetaData(), *(Column(c, _sql_type([r[i] for r in rows[:1000]]))
                                                        for i, c in enumerate(columns)), schema=schema)
        if inspect(conn).has_table(self.dest["table"], schema=schema):
            have = {c["name"] for c in inspect(conn).get_columns(self.dest["table"], schema=schema)}
            missing = [c for c in columns if c not in have]
            if missing:
                raise InvalidInputError(f"table '{self.dest['table']}' exists without column(s) {', '.join(missing)}; "
                                        "the output needs " + ", ".join(columns))
        else:
            # Created in the first chunk's transaction: on PostgreSQL a crash before it commits leaves no table.
            table.create(conn)
        self.table = table
        return table

    def write(self, n: int, columns: list[str], rows: list[tuple[Any, ...]], done: Committed) -> None:
        """Write one chunk and its marker in one transaction."""
        with self.engine.begin() as conn:
            self._timeout(conn)
            table = self._output_table(conn, columns, rows)
            if self.engine.dialect.name == "postgresql":
                preparer = self.engine.dialect.identifier_preparer
                names = ", ".join(preparer.quote(c) for c in columns)
                cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                with cur, cur.copy(f"COPY {preparer.format_table(table)} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                conn.execute(table.insert(), [dict(zip(columns, row)) for row in rows])
            conn.execute(self.markers.insert().values(
                job_id=self.job_id, chunk=n, rows_done=done.rows, committed_at=now_iso(),
                last_key=json.dumps(sqlsource.json_value(done.last_key)) if done.last_key is not None else None))

    def finish(self, done: Committed) -> dict[str, Any]:
        """Return the job's result (the markers stay: they prove which chunks were written)."""
        table = f"{self.dest['schema']}.{self.dest['table']}" if self.dest.get("schema") else self.dest["table"]
        return {"datasource": self.name, "table": table, "rows": done.rows, "chunks": done.chunks}


class FileSink:
    """Output rows into parts in the repository, joined into one CSV or Parquet artifact at the end."""

    def __init__(self, db: Database, job_id: str, fmt: str) -> None:
        self.db, self.job_id, self.fmt = db, job_id, fmt

    def committed(self) -> Committed:
        part = self.db.job_parts.find_one({"job": self.job_id}, {"data": 0}, sort=[("n", DESCENDING)])
        return Committed(part["n"], part["rows_done"], part.get("last_key")) if part else Committed()

    def write(self, n: int, columns: list[str], rows: list[tuple[Any, ...]], done: Committed) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        buf = io.BytesIO()
        if self.fmt == "csv":
            pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=n == 1))
        else:
            pq.write_table(table, buf)
        data = buf.getvalue()
        if len(data) > MAX_PART_BYTES:
            raise InvalidInputError(f"one chunk of output is {len(data)} bytes, over {MAX_PART_BYTES}; lower chunk_rows")
        try:
            self.db.job_parts.insert_one({"_id": f"{self.job_id}_{n}", "job": self.job_id, "n": n, "rows_done": done.rows,
                                          "last_key": sqlsource.json_value(done.last_key), "data": Binary(data)})
        except DuplicateKeyError:
            pass  # a concurrent run of the same job committed this chunk first; it holds the same rows

    def finish(self, done: Committed) -> dict[str, Any]:
        """Join the parts into one file, store it as an artifact and drop the parts."""
        import pyarrow.parquet as pq

        with tempfile.TemporaryFile() as out:
            writer = None
            for n in range(1, done.chunks + 1):
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
            stored = put_artifact(self.db, out)  # type: ignore[arg-type]
        self.db.job_parts.delete_many({"job": self.job_id})
        return {"artifact": stored.sha256, "format": self.fmt, "size": stored.size, "rows": done.rows, "chunks": done.chunks}
