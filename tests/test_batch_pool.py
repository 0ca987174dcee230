"""Batch jobs spread over every worker of a pool, and tables with no declared key, against real workers and PostgreSQL.

The multi-worker variants of tests/test_batch_jobs.py: exactly-once rows with a worker killed mid-chunk, cancel,
a failing row, and permissions, with several workers of one pool taking chunks of the same job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, Postgres, Proc, Stack, start_worker, unique
from test_batch_jobs import features, rows_sql, start, wait_done

ROWS = 120_000


@pytest.fixture(scope="module")
def pool(stack: Stack, operator: Client, iris_skops: bytes, postgres: Postgres) -> Iterator[tuple[str, str, list[Proc]]]:
    """A model on a pool of its own served by three workers, and a table of ROWS rows."""
    name = f"pool{os.urandom(3).hex()}"
    model = unique("pool-iris")
    assert operator.upload(model, iris_skops, input_schema=IRIS_SCHEMA, pool=name).status_code == 201
    postgres.execute(rows_sql(ROWS, "pool_rows"))
    workers = [start_worker(stack, name) for _ in range(3)]
    yield name, model, workers
    for w in workers:
        w.stop()


@pytest.fixture(scope="module")
def dw(admin: Client, postgres: Postgres) -> str:
    name = unique("dw")
    assert admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": postgres.url,
                                                   "writers": ["operator"]}).status_code == 201
    return name


def workers_of(stack: Stack, job_id: str) -> set[str]:
    return {c["worker"] for c in stack.db.job_chunks.find({"job": job_id}, {"worker": 1})}


def test_every_worker_of_the_pool_takes_a_share_of_one_job(stack: Stack, operator: Client, dw: str,
                                                          pool: tuple[str, str, list[Proc]], postgres: Postgres,
                                                          iris: Any) -> None:
    _, model, workers = pool
    job_id = start(operator, {"model": model, "source": {"datasource": dw, "table": "pool_rows", "keep": ["customer"]},
                              "destination": {"datasource": dw, "table": "pool_scores"}, "chunk_rows": 1000})
    job = wait_done(operator, job_id, 300)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"rows_done": ROWS, "rows_total": ROWS, "chunks_done": 120}
    assert len(workers_of(stack, job_id)) >= 2, "one worker scored the whole job"
    rows = postgres.execute("SELECT row_number, id, customer, prediction FROM pool_scores ORDER BY id")
    assert [r[0] for r in rows] == list(range(ROWS)) and [r[1] for r in rows] == list(range(1, ROWS + 1))
    assert all(r[2] == f"c{r[1]}" for r in rows)
    assert [r[3] for r in rows] == iris[0].predict(features(range(1, ROWS + 1))).tolist()


@pytest.mark.parametrize("table,order", [("pool_rows", "key"), ("pool_nokey", "ctid")])
def test_a_worker_killed_mid_chunk_leaves_every_row_written_exactly_once(stack: Stack, operator: Client, dw: str,
                                                                        pool: tuple[str, str, list[Proc]],
                                                                        postgres: Postgres, table: str, order: str) -> None:
    name, model, workers = pool
    if table == "pool_nokey":
        postgres.execute("CREATE TABLE pool_nokey AS SELECT * FROM pool_rows")
    out = f"killed_{order}"
    job_id = start(operator, {"model": model, "source": {"datasource": dw, "table": table, "keep": ["id"]},
                              "destination": {"datasource": dw, "table": out}, "chunk_rows": 500})
    victim = workers[-1]
    deadline = time.monotonic() + 120
    while operator.get(f"/api/v1/jobs/{job_id}").json()["progress"]["rows_done"] < 10_000:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.02)
    os.killpg(victim.popen.pid, 9)  # mid-chunk: it holds up to four chunks, unacknowledged
    victim.popen.wait(10)
    victim.stop()
    workers[-1] = start_worker(stack, name)  # the next tests keep three workers
    job = wait_done(operator, job_id, 300)
    assert job["status"] == "succeeded", job
    assert job["source"]["order"] == order
    assert job["attempts"] >= 2, "no chunk was redelivered: the victim held none when it was killed"
    assert postgres.execute(f"SELECT count(*), count(DISTINCT id), count(DISTINCT row_number), min(row_number), "
                            f"max(row_number) FROM {out}") == [(ROWS, ROWS, ROWS, 0, ROWS - 1)]
    chunks = job["progress"]["chunks_done"]
    assert postgres.execute("SELECT count(*), count(DISTINCT chunk) FROM modeldeck_job_chunks WHERE job_id = %s",
                            (job_id,)) == [(chunks, chunks)]


def test_a_job_on_several_workers_is_cancelled_with_only_committed_chunks_written(
        operator: Client, dw: str, pool: tuple[str, str, list[Proc]], postgres: Postgres) -> None:
    _, model, _ = pool
    job_id = start(operator, {"model": model, "source": {"datasource": dw, "table": "pool_rows"},
                              "destination": {"datasource": dw, "table": "pool_cancelled"}, "chunk_rows": 200})
    deadline = time.monotonic() + 60
    while operator.get(f"/api/v1/jobs/{job_id}").json()["progress"]["rows_done"] < 2000:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert operator.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] in ("cancelling", "cancelled")
    job = wait_done(operator, job_id, 120)
    assert job["status"] == "cancelled", job
    done = job["progress"]["rows_done"]
    assert 2000 <= done < ROWS
    assert postgres.execute("SELECT count(*), count(DISTINCT id) FROM pool_cancelled") == [(done, done)]


def test_a_bad_row_on_one_worker_fails_the_job_naming_it_and_keeps_what_was_committed(
        operator: Client, dw: str, pool: tuple[str, str, list[Proc]], postgres: Postgres) -> None:
    _, model, _ = pool
    postgres.execute("CREATE TABLE pool_holes AS SELECT * FROM pool_rows WHERE id <= 5000")
    postgres.execute("ALTER TABLE pool_holes ADD PRIMARY KEY (id)")
    postgres.execute("UPDATE pool_holes SET sepal_width = 'NaN' WHERE id = 2345")
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": dw, "table": "pool_holes"},
                                               "destination": {"datasource": dw, "table": "pool_holes_out"},
                                               "chunk_rows": 100}))
    assert job["status"] == "failed"
    assert job["error"] == {"code": "invalid_input", "message": "source row 2344, column 'sepal_width': expected a number, got nan"}
    done = job["progress"]["rows_done"]
    assert postgres.execute("SELECT count(*) FROM pool_holes_out") == [(done,)]
    assert postgres.execute("SELECT count(*) FROM pool_holes_out WHERE id BETWEEN 2301 AND 2400") == [(0,)]


def test_a_caller_without_write_access_is_refused_whatever_the_pool(admin: Client, make_client: Any,
                                                                  pool: tuple[str, str, list[Proc]], postgres: Postgres) -> None:
    _, model, _ = pool
    readonly = unique("ro")
    assert admin.post("/api/v1/datasources", json={"name": readonly, "kind": "sql", "url": postgres.url,
                                                   "readers": ["operator"]}).status_code == 201
    resp = make_client("operator").post("/api/v1/jobs", json={
        "model": model, "source": {"datasource": readonly, "table": "pool_rows"},
        "destination": {"datasource": readonly, "table": "out"}})
    assert resp.status_code == 403
    assert resp.json()["error"]["message"].startswith(f"data source '{readonly}' may be written by roles admin only")


# ---- any table: no key, a key of several columns, a unique key ------------------------------------------------------


def test_the_readme_example_scores_a_table_with_no_key(operator: Client, dw: str, pool: tuple[str, str, list[Proc]],
                                                     postgres: Postgres, iris: Any) -> None:
    """README's "Score a warehouse table" on a table of exactly the model's columns and no key (issue 24)."""
    _, model, _ = pool
    X = iris[1]
    postgres.execute("CREATE TABLE flowers (" + ", ".join(f"{f} double precision" for f in IRIS_FEATURES) + ")")
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO flowers VALUES (%s, %s, %s, %s)", [tuple(map(float, row)) for row in X])
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": dw, "table": "flowers"},
                                               "destination": {"datasource": dw, "table": "flower_scores"}}))
    assert job["status"] == "succeeded", job
    assert job["source"] == {"kind": "sql", "datasource": dw, "table": "flowers", "order": "ctid"}
    # row_number is the row's position in the table's physical order
    scored = postgres.execute("SELECT row_number, prediction FROM flower_scores ORDER BY row_number")
    assert [r[0] for r in scored] == list(range(len(X)))
    assert [r[1] for r in scored] == iris[0].predict(X).tolist()


def test_a_composite_primary_key_orders_and_resumes_the_job(operator: Client, dw: str, pool: tuple[str, str, list[Proc]],
                                                          postgres: Postgres, iris: Any) -> None:
    _, model, _ = pool
    postgres.execute("CREATE TABLE pairs AS SELECT id % 7 AS shop, id AS day, " + ", ".join(IRIS_FEATURES)
                     + " FROM pool_rows WHERE id <= 3000")
    postgres.execute("ALTER TABLE pairs ADD PRIMARY KEY (shop, day)")
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": dw, "table": "pairs"},
                                               "destination": {"datasource": dw, "table": "pair_scores"}, "chunk_rows": 250}))
    assert job["status"] == "succeeded", job
    assert job["source"]["key"] == ["shop", "day"] and job["source"]["order"] == "key"
    rows = postgres.execute("SELECT row_number, shop, day, prediction FROM pair_scores ORDER BY row_number")
    assert [(r[1], r[2]) for r in rows] == sorted((d % 7, d) for d in range(1, 3001))
    assert [r[3] for r in rows] == iris[0].predict(features([r[2] for r in rows])).tolist()


def test_a_not_null_unique_column_is_the_key_when_there_is_no_primary_key(operator: Client, dw: str,
                                                                        pool: tuple[str, str, list[Proc]],
                                                                        postgres: Postgres) -> None:
    _, model, _ = pool
    postgres.execute("CREATE TABLE tagged AS SELECT 'r' || lpad(id::text, 6, '0') AS tag, id AS maybe, "
                     + ", ".join(IRIS_FEATURES) + " FROM pool_rows WHERE id <= 999")
    postgres.execute("ALTER TABLE tagged ALTER COLUMN tag SET NOT NULL, ADD UNIQUE (maybe), ADD UNIQUE (tag)")
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": dw, "table": "tagged"},
                                               "destination": {"format": "csv"}, "chunk_rows": 100}))
    assert job["status"] == "succeeded", job
    assert job["source"]["key"] == "tag"  # 'maybe' is unique but may be NULL
    assert job["progress"] == {"rows_done": 999, "rows_total": 999, "chunks_done": 10}
    lines = operator.get(f"/api/v1/jobs/{job['id']}/result").text.splitlines()
    assert lines[0] == "\"row_number\",\"tag\",\"prediction\"" and lines[1].startswith("0,\"r000001\",")
    assert len(lines) == 1000


@pytest.mark.parametrize("key_sql,order", [("id INTEGER PRIMARY KEY", "key"), ("id INTEGER", "none")])
def test_another_database_is_scored_through_sqlalchemy_in_one_pass(stack: Stack, admin: Client, operator: Client,
                                                                  pool: tuple[str, str, list[Proc]], iris: Any,
                                                                  key_sql: str, order: str) -> None:
    """The fallback path: a SQLite table into another SQLite database, read and written through SQLAlchemy (one file
    for both would lock: SQLite lets no writer commit while the source's reading statement is open)."""
    import sqlite3

    _, model, _ = pool
    path = stack.tmp / f"{unique('lite')}.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE flowers ({key_sql}, " + ", ".join(f"{f} REAL" for f in IRIS_FEATURES) + ")")
        conn.executemany("INSERT INTO flowers VALUES (?, ?, ?, ?, ?)",
                         [(i + 1, *map(float, row)) for i, row in enumerate(iris[1])])
    name, out = unique("lite"), unique("lite-out")
    for ds, file in ((name, path), (out, path.with_suffix(".out.db"))):
        assert admin.post("/api/v1/datasources", json={"name": ds, "kind": "sql", "url": f"sqlite:///{file}",
                                                       "writers": ["operator"]}).status_code == 201
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": name, "table": "flowers", "keep": ["id"]},
                                               "destination": {"datasource": out, "table": "scores"}, "chunk_rows": 40}))
    assert job["status"] == "succeeded", job["error"]
    assert job["source"]["order"] == order and job["progress"]["chunks_done"] == 4
    with sqlite3.connect(path.with_suffix(".out.db")) as conn:
        rows = conn.execute("SELECT row_number, id, prediction FROM scores ORDER BY id").fetchall()
        markers = conn.execute("SELECT count(*), max(rows_done) FROM modeldeck_job_chunks").fetchall()
    assert [r[:2] for r in rows] == [(i, i + 1) for i in range(150)]
    assert [r[2] for r in rows] == iris[0].predict(iris[1]).tolist()
    assert markers == [(4, 150)]


