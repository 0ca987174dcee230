"""Data sources against the real PostgreSQL and real files: registration, protected access, bounded read-only preview."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pymongo
import pytest
from cryptography.fernet import Fernet, InvalidToken

from conftest import ROOT, Client, Postgres, Proc, Stack, free_port, start_api, unique, wait_for
from installer.services import nx_command, repository_answers

PASSWORD = "S3cret-" + os.urandom(6).hex()  # trust auth ignores it; it must never come back out


@pytest.fixture(scope="module")
def warehouse(postgres: Postgres) -> Postgres:
    postgres.execute("CREATE TABLE IF NOT EXISTS customers (id integer PRIMARY KEY, name text NOT NULL, "
                     "spend numeric(10,2), joined date)")
    postgres.execute("TRUNCATE customers")
    postgres.execute("INSERT INTO customers SELECT g, 'customer ' || g, g * 1.5, DATE '2024-01-01' + g "
                     "FROM generate_series(1, 1500) g")
    return postgres


def sql_url(pg: Postgres) -> str:
    return pg.url.replace("postgres@", f"postgres:{PASSWORD}@")


@pytest.fixture(scope="module")
def wh(admin: Client, warehouse: Postgres) -> str:
    name = unique("wh")
    resp = admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": sql_url(warehouse),
                                                   "readers": ["operator"], "description": "the warehouse"})
    assert resp.status_code == 201, resp.text
    return name


def test_admin_registers_a_warehouse_and_its_password_never_comes_back(stack: Stack, admin: Client, operator: Client,
                                                                      wh: str, warehouse: Postgres) -> None:
    shown = admin.get(f"/api/v1/datasources/{wh}").json()
    assert shown["url"] == f"postgresql+psycopg://postgres:***@127.0.0.1:5432/{warehouse.name}"
    assert shown["readers"] == ["operator"] and shown["kind"] == "sql"
    listing = operator.get("/api/v1/datasources")
    assert wh in [d["name"] for d in listing.json()["datasources"]]
    stored = stack.db.datasources.find_one({"_id": wh})
    assert PASSWORD not in str(stored)
    assert Fernet(stack.settings.secret_key.get_secret_value()).decrypt(stored["url_token"].encode()).decode() == sql_url(warehouse)
    entries = admin.get("/api/v1/audit", params={"action": "datasource.create", "target": wh}).json()["entries"]
    assert entries and entries[0]["details"]["secret_changed"] is True
    for text in (listing.text, str(entries)):
        assert PASSWORD not in text


def test_preview_returns_rows_and_column_types_within_the_limit(operator: Client, wh: str) -> None:
    resp = operator.post(f"/api/v1/datasources/{wh}/preview",
                         json={"query": "SELECT id, name, spend, joined FROM customers WHERE id <= :n ORDER BY id",
                               "params": {"n": 3}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [(c["name"], c["type"], c["db_type"]) for c in body["columns"]] == [
        ("id", "integer", "int4"), ("name", "string", "text"), ("spend", "number", "numeric"), ("joined", "date", "date")]
    assert body["rows"] == [[1, "customer 1", 1.5, "2024-01-02"], [2, "customer 2", 3.0, "2024-01-03"],
                            [3, "customer 3", 4.5, "2024-01-04"]]
    assert body["truncated"] is False
    limited = operator.post(f"/api/v1/datasources/{wh}/preview", json={"table": "customers", "limit": 10}).json()
    assert len(limited["rows"]) == 10 and limited["truncated"] is True
    capped = operator.post(f"/api/v1/datasources/{wh}/preview", json={"table": "customers", "limit": 5000}).json()
    assert len(capped["rows"]) == 1000  # MODELDECK_PREVIEW_MAX_ROWS


def test_parameters_are_bound_never_spliced_into_the_sql(operator: Client, wh: str, warehouse: Postgres) -> None:
    hostile = "x'; DROP TABLE customers; --"
    resp = operator.post(f"/api/v1/datasources/{wh}/preview",
                         json={"query": "SELECT id FROM customers WHERE name = :name", "params": {"name": hostile}})
    assert resp.status_code == 200 and resp.json()["rows"] == []
    assert warehouse.execute("SELECT count(*) FROM customers") == [(1500,)]


@pytest.mark.parametrize("query", [
    "INSERT INTO customers (id, name) VALUES (999999, 'intruder') RETURNING id",
    "DELETE FROM customers",
    "WITH gone AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM gone",
    "CREATE TABLE intruder (x int)",
])
def test_a_query_that_writes_is_refused_by_the_read_only_transaction(operator: Client, wh: str, warehouse: Postgres,
                                                                     query: str) -> None:
    resp = operator.post(f"/api/v1/datasources/{wh}/preview", json={"query": query})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["message"].startswith(
        f"data source '{wh}' is read here; the database refused a write: cannot execute ")
    assert resp.json()["error"]["message"].endswith("in a read-only transaction")
    assert warehouse.execute("SELECT count(*) FROM customers") == [(1500,)]
    assert warehouse.execute("SELECT to_regclass('intruder')") == [(None,)]


def test_a_slow_query_stops_at_the_statement_timeout(stack: Stack, admin_key: str, wh: str) -> None:
    proc, url = start_api(stack, MODELDECK_PREVIEW_TIMEOUT_S="1")
    try:
        started = time.monotonic()
        resp = Client(url, admin_key).post(f"/api/v1/datasources/{wh}/preview", json={"query": "SELECT pg_sleep(30)"})
        assert time.monotonic() - started < 10
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["message"] == (
            f"data source '{wh}': the query ran past the statement timeout of 1 s (MODELDECK_PREVIEW_TIMEOUT_S)")
    finally:
        proc.stop()


BAD_PREVIEWS = [
    ({"query": "SELEC 1"}, 400, "refused the query: syntax error at or near \"SELEC\""),
    ({"query": "SELECT 1", "table": "customers"}, 400, "is SQL: give exactly one of 'query' (a SELECT, with :name parameters from 'params') or 'table'"),
    ({"table": "customers; DROP TABLE customers"}, 400, "field 'table': expected a plain SQL name"),
    ({"query": "SELECT 1", "limit": 0}, 400, "field 'limit': Input should be greater than or equal to 1, got 0"),
    ({"query": "SELECT :a", "params": {"a": {"nested": 1}}}, 400, "field 'params.a.str': Input should be a valid string"),
]


@pytest.mark.parametrize("body,status,message", BAD_PREVIEWS, ids=[str(b) for b, _, _ in BAD_PREVIEWS])
def test_bad_preview_requests_say_what_is_wrong(operator: Client, wh: str, body: dict[str, Any], status: int,
                                                message: str) -> None:
    resp = operator.post(f"/api/v1/datasources/{wh}/preview", json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]


def test_a_role_not_listed_is_refused_and_a_listed_key_is_let_in(admin: Client, make_client: Any, wh: str,
                                                                 warehouse: Postgres) -> None:
    analyst = make_client("analyst")
    resp = analyst.post(f"/api/v1/datasources/{wh}/preview", json={"query": "SELECT 1"})
    assert resp.status_code == 403
    assert resp.json()["error"]["message"] == (
        f"data source '{wh}' may be read by roles operator (and listed API keys); your role 'analyst' may not read it; "
        "ask an admin to add it")
    assert analyst.get(f"/api/v1/datasources/{wh}").status_code == 403
    assert wh not in [d["name"] for d in analyst.get("/api/v1/datasources").json()["datasources"]]
    key_id = analyst.get("/api/v1/me").json()["key_id"]
    resp = admin.put(f"/api/v1/datasources/{wh}", json={"reader_keys": [key_id]})
    assert resp.status_code == 200, resp.text
    assert analyst.post(f"/api/v1/datasources/{wh}/preview", json={"query": "SELECT 1 AS one"}).json()["rows"] == [[1]]
    entries = admin.get("/api/v1/audit", params={"action": "datasource.update", "target": wh}).json()["entries"]
    assert entries[0]["details"]["secret_changed"] is False
    admin.put(f"/api/v1/datasources/{wh}", json={"reader_keys": []})
    assert analyst.post(f"/api/v1/datasources/{wh}/preview", json={"query": "SELECT 1"}).status_code == 403


def test_only_admins_register_change_or_remove_data_sources(operator: Client, wh: str) -> None:
    resp = operator.post("/api/v1/datasources", json={"name": unique("x"), "kind": "sql", "url": "sqlite://"})
    assert resp.status_code == 403
    assert operator.put(f"/api/v1/datasources/{wh}", json={"readers": ["analyst"]}).status_code == 403
    assert operator.delete(f"/api/v1/datasources/{wh}").status_code == 403


BAD_REGISTRATIONS = [
    ({"kind": "sql"}, 400, "a data source of kind 'sql' needs 'url' (a SQLAlchemy URL) and no 'path'"),
    ({"kind": "sql", "url": "not a url"}, 400, "field 'url': expected a SQLAlchemy URL such as postgresql://user:password@host:5432/db, got something that does not parse"),
    ({"kind": "sql", "url": "nosuchdb://u:pw@h/d"}, 400, "field 'url': no SQLAlchemy dialect 'nosuchdb' is installed here; install its driver on the API and worker hosts"),
    ({"kind": "file", "path": "relative/dir"}, 400, "field 'path': expected an absolute directory inside a data root"),
    ({"kind": "file", "path": "/etc"}, 403, "field 'path': '/etc' is outside the data roots"),
    ({"kind": "nfs", "path": "/x"}, 400, "field 'kind': Input should be 'sql' or 'file', got 'nfs'"),
    ({"kind": "sql", "url": "sqlite://", "readers": ["boss"]}, 400, "field 'readers.0': Input should be 'admin', 'operator', 'analyst' or 'service', got 'boss'"),
]


@pytest.mark.parametrize("body,status,message", BAD_REGISTRATIONS, ids=[str(b) for b, _, _ in BAD_REGISTRATIONS])
def test_bad_registrations_say_what_is_wrong(admin: Client, body: dict[str, Any], status: int, message: str) -> None:
    resp = admin.post("/api/v1/datasources", json={"name": unique("bad"), **body})
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]


def test_registering_a_name_twice_is_a_conflict(admin: Client, wh: str, warehouse: Postgres) -> None:
    resp = admin.post("/api/v1/datasources", json={"name": wh, "kind": "sql", "url": sql_url(warehouse)})
    assert resp.status_code == 409
    assert resp.json()["error"]["message"] == f"data source '{wh}' already exists; update it with PUT or pick another name"
    assert PASSWORD not in resp.text


# ---- files ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_source(stack: Stack, admin: Client) -> tuple[str, Path]:
    directory = stack.tmp / "data" / unique("files")
    (directory / "sub").mkdir(parents=True)
    (directory / "rows.csv").write_text("a,b,label\n1,2.5,x\n3,4.5,y\n")
    pq.write_table(pa.table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]}), directory / "sub" / "rows.parquet")
    outside = stack.tmp / "secret.csv"
    outside.write_text("password\nhunter2\n")
    (directory / "link.csv").symlink_to(outside)
    (directory / "linked-dir").symlink_to(stack.tmp)
    name = unique("files")
    resp = admin.post("/api/v1/datasources", json={"name": name, "kind": "file", "path": str(directory)})
    assert resp.status_code == 201, resp.text
    return name, directory


def test_files_in_the_source_are_previewed(operator: Client, files_source: tuple[str, Path]) -> None:
    name, _ = files_source
    csv_rows = operator.post(f"/api/v1/datasources/{name}/preview", json={"file": "rows.csv"}).json()
    assert csv_rows["rows"] == [[1, 2.5, "x"], [3, 4.5, "y"]]
    assert [c["type"] for c in csv_rows["columns"]] == ["integer", "number", "string"]
    parquet = operator.post(f"/api/v1/datasources/{name}/preview", json={"file": "sub/rows.parquet", "limit": 2}).json()
    assert parquet == {"columns": [{"name": "a", "type": "integer", "db_type": None},
                                   {"name": "b", "type": "number", "db_type": None}],
                       "rows": [[1, 0.5], [2, 1.5]], "truncated": True}


@pytest.mark.parametrize("path,message", [
    ("../secret.csv", "'..' is refused in a data source path, got '../secret.csv'"),
    ("sub/../../secret.csv", "'..' is refused in a data source path, got 'sub/../../secret.csv'"),
    ("/etc/passwd", "absolute paths are refused; give a path relative to the data source, got '/etc/passwd'"),
    ("link.csv", "symlinks are refused in a data source path: 'link.csv' passes through a link"),
    ("linked-dir/secret.csv", "symlinks are refused in a data source path: 'linked-dir/secret.csv' passes through a link"),
])
def test_a_file_path_cannot_escape_its_source(operator: Client, files_source: tuple[str, Path], path: str,
                                               message: str) -> None:
    name, _ = files_source
    resp = operator.post(f"/api/v1/datasources/{name}/preview", json={"file": path})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["message"] == message
    assert "hunter2" not in resp.text


def test_a_missing_file_is_404(operator: Client, files_source: tuple[str, Path]) -> None:
    name, _ = files_source
    resp = operator.post(f"/api/v1/datasources/{name}/preview", json={"file": "nope.csv"})
    assert (resp.status_code, resp.json()["error"]["message"]) == (404, "file 'nope.csv' does not exist in the data source")


def test_removing_a_data_source(admin: Client, warehouse: Postgres) -> None:
    name = unique("gone")
    assert admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": sql_url(warehouse)}).status_code == 201
    assert admin.delete(f"/api/v1/datasources/{name}").status_code == 200
    resp = admin.get(f"/api/v1/datasources/{name}")
    assert (resp.status_code, resp.json()["error"]["message"]) == (404, f"data source '{name}' does not exist")


# ---- the key -------------------------------------------------------------------------------------------------------


@pytest.fixture
def own_repository(stack: Stack, tmp_path: Path) -> Any:
    """A repository server of the test's own: nx-27017 shares collections across database names."""
    port = free_port()
    proc = Proc(nx_command(tmp_path / "repository.db", port, tmp_path), stack.env, tmp_path / "nx.log")
    wait_for(lambda: repository_answers(f"mongodb://127.0.0.1:{port}", 200), 30, "nx-27017", tmp_path / "nx.log")
    client: pymongo.MongoClient = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}")
    yield client[stack.settings.mongo_db], {**stack.env, "MODELDECK_EMBEDDED_MONGO_PORT": str(port)}
    client.close()
    proc.stop()


