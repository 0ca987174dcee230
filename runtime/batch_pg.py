"""PostgreSQL's fast path for batch jobs: rows out with ``COPY ... TO STDOUT`` parsed by pyarrow, rows in with ``COPY FROM``.

A chunk travels as CSV text both ways (pyarrow parses and writes it in C), so no row ever becomes a Python tuple.
User queries keep their ``:name`` parameters: COPY takes none, so they are rendered as literals by SQLAlchemy's
PostgreSQL compiler, which quotes them (the values come from the job, never spliced by hand).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from server.core.errors import InvalidInputError

# Lossless CSV round trips: integers and floats parse natively, everything else stays text for PostgreSQL to read back.
_ARROW_TYPES = {"smallint": pa.int64(), "integer": pa.int64(), "bigint": pa.int64(), "double precision": pa.float64(),
                "real": pa.float64(), "boolean": pa.bool_()}
_NUMERIC = ("smallint", "integer", "bigint", "double precision", "real", "numeric")
_DIALECT = postgresql.dialect(paramstyle="named")  # named: a '%' in the query is not doubled


@dataclass(frozen=True)
class PgSource:
    """A source as one SELECT over the columns a job needs, with each column's PostgreSQL type."""

    select: sql.Composable  # SELECT <columns> FROM <table or (query) AS s>
    relation: sql.Composable  # what FROM names
    types: dict[str, str]  # column -> format_type(), e.g. 'bigint', 'character varying'


def render_query(query: str, params: dict[str, Any]) -> str:
    """Return a user query with its :name parameters rendered as quoted literals."""
    statement = text(query)
    names = set(statement.compile().params)  # the :name parameters text() found
    missing = sorted(names - set(params))
    if missing:
        raise InvalidInputError(f"field 'source.params': the query uses :{missing[0]}, which has no value in "
                                f"'source.params' (got {sorted(params)})")
    bound = statement.bindparams(**{k: v for k, v in params.items() if k in names})
    return str(bound.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


def relation_of(source: dict[str, Any]) -> sql.Composable:
    """Return what a job's SELECT reads from: its table, or its query as a subquery."""
    if source.get("table"):
        parts = [source["schema"], source["table"]] if source.get("schema") else [source["table"]]
        return sql.Identifier(*parts)
    return sql.SQL("({}) AS modeldeck_source").format(sql.SQL(render_query(source["query"], dict(source.get("params") or {}))))  # type: ignore[arg-type]


def column_types(conn: Any, relation: sql.Composable) -> dict[str, str]:
    """Return every column of a relation with its type name, without reading a row."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(relation))
        names = [c.name for c in cur.description or []]
        oids = [c.type_code for c in cur.description or []]
        cur.execute("SELECT format_type(oid, NULL) FROM unnest(%s::oid[]) WITH ORDINALITY AS t(oid, i) ORDER BY i", (oids,))
        return dict(zip(names, (r[0] for r in cur.fetchall())))


def source_for(conn: Any, source: dict[str, Any], columns: list[str]) -> PgSource:
    """Describe a job's source on an open connection: the SELECT of the given columns and their types."""
    relation = relation_of(source)
    types = column_types(conn, relation)
    select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), relation)
    return PgSource(select, relation, {c: types[c] for c in columns})


def arrow_type(pg_type: str, as_float: bool) -> pa.DataType:
    """Return the arrow type a column is parsed as (features of a numeric model: float64)."""
    if as_float and pg_type in _NUMERIC:
        return pa.float64()
    return _ARROW_TYPES.get(pg_type, pa.string())


def copy_out(conn: Any, statement: sql.Composable, types: dict[str, pa.DataType]) -> pa.Table:
    """Run one SELECT through COPY and return its rows as an arrow table typed as asked."""
    buf = io.BytesIO()
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(statement)) as copy:
        for block in copy:
            buf.write(block)
    return parse_csv(buf.getvalue(), types)


def parse_csv(data: bytes, types: dict[str, pa.DataType]) -> pa.Table:
    """Parse PostgreSQL CSV (no header; unquoted empty is NULL, quoted empty is '') into a typed table."""
    names = list(types)
    if not data:
        return pa.table({n: pa.array([], type=t) for n, t in types.items()})
    return pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
                          convert_options=pacsv.ConvertOptions(
                              column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False,
                              # Only PostgreSQL's NULL (unquoted empty) is null: 'NA' or 'null' are values.
                              null_values=[""], true_values=["t"], false_values=["f"]))


def stream_csv(conn: Any, statement: sql.Composable, types: dict[str, pa.DataType], batch_rows: int) -> Iterator[pa.Table]:
    """Stream a SELECT through one COPY as arrow tables of at most batch_rows rows (for a source read in one pass)."""
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(statement)) as copy:
        pending = b""
        lines: list[bytes] = []
        for block in copy:
            # COPY sends whole rows per message; a quoted newline would split a row, so cut only at message ends.
            lines.append(bytes(block))
            if len(lines) >= batch_rows:
                pending += b"".join(lines)
                lines = []
                table = parse_csv(pending, types)
                pending = b""
                yield from _slices(table, batch_rows)
        pending += b"".join(lines)
        if pending:
            yield from _slices(parse_csv(pending, types), batch_rows)


def _slices(table: pa.Table, n: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, n):
        yield table.slice(start, n)


def copy_in(cur: Any, target: sql.Composable, table: pa.Table) -> None:
    """Append an arrow table's rows to a table through COPY FROM (CSV), inside the caller's transaction."""
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    columns = sql.SQL(", ").join(map(sql.Identifier, table.column_names))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, columns)) as copy:
        copy.write(buf.getbuffer())


def pg_type_of(arrow: pa.DataType) -> str:
    """Return the PostgreSQL column type for an output column computed here (row numbers, predictions)."""
    if pa.types.is_boolean(arrow):
        return "boolean"
    if pa.types.is_integer(arrow):
        return "bigint"
    if pa.types.is_floating(arrow):
        return "double precision"
    if pa.types.is_timestamp(arrow):
        return "timestamptz" if arrow.tz else "timestamp"
    if pa.types.is_date(arrow):
        return "date"
    return "text"