def test_a_dataframe_pipeline_scores_a_warehouse_table_with_strings_booleans_and_nulls(
        admin_key: str, api_url: str, operator: Client, dw: str, postgres: Postgres) -> None:
    """A model fitted on named features gets each chunk as a DataFrame typed by its input schema, as predict does."""
    from modeldeck_client import ModelDeck
    from test_notebook_models import churn_frame

    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = churn_frame(400, 0)
    label = (frame["income"].fillna(50) + 2 * frame["visits"] > 80).map({True: "churn", False: "stay"})
    pre = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), ["city", "segment"]),
                             ("flags", "passthrough", ["member"]),
                             ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), ["income", "visits"])])
    model = make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(frame, label)
    name = unique("churn-batch")
    ModelDeck(api_url, admin_key).upload(model, name, sample=frame.head(20))
    rows = churn_frame(3000, 1)
    postgres.execute("CREATE TABLE customers_b (id int PRIMARY KEY, city text NOT NULL, member boolean NOT NULL, "
                     "income double precision, visits integer NOT NULL, segment text)")
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO customers_b VALUES (%s, %s, %s, %s, %s, %s)", [
            (i, r.city, bool(r.member), None if r.income != r.income else float(r.income), int(r.visits),
             r.segment if isinstance(r.segment, str) else None)
            for i, r in enumerate(rows.itertuples())])
    assert postgres.execute("SELECT count(*) FILTER (WHERE segment IS NULL) > 0, count(*) FILTER (WHERE income IS NULL) > 0 "
                            "FROM customers_b") == [(True, True)]
    job = wait_done(operator, start(operator, {"model": name, "source": {"datasource": dw, "table": "customers_b"},
                                               "destination": {"datasource": dw, "table": "customers_b_scores"},
                                               "chunk_rows": 700}))
    assert job["status"] == "succeeded", job["error"]
    scored = postgres.execute("SELECT id, prediction FROM customers_b_scores ORDER BY id")
    assert [r[0] for r in scored] == list(range(3000))
    assert [r[1] for r in scored] == model.predict(rows).tolist()


def test_a_bad_first_chunk_stops_the_job_before_the_rest_is_queued(stack: Stack, operator: Client, dw: str,
                                                                 pool: tuple[str, str, list[Proc]], postgres: Postgres) -> None:
    _, model, _ = pool
    postgres.execute("CREATE TABLE bad_first AS SELECT * FROM pool_rows WHERE id <= 5000")
    postgres.execute("ALTER TABLE bad_first ADD PRIMARY KEY (id)")
    postgres.execute("UPDATE bad_first SET petal_length = NULL WHERE id = 3")
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": dw, "table": "bad_first"},
                                               "destination": {"format": "csv"}, "chunk_rows": 100}))
    assert job["status"] == "failed"
    assert job["error"]["message"] == "source row 2, column 'petal_length': expected a number, got None"
    assert job["source"]["order"] == "key" and job["progress"]["rows_done"] == 0
    accounts = list(stack.db.job_chunks.find({"job": job["id"]}, {"state": 1, "worker": 1}))
    assert len(accounts) == 50 and sum(a["worker"] == "planner" and a["state"] == "skipped" for a in accounts) == 49
