"""Planning a batch job against the real PostgreSQL: which key a table is split by, its ranges, a source that changed."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Postgres, Stack
from runtime import batch_pg
from runtime.batch_arrow import BatchError
from runtime.batch_plan import _block_plan, _key_plan, read_chunk
from server.core import sqlsource
from server.core.errors import InvalidInputError


@pytest.fixture(scope="module")
def shapes(postgres: Postgres) -> Postgres:
    postgres.execute("""
        CREATE TABLE plan_pk (a int, b text, x float8, PRIMARY KEY (a, b));
        CREATE TABLE plan_unique (tag text NOT NULL UNIQUE, maybe int UNIQUE, wide1 int NOT NULL, wide2 int NOT NULL,
                                  x float8, UNIQUE (wide1, wide2));
        CREATE TABLE plan_nullable (maybe int UNIQUE, x float8);
        CREATE TABLE plan_plain (x float8);
        CREATE VIEW plan_view AS SELECT * FROM plan_plain;
        INSERT INTO plan_plain SELECT g FROM generate_series(1, 2500) g;
        INSERT INTO plan_pk SELECT g % 5, 'k' || g, g FROM generate_series(1, 1000) g;
        CREATE TABLE plan_ints (id int PRIMARY KEY);
        INSERT INTO plan_ints SELECT g FROM generate_series(1, 2500) g;
    """)
    postgres.execute("VACUUM ANALYZE plan_plain")
    return postgres


@pytest.mark.parametrize("table,key,physical", [
    ("plan_pk", ["a", "b"], True),  # a primary key of two columns
    ("plan_unique", ["tag"], True),  # the narrowest NOT NULL unique key; 'maybe' may be NULL
    ("plan_nullable", [], True),  # a unique column that may be NULL is no key: physical order
    ("plan_plain", [], True),
    ("plan_view", [], False),  # a view has no physical order: one pass
])
def test_a_table_is_ordered_by_the_key_it_has(shapes: Postgres, table: str, key: list[str], physical: bool) -> None:
    assert sqlsource.table_order("wh", shapes.url, table, None, 10) == (key, physical)


def test_a_missing_table_is_named(shapes: Postgres) -> None:
    with pytest.raises(InvalidInputError) as err:
        sqlsource.table_order("wh", shapes.url, "no_such", None, 10)
    assert err.value.message == "field 'source.table': data source 'wh' has no table 'no_such'"


def plan(shapes: Postgres, source: dict[str, Any], chunk_rows: int) -> list[dict[str, Any]]:
    import psycopg

    with psycopg.connect(shapes.url) as conn:
        relation = batch_pg.relation_of(source)
        if source["order"] == "key":
            return _key_plan(conn, relation, source["key"], chunk_rows)
        return _block_plan(conn, relation, chunk_rows)


def test_key_ranges_cover_every_row_once_in_key_order(stack: Stack, shapes: Postgres) -> None:
    source = {"kind": "sql", "table": "plan_pk", "key": ["a", "b"], "order": "key"}
    chunks = plan(shapes, source, 300)
    assert [(c["start"], c["rows"]) for c in chunks] == [(0, 300), (300, 300), (600, 300), (900, 100)]
    seen = []
    for chunk in chunks:
        table, _ = read_chunk(stack.settings, shapes.url, source, chunk, ["a", "b"], set())
        seen += list(zip(table["a"].to_pylist(), table["b"].to_pylist()))
    assert seen == sorted((g % 5, f"k{g}") for g in range(1, 1001))


def test_an_integer_key_is_split_in_numeric_order_not_as_text(shapes: Postgres) -> None:
    chunks = plan(shapes, {"kind": "sql", "table": "plan_ints", "key": ["id"], "order": "key"}, 1000)
    assert [(c["lo"], c["hi"], c["rows"]) for c in chunks] == [
        (["1"], ["1001"], 1000), (["1001"], ["2001"], 1000), (["2001"], None, 500)]


def test_block_ranges_cover_every_row_once_and_a_changed_table_fails_the_chunk(stack: Stack, shapes: Postgres) -> None:
    source = {"kind": "sql", "table": "plan_plain", "order": "ctid"}
    chunks = plan(shapes, source, 1000)
    assert sum(c["rows"] for c in chunks) == 2500 and all(0 < c["rows"] <= 1000 for c in chunks)
    read = [read_chunk(stack.settings, shapes.url, source, c, ["x"], {"x"})[0]["x"].to_pylist() for c in chunks]
    assert sorted(v for part in read for v in part) == [float(g) for g in range(1, 2501)]
    shapes.execute("DELETE FROM plan_plain WHERE x = 1")
    with pytest.raises(BatchError) as err:
        read_chunk(stack.settings, shapes.url, source, chunks[0], ["x"], {"x"})
    assert err.value.code == "source_changed"
    assert err.value.message == (
        f"chunk 1 of the source now has {chunks[0]['rows'] - 1} rows where the job's plan found {chunks[0]['rows']}: the "
        "source changed while the job ran (rows inserted, deleted or updated); run the job again, on a copy that stays "
        "still if the source keeps changing")


def test_query_parameters_become_quoted_literals_and_a_missing_one_is_named() -> None:
    assert batch_pg.render_query("SELECT * FROM t WHERE name = :n AND x % 2 = 0", {"n": "o'b"}) == (
        "SELECT * FROM t WHERE name = 'o''b' AND x % 2 = 0")
    with pytest.raises(InvalidInputError) as err:
        batch_pg.render_query("SELECT * FROM t WHERE id < :n", {"m": 1})
    assert err.value.message == "field 'source.params': the query uses :n, which has no value in 'source.params' (got ['m'])"


def test_postgres_csv_keeps_text_that_looks_like_null_and_reads_its_booleans() -> None:
    import pyarrow as pa

    table = batch_pg.parse_csv(b'NaN,t,NA\nInfinity,f,""\n,,\n', {"x": pa.float64(), "b": pa.bool_(), "s": pa.string()})
    assert table.to_pydict()["s"] == ["NA", "", None] and table.to_pydict()["b"] == [True, False, None]
