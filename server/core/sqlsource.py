"""SQL data sources through SQLAlchemy Core: engines, read-only bounded queries, streaming, safe error messages.

Queries a user writes run as ``text(query)`` with bound parameters only, inside a transaction that is
read-only on the database's side (PostgreSQL and MySQL: ``SET TRANSACTION READ ONLY``; SQLite:
``PRAGMA query_only``) and always rolled back, under a statement timeout. Credentials never appear in
an error: messages come from the driver's first line with the password masked.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from server.core.errors import (
    ForbiddenError,
    GatewayTimeoutError,
    InvalidInputError,
    ModelDeckError,
    UnavailableError,
)


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def parse_url(url: str) -> URL:
    """Parse a SQLAlchemy URL (PostgreSQL defaults to psycopg 3), naming the problem without echoing the URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError("field 'url': expected a SQLAlchemy URL such as "
                                "postgresql://user:password@host:5432/db, got something that does not parse") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise InvalidInputError(f"field 'url': no SQLAlchemy dialect '{parsed.drivername}' is installed here; "
                                "install its driver on the API and worker hosts") from exc
    return parsed


def display_url(url: str) -> str:
    """Return the URL with its password masked, for showing and listing."""
    return parse_url(url).render_as_string(hide_password=True)


def engine_for(url: str) -> Engine:
    """Return this process's engine for a URL (one pool per URL)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = parse_url(url)
            # SQLite's pools are per thread or per file and take no size.
            # Four kept: a worker's threads (MODELDECK_WORKER_CONCURRENCY, 4 by default) each hold one connection per
            # batch chunk; with fewer, every chunk would open and close a PostgreSQL backend.
            sizes = {} if parsed.get_backend_name() == "sqlite" else {"pool_size": 4, "max_overflow": 4}
            engine = create_engine(parsed, pool_pre_ping=True, hide_parameters=True, **sizes)
            _engines[url] = engine
        return engine


def _masked(message: str, urls: list[str]) -> str:
    first = (message.strip().splitlines() or [""])[0]
    for url in urls:
        try:
            password = parse_url(url).password
        except InvalidInputError:
            continue
        if password:
            first = first.replace(str(password), "***")
    return first


def describe_error(name: str, url: str | list[str], exc: SQLAlchemyError, timeout_s: float, setting: str) -> ModelDeckError:
    """Turn a driver error into a user-facing error; never includes credentials or the statement's parameters."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(getattr(orig, "diag", None), "sqlstate", None) or getattr(orig, "sqlstate", None)
    message = _masked(str(orig), [url] if isinstance(url, str) else url)
    lowered = message.lower()
    if state == "57014" or "interrupted" in lowered or "max_execution_time" in lowered or "max_statement_time" in lowered:
        return GatewayTimeoutError(f"data source '{name}': the query ran past the statement timeout of "
                                   f"{timeout_s:g} s ({setting})", {"datasource": name})
    if state == "25006" or "read-only" in lowered or "readonly" in lowered or "query_only" in lowered:
        return ForbiddenError(f"data source '{name}' is read here; the database refused a write: {message}",
                              {"datasource": name})
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if lost or (state or "").startswith("08") or ("connection" in lowered and ("refused" in lowered or "failed" in lowered)):
        return UnavailableError(f"data source '{name}': cannot connect: {message}", {"datasource": name})
    return InvalidInputError(f"data source '{name}' refused the query: {message}", {"datasource": name})


@contextmanager
def read_only(url: str, timeout_s: float) -> Iterator[Connection]:
    """Yield a connection inside a read-only transaction with a statement timeout; it is always rolled back."""
    engine = engine_for(url)
    dialect = engine.dialect.name
    with engine.connect() as conn:
        raw: Any = None
        try:
            if dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(timeout_s * 1000))})
            elif dialect in ("mysql", "mariadb"):
                # Untested here (no MySQL server on the test machine); the statements are MySQL's and MariaDB's own.
                conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
                if getattr(engine.dialect, "is_mariadb", False):
                    conn.execute(text("SET SESSION max_statement_time = :s"), {"s": timeout_s})
                else:
                    conn.execute(text("SET SESSION max_execution_time = :ms"), {"ms": int(timeout_s * 1000)})
            elif dialect == "sqlite":
                raw = conn.connection.dbapi_connection
                raw.execute("PRAGMA query_only = ON")
                deadline = time.monotonic() + timeout_s
                raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
            yield conn
        finally:
            conn.rollback()
            if dialect in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET SESSION TRANSACTION READ WRITE")
                conn.rollback()
            if raw is not None:
                raw.set_progress_handler(None, 0)
                raw.execute("PRAGMA query_only = OFF")


def json_value(value: Any) -> Any:
    """Convert a database value into a JSON-safe one."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, dict)):
        return value
    return str(value)


def value_type(values: list[Any]) -> str:
    """Name the type of a column from its first non-null value."""
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int):
            return "integer"
        if isinstance(v, (float, decimal.Decimal)):
            return "number"
        if isinstance(v, dt.datetime):
            return "datetime"
        if isinstance(v, dt.date):
            return "date"
        if isinstance(v, (bytes, bytearray, memoryview)):
            return "bytes"
        return "string"
    return "unknown"


def _db_types(result: Any, dialect: str) -> list[str | None]:
    """Return the database's own type name per column where the driver says it (PostgreSQL)."""
    description = getattr(result.cursor, "description", None) or []
    if dialect != "postgresql":
        return [None] * len(description)
    from psycopg.postgres import types as pg_types

    names: list[str | None] = []
    for col in description:
        info = pg_types.get(col[1]) if isinstance(col[1], int) else None
        names.append(info.name if info is not None else None)
    return names


