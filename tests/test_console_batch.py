"""Console pages for data sources and batch jobs, with AppTest against the real API, PostgreSQL and workers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import IRIS_SCHEMA, Client, Postgres, unique
from test_console import console, go  # noqa: F401  (the AppTest fixture and page switcher)


@pytest.fixture(scope="module")
def warehouse(admin: Client, postgres: Postgres) -> str:
    postgres.execute("CREATE TABLE IF NOT EXISTS console_rows (id bigint PRIMARY KEY, sepal_length float8, "
                     "sepal_width float8, petal_length float8, petal_width float8)")
    postgres.execute("TRUNCATE console_rows")
    postgres.execute("INSERT INTO console_rows SELECT g, 5.0 + g % 3, 3.0, 1.5 + g % 4, 0.2 FROM generate_series(1, 300) g")
    name = unique("console-wh")
    resp = admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": postgres.url.replace("postgres@", "postgres:pw-9f8e@"),
                                                   "readers": ["operator"], "writers": ["operator"]})
    assert resp.status_code == 201, resp.text
    return name


def test_admin_registers_a_source_and_its_password_is_not_shown(console, admin: Client, postgres: Postgres) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    at = go(console(admin), "datasources")
    name = unique("console-src")
    next(t for t in at.text_input if t.label == "Name").input(name)
    next(t for t in at.text_input if t.label.startswith("SQLAlchemy URL")).input(postgres.url.replace("postgres@", "postgres:hush-123@"))
    next(b for b in at.button if b.label == "Register").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.success[0].value == f"Registered {name} (postgresql+psycopg://postgres:***@127.0.0.1:5432/{postgres.name})"
    assert "hush-123" not in str(at.dataframe[0].value.to_dict())


def test_analyst_without_access_sees_no_source(console, make_client: Any, warehouse: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    at = go(console(make_client("analyst")), "datasources")
    assert at.info[0].value == "No data source you may read yet."


def test_operator_previews_a_query_and_sees_the_servers_refusal(console, operator: Client, warehouse: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    at = go(console(operator), "datasources")
    next(s for s in at.selectbox if s.label == "Data source").select(warehouse)
    next(t for t in at.text_area).input("SELECT id, petal_length FROM console_rows ORDER BY id")
    next(n for n in at.number_input if n.label == "Rows").set_value(5)
    next(b for b in at.button if b.label == "Preview").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    frame = at.dataframe[1].value
    assert frame["id"].tolist() == [1, 2, 3, 4, 5]
    assert at.caption[0].value == "Columns: id (int8), petal_length (float8)"
    next(t for t in at.text_area).input("DELETE FROM console_rows")
    next(b for b in at.button if b.label == "Preview").click()
    at.run()
    assert at.error[0].value.startswith(f"data source '{warehouse}' is read here; the database refused a write")


def test_operator_starts_a_batch_job_and_watches_its_progress(console, operator: Client, warehouse: str,  # type: ignore[no-untyped-def]  # noqa: F811
                                                              iris_skops: bytes, postgres: Postgres) -> None:
    model = unique("console-batch")
    assert operator.upload(model, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    out = f"console_scores_{unique('t').split('-')[1]}"
    at = go(console(operator), "jobs")
    next(s for s in at.selectbox if s.label == "Model").select(model)
    next(s for s in at.selectbox if s.label == "Read from").select(warehouse)
    next(t for t in at.text_input if t.label == "Table, or a SELECT").input("console_rows")
    next(s for s in at.selectbox if s.label == "Table's data source").select(warehouse)
    next(t for t in at.text_input if t.label == "Output table").input(out)
    next(n for n in at.number_input if n.label == "Rows per chunk").set_value(100)
    next(b for b in at.button if b.label == "Start").click()
    at.run()
    # Other tests' failed jobs are listed with their errors; the start itself must have succeeded.
    assert at.success and at.success[0].value.startswith("Started job_"), [e.value for e in at.error]
    job_id = at.success[0].value.removeprefix("Started ")
    deadline = time.monotonic() + 60
    while operator.get(f"/api/v1/jobs/{job_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    at.run()
    bars = {b.proto.text: b.value for b in at.get("progress")}
    assert bars["300 of 300 rows"] == 100
    assert postgres.execute(f"SELECT count(*) FROM {out}") == [(300,)]
