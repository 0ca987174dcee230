"""Batch scoring against the real PostgreSQL, real files and real workers: tables, files, progress, cancel, crash."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, Postgres, Stack, repository_counts, start_worker, unique


def rows_sql(n: int, table: str) -> str:
    # Deterministic iris-like rows: each id's features are a function of the id.
    return (f"CREATE TABLE {table} (id bigint PRIMARY KEY, customer text, " + ", ".join(f"{f} double precision" for f in IRIS_FEATURES)
            + f"); INSERT INTO {table} SELECT g, 'c' || g, 4.3 + (g % 36) / 10.0, 2.0 + (g % 24) / 10.0, "
            f"1.0 + (g % 59) / 10.0, 0.1 + (g % 25) / 10.0 FROM generate_series(1, {n}) g")


def features(ids: Any) -> np.ndarray:
    g = np.asarray(ids)
    return np.column_stack([4.3 + (g % 36) / 10.0, 2.0 + (g % 24) / 10.0, 1.0 + (g % 59) / 10.0, 0.1 + (g % 25) / 10.0])


@pytest.fixture(scope="module")
def source_db(postgres: Postgres) -> Postgres:
    postgres.execute(rows_sql(5000, "iris_rows"))
    return postgres


@pytest.fixture(scope="module")
def wh(admin: Client, source_db: Postgres) -> str:
    name = unique("wh")
    resp = admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": source_db.url,
                                                   "readers": ["operator"], "writers": ["operator"]})
    assert resp.status_code == 201, resp.text
    return name


@pytest.fixture(scope="module")
def model(operator: Client, iris_skops: bytes) -> str:
    name = unique("batch-iris")
    assert operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    return name


def wait_done(client: Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def start(client: Client, body: dict[str, Any]) -> str:
    resp = client.post("/api/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["kind"] == "batch"
    return str(resp.json()["job_id"])


def test_operator_scores_a_table_into_another_table(operator: Client, wh: str, model: str, source_db: Postgres,
                                                    iris: Any) -> None:
    out = f"scores_{os.urandom(3).hex()}"
    job_id = start(operator, {"model": model, "source": {"datasource": wh, "table": "iris_rows", "keep": ["customer"]},
                              "destination": {"datasource": wh, "table": out}, "chunk_rows": 700})
    job = wait_done(operator, job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"rows_done": 5000, "rows_total": 5000, "chunks_done": 8}
    assert job["result"] == {"datasource": wh, "table": out, "rows": 5000, "chunks": 8}
    rows = source_db.execute(f"SELECT row_number, id, customer, prediction FROM {out} ORDER BY id")
    assert len(rows) == 5000
    assert [r[0] for r in rows] == list(range(5000)) and all(r[2] == f"c{r[1]}" for r in rows)
    expected = iris[0].predict(features([r[1] for r in rows]))
    assert [r[3] for r in rows] == expected.tolist()
    listed = operator.get("/api/v1/jobs", params={"kind": "batch", "status": "succeeded"}).json()
    mine = next(j for j in listed["jobs"] if j["id"] == job_id)
    assert mine["progress"]["rows_done"] == 5000 and mine["owner"].startswith("apikey:operator")
    assert mine["source"] == {"kind": "sql", "datasource": wh, "table": "iris_rows", "key": "id", "order": "key"}


def test_a_query_with_parameters_is_scored_into_a_csv_download(operator: Client, wh: str, model: str, iris: Any) -> None:
    job_id = start(operator, {"model": model, "source": {
        "datasource": wh, "query": "SELECT * FROM iris_rows WHERE id <= :n", "params": {"n": 1234}, "key": "id"},
        "destination": {"format": "csv"}, "chunk_rows": 500})
    job = wait_done(operator, job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"rows_done": 1234, "rows_total": 1234, "chunks_done": 3}
    resp = operator.get(f"/api/v1/jobs/{job_id}/result")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{job_id}.csv"'
    table = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(table[0]) == ["row_number", "id", "prediction"]
    assert [int(r["id"]) for r in table] == list(range(1, 1235))
    assert [int(r["prediction"]) for r in table] == iris[0].predict(features(range(1, 1235))).tolist()


def test_a_parquet_file_source_is_scored_into_a_parquet_download(stack: Stack, admin: Client, operator: Client,
                                                                 model: str, iris: Any) -> None:
    directory = stack.tmp / "data" / unique("lake")
    directory.mkdir()
    X = iris[1]
    pq.write_table(pa.table({f: X[:, i] for i, f in enumerate(IRIS_FEATURES)} | {"label": [f"r{i}" for i in range(len(X))]}),
                   directory / "iris.parquet", row_group_size=40)
    lake = unique("lake")
    assert admin.post("/api/v1/datasources", json={"name": lake, "kind": "file", "path": str(directory)}).status_code == 201
    job_id = start(operator, {"model": model, "source": {"datasource": lake, "file": "iris.parquet", "keep": ["label"]},
                              "destination": {"format": "parquet"}, "chunk_rows": 64})
    job = wait_done(operator, job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"]["rows_total"] == len(X) == job["progress"]["rows_done"]
    resp = operator.get(f"/api/v1/jobs/{job_id}/result")
    assert resp.headers["Content-Type"] == "application/vnd.apache.parquet"
    result = pq.read_table(io.BytesIO(resp.content)).to_pydict()
    assert result["row_number"] == list(range(len(X))) and result["label"] == [f"r{i}" for i in range(len(X))]
    assert result["prediction"] == iris[0].predict(X).tolist()


def test_an_uploaded_csv_is_scored(operator: Client, model: str, iris: Any) -> None:
    X = iris[1][:77]
    text = ",".join(IRIS_FEATURES) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in X) + "\n"
    job = {"model": model, "destination": {"format": "csv"}, "chunk_rows": 20}
    resp = operator.post("/api/v1/jobs/upload", files={"job": (None, json.dumps(job)),
                                                       "file": ("rows.csv", io.BytesIO(text.encode()))})
    assert resp.status_code == 202, resp.text
    done = wait_done(operator, resp.json()["job_id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"rows_done": 77, "rows_total": 77, "chunks_done": 4}
    table = list(csv.DictReader(io.StringIO(operator.get(f"/api/v1/jobs/{done['id']}/result").text)))
    assert [int(r["prediction"]) for r in table] == iris[0].predict(X).tolist()


def test_a_running_job_is_cancelled_between_chunks(stack: Stack, operator: Client, wh: str, model: str,
                                                   source_db: Postgres) -> None:
    out = f"cancelled_{os.urandom(3).hex()}"
    job_id = start(operator, {"model": model, "source": {"datasource": wh, "table": "iris_rows"},
                              "destination": {"datasource": wh, "table": out}, "chunk_rows": 10})
    deadline = time.monotonic() + 60
    while operator.get(f"/api/v1/jobs/{job_id}").json()["progress"]["rows_done"] < 50:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    resp = operator.post(f"/api/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] in ("cancelling", "cancelled")
    job = wait_done(operator, job_id)
    assert job["status"] == "cancelled"
    done = job["progress"]["rows_done"]
    assert 50 <= done < 5000
    assert source_db.execute(f"SELECT count(*) FROM {out}") == [(done,)]  # committed chunks only, nothing half-written
    again = operator.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["message"] == (
        f"job '{job_id}' has already cancelled; only a queued or running job can be cancelled")
    actions = {e["action"]: e for e in stack.db.audit.find({"target": job_id})}
    assert {"job.create", "job.cancel", "job.finish"} <= set(actions)
    assert actions["job.finish"]["outcome"] == "cancelled"


def test_every_job_start_and_finish_is_audited_without_secrets(stack: Stack, operator: Client, wh: str, model: str) -> None:
    job_id = start(operator, {"model": model, "source": {"datasource": wh, "query": "SELECT * FROM iris_rows WHERE id < 10"},
                              "destination": {"format": "csv"}})
    assert wait_done(operator, job_id)["status"] == "succeeded"
    entries = list(stack.db.audit.find({"target": job_id}))
    assert [e["action"] for e in entries] == ["job.create", "job.finish"]
    assert entries[0]["details"]["source"] == {"kind": "sql", "datasource": wh, "table": None, "file": None, "filename": None}
    assert entries[1]["outcome"] == "success" and entries[1]["details"]["rows_done"] == 9


def test_an_existing_table_is_refused_at_submit_naming_it_and_the_options(stack: Stack, operator: Client, wh: str,
                                                                          model: str, source_db: Postgres) -> None:
    before = stack.db.jobs.count_documents({})
    resp = operator.post("/api/v1/jobs", json={"model": model, "source": {"datasource": wh, "table": "iris_rows"},
                                               "destination": {"datasource": wh, "table": "iris_rows"}})
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["message"] == (
        f"table 'iris_rows' already exists in data source '{wh}'; choose another table, or set destination.if_exists "
        "to 'append' to add the rows to it (if_exists takes 'fail', the default, or 'append')")
    assert resp.json()["error"]["details"]["if_exists"] == ["fail", "append"]
    assert stack.db.jobs.count_documents({}) == before
    assert source_db.execute("SELECT count(*) FROM iris_rows") == [(5000,)]


def test_writing_needs_a_data_source_the_caller_may_write(admin: Client, make_client: Any, model: str,
                                                        source_db: Postgres) -> None:
    readonly = unique("ro")
    assert admin.post("/api/v1/datasources", json={"name": readonly, "kind": "sql", "url": source_db.url,
                                                   "readers": ["operator"]}).status_code == 201
    resp = make_client("operator").post("/api/v1/jobs", json={
        "model": model, "source": {"datasource": readonly, "table": "iris_rows"},
        "destination": {"datasource": readonly, "table": "out"}})
    assert resp.status_code == 403
    assert resp.json()["error"]["message"] == (
        f"data source '{readonly}' may be written by roles admin only (and listed API keys); your role 'operator' "
        "may not write to it; ask an admin to add it")


BAD_JOBS = [
    ({"source": {"table": "iris_rows"}, "destination": {"format": "csv"}}, 400,
     "field 'source.datasource': expected the name of a data source (or upload a CSV with POST /api/v1/jobs/upload), got nothing"),
    ({"source": {"datasource": "WH", "table": "iris_rows"}}, 400,
     "field 'destination': expected {'format': 'csv' | 'parquet'} or {'datasource': ..., 'table': ...}, got nothing"),
    ({"source": {"datasource": "WH", "table": "iris_rows"}, "destination": {"format": "xlsx"}}, 400,
     "field 'destination.format': Input should be 'csv' or 'parquet', got 'xlsx'"),
    ({"source": {"datasource": "WH", "table": "iris_rows"}, "destination": {"format": "csv", "table": "t"}}, 400,
     "field 'destination': give either 'format' (a downloadable file) or 'datasource' and 'table', not both"),
    ({"source": {"datasource": "WH", "query": "SELECT id, customer FROM iris_rows"}, "destination": {"format": "csv"}}, 422,
     "source has no column 'sepal_length' (a model feature); its columns are: id, customer"),
    ({"source": {"datasource": "WH", "table": "iris_rows", "keep": ["colour"]}, "destination": {"format": "csv"}}, 422,
     "source has no column 'colour' (in 'source.keep'); its columns are: id, customer, " + ", ".join(IRIS_FEATURES)),
    ({"source": {"datasource": "WH", "table": "no_such_table"}, "destination": {"format": "csv"}}, 400,
     "field 'source.table': data source 'WH' has no table 'no_such_table'"),
    ({"source": {"datasource": "WH", "table": "iris_rows"}, "destination": {"datasource": "WH", "table": "x y"}}, 400,
     "field 'destination.table': expected a plain SQL name"),
    ({"source": {"datasource": "nope", "table": "t"}, "destination": {"format": "csv"}}, 404, "data source 'nope' does not exist"),
    ({"inputs": [[1, 2, 3, 4]], "source": {"datasource": "WH"}, "destination": {"format": "csv"}}, 400,
     "give either 'inputs' (an async prediction) or 'source' and 'destination' (batch scoring), not both"),
    ({"source": {"datasource": "WH", "table": "iris_rows"}, "destination": {"format": "csv"}, "chunk_rows": 0}, 400,
     "field 'chunk_rows': Input should be greater than or equal to 1, got 0"),
]


@pytest.mark.parametrize("body,status,message", BAD_JOBS, ids=[m[:40] for _, _, m in BAD_JOBS])
def test_bad_batch_jobs_say_what_is_wrong(stack: Stack, operator: Client, wh: str, model: str, body: dict[str, Any],
                                          status: int, message: str) -> None:
    before = stack.db.jobs.count_documents({})
    text = json.dumps({"model": model, **body}).replace('"WH"', f'"{wh}"')
    resp = operator.post("/api/v1/jobs", data=text, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert message.replace("'WH'", f"'{wh}'") in resp.json()["error"]["message"]
    assert stack.db.jobs.count_documents({}) == before


def test_a_result_is_only_downloadable_when_there_is_a_file(operator: Client, wh: str, model: str) -> None:
    out = f"t_{os.urandom(3).hex()}"
    job_id = start(operator, {"model": model, "source": {"datasource": wh, "query": "SELECT * FROM iris_rows WHERE id < 5"},
                              "destination": {"datasource": wh, "table": out}})
    assert wait_done(operator, job_id)["status"] == "succeeded"
    resp = operator.get(f"/api/v1/jobs/{job_id}/result")
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == f"job '{job_id}' has no file to download; its output went to {out}"


@pytest.fixture(scope="module")
def crash_setup(stack: Stack, operator: Client, admin: Client, iris_skops: bytes, source_db: Postgres) -> tuple[str, str, str]:
    """A model on a pool of its own (so the test controls its workers) and a 200,000-row table."""
    pool = f"crash{os.urandom(3).hex()}"
    name = unique("crash-iris")
    assert operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA, pool=pool).status_code == 201
    source_db.execute(rows_sql(200_000, "big_rows"))
    crash = unique("crash")
    assert admin.post("/api/v1/datasources", json={"name": crash, "kind": "sql", "url": source_db.url,
                                                   "writers": ["operator"]}).status_code == 201
    return pool, name, crash


def run_and_kill(stack: Stack, operator: Client, pool: str, body: dict[str, Any]) -> dict[str, Any]:
    """Start a job on a fresh worker, SIGKILL the worker mid-job, start another, return the finished job."""
    first = start_worker(stack, pool)
    job_id = start(operator, body)
    deadline = time.monotonic() + 120
    while operator.get(f"/api/v1/jobs/{job_id}").json()["progress"]["rows_done"] < 20_000:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    os.killpg(first.popen.pid, 9)
    first.popen.wait(10)
    first.stop()
    killed_at = operator.get(f"/api/v1/jobs/{job_id}").json()["progress"]["rows_done"]
    assert killed_at < 200_000, "the job finished before the worker was killed; make it bigger"
    second = start_worker(stack, pool)
    try:
        job = wait_done(operator, job_id, timeout_s=300)
    finally:
        second.stop()
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2
    return job


def test_a_worker_killed_mid_job_is_resumed_and_every_row_is_written_exactly_once(
        stack: Stack, operator: Client, source_db: Postgres, crash_setup: tuple[str, str, str]) -> None:
    pool, name, crash = crash_setup
    job = run_and_kill(stack, operator, pool, {"model": name, "source": {"datasource": crash, "table": "big_rows"},
                                              "destination": {"datasource": crash, "table": "big_scores"}, "chunk_rows": 2000})
    assert source_db.execute("SELECT count(*), count(DISTINCT id), count(DISTINCT row_number), min(id), max(id) "
                             "FROM big_scores") == [(200_000, 200_000, 200_000, 1, 200_000)]
    markers = source_db.execute("SELECT count(*), max(rows_done) FROM modeldeck_job_chunks WHERE job_id = %s", (job["id"],))
    assert markers == [(100, 200_000)]


def test_a_killed_query_to_csv_job_resumes_by_row_position_without_duplicates(
        stack: Stack, operator: Client, crash_setup: tuple[str, str, str], iris: Any) -> None:
    pool, name, crash = crash_setup
    # No key: the resumed run skips the rows already committed, so the query orders its rows itself.
    job = run_and_kill(stack, operator, pool, {
        "model": name, "source": {"datasource": crash, "query": "SELECT id, " + ", ".join(IRIS_FEATURES)
                                  + " FROM big_rows ORDER BY id", "keep": ["id"]},
        "destination": {"format": "csv"}, "chunk_rows": 2000})
    table = list(csv.DictReader(io.StringIO(operator.get(f"/api/v1/jobs/{job['id']}/result").text)))
    assert [int(r["id"]) for r in table] == list(range(1, 200_001))
    assert [int(r["row_number"]) for r in table] == list(range(200_000))
    assert [int(r["prediction"]) for r in table[::997]] == iris[0].predict(features(range(1, 200_001, 997))).tolist()


def test_analysts_see_only_their_own_jobs(make_client: Any, operator: Client) -> None:
    analyst = make_client("analyst")
    assert analyst.get("/api/v1/jobs").json()["jobs"] == []
    assert operator.get("/api/v1/jobs", params={"limit": 1}).json()["total"] >= 1


def test_an_expired_result_is_purged_with_its_file(stack: Stack, operator: Client, wh: str, model: str) -> None:
    from server.core import jobs_repo
    from server.core.clock import now_iso

    body = {"model": model, "source": {"datasource": wh, "query": "SELECT * FROM iris_rows WHERE id < 300", "key": "id"},
            "destination": {"format": "parquet"}}
    first, second = (wait_done(operator, start(operator, body)) for _ in range(2))
    sha = first["result"]["artifact"]
    assert second["result"]["artifact"] == sha  # same rows, same bytes: one stored file
    stack.db.jobs.update_one({"_id": first["id"]}, {"$set": {"expires_at": now_iso(-1)}})
    jobs_repo.purge_expired_jobs(stack.db)
    assert operator.get(f"/api/v1/jobs/{first['id']}").status_code == 404
    assert stack.db.artifacts.find_one({"_id": sha}) is not None  # still the second job's result
    assert operator.get(f"/api/v1/jobs/{second['id']}/result").status_code == 200
    stack.db.jobs.update_one({"_id": second["id"]}, {"$set": {"expires_at": now_iso(-1)}})
    jobs_repo.purge_expired_jobs(stack.db)
    assert stack.db.artifacts.find_one({"_id": sha}) is None
    assert stack.db.artifact_chunks.count_documents({"sha256": sha}) == 0


def test_a_null_feature_fails_the_job_naming_the_row_and_column(operator: Client, wh: str, model: str,
                                                               source_db: Postgres) -> None:
    source_db.execute("CREATE TABLE holes AS SELECT * FROM iris_rows WHERE id <= 30")
    source_db.execute("UPDATE holes SET petal_width = NULL WHERE id = 25")
    job = wait_done(operator, start(operator, {"model": model, "source": {"datasource": wh, "query": "SELECT * FROM holes",
                                                                         "key": "id"},
                                               "destination": {"format": "csv"}, "chunk_rows": 10}))
    assert job["status"] == "failed"
    assert job["error"] == {"code": "invalid_input",
                            "message": "source row 24, column 'petal_width': expected a number, got None"}
    assert job["progress"]["rows_done"] == 20  # the chunks before it were committed


@pytest.mark.parametrize("parts,message", [
    ({"job": (None, "{not json")}, "a batch job upload needs two multipart parts: 'job' (JSON) and 'file' (a CSV with a header row)"),
    ({"job": (None, "{not json"), "file": ("a.csv", b"a\n1\n")}, "part 'job' is not valid JSON: "),
    ({"job": (None, json.dumps({"model": "m", "inputs": [[1]], "destination": {"format": "csv"}})), "file": ("a.csv", b"a\n1\n")},
     "part 'job': an uploaded file is scored as a batch job; leave out 'inputs'"),
    ({"job": (None, json.dumps({"model": "MODEL", "destination": {"format": "csv"}})), "file": ("a.csv", b"")},
     "file 'a.csv': expected a CSV with a header row, got an empty file"),
    ({"job": (None, json.dumps({"model": "MODEL", "destination": {"format": "csv"}})), "file": ("a.csv", b"a,b\n1,2\n")},
     "source has no column 'sepal_length' (a model feature); its columns are: a, b"),
])
def test_bad_uploads_say_what_is_wrong(stack: Stack, operator: Client, model: str, parts: dict[str, Any], message: str) -> None:
    before = repository_counts(stack.db)
    files = {k: (v[0], v[1].replace("MODEL", model)) if v[0] is None else (v[0], io.BytesIO(v[1])) for k, v in parts.items()}
    resp = operator.post("/api/v1/jobs/upload", files=files)
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"]["message"].startswith(message)
    assert repository_counts(stack.db) == before  # no job, and the uploaded file was not kept