def preview(name: str, url: str, query: str, params: dict[str, Any], limit: int, timeout_s: float) -> dict[str, Any]:
    """Run a bounded read-only query; return columns (name, type, db_type), rows and whether rows were cut."""
    try:
        with read_only(url, timeout_s) as conn:
            result = conn.execute(text(query), params)
            if not result.returns_rows:
                raise InvalidInputError(f"data source '{name}': the query returned no rows; a preview needs a SELECT")
            keys = list(result.keys())
            db_types = _db_types(result, conn.dialect.name)
            fetched = result.fetchmany(limit + 1)
    except SQLAlchemyError as exc:
        # Not chained: SQLAlchemy's own text carries the statement and could carry connection details.
        raise describe_error(name, url, exc, timeout_s, "MODELDECK_PREVIEW_TIMEOUT_S") from None
    rows = [[json_value(v) for v in row] for row in fetched[:limit]]
    columns = [{"name": k, "type": value_type([r[i] for r in fetched]), "db_type": db_types[i] if i < len(db_types) else None}
               for i, k in enumerate(keys)]
    return {"columns": columns, "rows": rows, "truncated": len(fetched) > limit}


def check_identifier(value: str, field: str) -> str:
    """Accept a plain SQL identifier (letters, digits, underscore; 63 characters at most)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value or ""):
        raise InvalidInputError(f"field '{field}': expected a plain SQL name (letters, digits, '_', not starting "
                                f"with a digit, at most 63 characters), got {value!r}")
    return value


def quoted_table(url: str, table: str, schema: str | None) -> str:
    """Return a table's name quoted by the database's dialect (names were checked by check_identifier)."""
    preparer = engine_for(url).dialect.identifier_preparer
    return (preparer.quote_schema(schema) + "." if schema else "") + preparer.quote(table)


def select_all(url: str, table: str, schema: str | None) -> str:
    """Return ``SELECT * FROM <table>`` for a checked, quoted table name."""
    return f"SELECT * FROM {quoted_table(url, table, schema)}"


def columns_of(name: str, url: str, query: str, params: dict[str, Any], timeout_s: float) -> list[str]:
    """Return a query's column names without reading its rows (a server-side cursor where the driver has one)."""
    try:
        with read_only(url, timeout_s) as conn:
            result = conn.execution_options(stream_results=True).execute(text(query), params)
            if not result.returns_rows:
                raise InvalidInputError(f"data source '{name}': the query returns no rows; a source needs a SELECT")
            keys = list(result.keys())
            result.close()
            return keys
    except SQLAlchemyError as exc:
        raise describe_error(name, url, exc, timeout_s, "MODELDECK_PREVIEW_TIMEOUT_S") from None


def table_exists_message(table: str, name: str) -> str:
    """Return the refusal of an output table that already exists (at submit time and in the worker)."""
    return (f"table '{table}' already exists in data source '{name}'; choose another table, or set "
            "destination.if_exists to 'append' to add the rows to it (if_exists takes 'fail', the default, or 'append')")


def has_table(name: str, url: str, table: str, schema: str | None, timeout_s: float) -> bool:
    """Tell whether a table exists in a data source."""
    try:
        with read_only(url, timeout_s) as conn:
            return bool(inspect(conn).has_table(table, schema=schema))
    except SQLAlchemyError as exc:
        raise describe_error(name, url, exc, timeout_s, "MODELDECK_PREVIEW_TIMEOUT_S") from None


def table_order(name: str, url: str, table: str, schema: str | None, timeout_s: float) -> tuple[list[str], bool]:
    """Return the key a batch job orders and resumes a table by, and whether PostgreSQL's physical order is there too.

    The key is the primary key (any width), else the narrowest unique constraint or unique index whose columns are
    all NOT NULL (a NULL would fall outside every key range); none when the table has neither. Physical order
    (``ctid`` ranges) is there for plain tables and materialized views on PostgreSQL, not for views or partitioned tables.
    """
    try:
        with read_only(url, timeout_s) as conn:
            inspector = inspect(conn)
            if not inspector.has_table(table, schema=schema) and table not in inspector.get_view_names(schema=schema):
                raise InvalidInputError(f"field 'source.table': data source '{name}' has no table '{table}'")
            key = list(inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or [])
            if not key:
                nullable = {c["name"] for c in inspector.get_columns(table, schema=schema) if c.get("nullable", True)}
                uniques = [u["column_names"] for u in inspector.get_unique_constraints(table, schema=schema)]
                uniques += [i["column_names"] for i in inspector.get_indexes(table, schema=schema)
                            if i.get("unique") and all(i.get("column_names") or [None])]
                candidates = [list(u) for u in uniques if u and not nullable & set(u)]
                key = min(candidates, key=len) if candidates else []
            physical = False
            if conn.dialect.name == "postgresql":
                relkind = conn.execute(text("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                            "WHERE c.relname = :t AND n.nspname = coalesce(:s, current_schema())"),
                                       {"t": table, "s": schema}).scalar()
                physical = relkind in ("r", "m")
    except SQLAlchemyError as exc:
        raise describe_error(name, url, exc, timeout_s, "MODELDECK_PREVIEW_TIMEOUT_S") from None
    return [str(c) for c in key], physical