def test_rotating_the_key_reencrypts_every_secret_and_the_old_key_is_no_longer_needed(stack: Stack, tmp_path: Path,
                                                                                      own_repository: Any) -> None:
    from server.core import crypto, datasources_repo

    db, env = own_repository
    for n in range(3):
        datasources_repo.create_datasource(db, {"_id": f"src{n}", "kind": "sql", "url_display": "x",
                                                "url_token": crypto.encrypt(stack.settings, f"postgresql://u:pw{n}@h/d")})
    new_key = Fernet.generate_key().decode()
    (tmp_path / "new.key").write_text(new_key)
    env = {**env, "MODELDECK_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "installer.cli", "rotate-secret-key", "--new-key-file", str(tmp_path / "new.key")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("re-encrypted 3 data-source secret(s) with the new key; the old key is no longer needed")
    assert new_key not in out.stdout and stack.settings.secret_key.get_secret_value() not in out.stdout
    old = Fernet(stack.settings.secret_key.get_secret_value().encode())
    for n in range(3):
        token = db.datasources.find_one({"_id": f"src{n}"})["url_token"].encode()
        assert Fernet(new_key.encode()).decrypt(token).decode() == f"postgresql://u:pw{n}@h/d"
        with pytest.raises(InvalidToken):
            old.decrypt(token)
    entry = db.audit.find_one({"action": "secret_key.rotate"})
    assert entry["details"] == {"reencrypted": 3, "secret_changed": True}
    # The audit chain's key is derived from the secret key: the next entry hands it on, signed by both.
    from server.core import audit_repo

    old_audit, new_audit = audit_repo.derived_key(stack.settings.secret_key.get_secret_value()), audit_repo.derived_key(new_key)
    handover = db.audit.find_one({"seq": entry["seq"] + 1})
    assert handover["action"] == audit_repo.ROTATE and handover["key_id"] == audit_repo.key_id(new_audit)
    assert handover["old_mac"] == audit_repo.entry_mac(handover, old_audit)
    keys = audit_repo.AuditKeys(current=new_audit, previous=(old_audit,), head_path=tmp_path / "home" / "state" / "audit-head.json")
    assert audit_repo.verify(db, keys)["valid"] is True


def test_the_api_and_workers_refuse_to_start_with_data_sources_and_no_key(stack: Stack, own_repository: Any) -> None:
    from server.core import crypto, datasources_repo

    db, env = own_repository
    datasources_repo.create_datasource(db, {"_id": "src", "kind": "sql", "url_display": "x",
                                            "url_token": crypto.encrypt(stack.settings, "sqlite://")})
    # The audit chain has a key of its own here, so the missing secret key is the data sources' problem alone.
    env = {**env, "MODELDECK_SECRET_KEY": "", "MODELDECK_AUDIT_KEY": "an-audit-key-of-its-own"}
    expected = ("invalid configuration: MODELDECK_SECRET_KEY is not set, but 1 data source(s) are registered and their "
                "credentials are encrypted with it; set the key they were stored with (see docs/datasources.md)")
    worker = subprocess.run([sys.executable, "-m", "runtime.worker"], env=env, cwd=ROOT, capture_output=True, text=True, check=False,
                            timeout=60)
    assert worker.returncode == 2 and expected in worker.stderr
    log = stack.tmp / "api-nokey.log"
    api = Proc([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "server.http.wsgi:app"], env, log)
    wait_for(lambda: not api.alive(), 60, "the API to refuse to start")
    api.stop()
    assert expected in log.read_text()


def test_no_data_source_password_reaches_any_log(stack: Stack, operator: Client, wh: str) -> None:
    # A failing query and a failing connection, so errors were written with the URL at hand.
    operator.post(f"/api/v1/datasources/{wh}/preview", json={"query": "SELECT * FROM nowhere"})
    for path in sorted(stack.tmp.rglob("*.log")):
        assert PASSWORD not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("query,status,message", [
    ("SELECT x FROM t ORDER BY x", 200, None),
    ("INSERT INTO t VALUES (2) RETURNING x", 403, "is read here; the database refused a write: attempt to write a readonly database"),
    ("DELETE FROM t", 403, "is read here; the database refused a write: attempt to write a readonly database"),
    ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c", 504,
     "the query ran past the statement timeout of 10 s (MODELDECK_PREVIEW_TIMEOUT_S)"),
])
def test_a_sqlite_source_is_read_only_and_bounded_too(admin: Client, stack: Stack, query: str, status: int,
                                                      message: str | None) -> None:
    import sqlite3

    path = stack.tmp / f"{unique('lite')}.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x integer)")
        conn.execute("INSERT INTO t VALUES (1)")
    name = unique("lite")
    assert admin.post("/api/v1/datasources", json={"name": name, "kind": "sql", "url": f"sqlite:///{path}"}).status_code == 201
    resp = admin.post(f"/api/v1/datasources/{name}/preview", json={"query": query})
    assert resp.status_code == status, resp.text
    if message is None:
        assert resp.json()["rows"] == [[1]]
    else:
        assert message in resp.json()["error"]["message"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
