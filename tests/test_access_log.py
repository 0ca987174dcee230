"""The API's access log: a line per request, found by its request id, in text and JSON; no key or body in it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IRIS_FEATURES, IRIS_SCHEMA, ROOT, Client, Proc, Stack, start_api, unique

_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \d+ modeldeck.access (?P<fields>.*)$")
_TEXT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@pytest.fixture(scope="module", params=["text", "json"])
def logged_api(request: pytest.FixtureRequest, stack: Stack, worker: Proc,
               admin_key: str) -> Iterator[tuple[str, Client, Path]]:
    """An API process whose access log is in the given format; yields the format, an admin client and the log."""
    proc, url = start_api(stack, MODELDECK_ACCESS_LOG=request.param)
    yield request.param, Client(url, admin_key), proc.log
    proc.stop()


def access_entry(fmt: str, log: Path, rid: str) -> dict[str, object]:
    """Return the access-log entry of a request id, waiting briefly: it is written once the answer is out."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in log.read_text().splitlines() if rid in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
    if fmt == "json":
        return dict(json.loads(lines[0]))
    match = _TEXT_LINE.match(lines[0])
    assert match, lines[0]
    fields = {k: json.loads(v) if v.startswith('"') else v for k, v in _TEXT_FIELD.findall(match["fields"])}
    for key in ("status", "version"):
        if fields.get(key, "-") != "-":
            fields[key] = int(str(fields[key]))
    fields["duration_ms"] = float(str(fields["duration_ms"]))
    return fields


def test_each_request_has_one_access_line_with_who_what_status_and_time(
        logged_api: tuple[str, Client, Path], iris_skops: bytes) -> None:
    fmt, admin, log = logged_api
    name = unique("logged")
    assert admin.upload(name, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    made = admin.post("/api/v1/apikeys", json={"name": unique("caller"), "role": "service"})
    assert made.status_code == 201, made.text
    service = Client(admin.base, made.json()["key"])
    service_name = "apikey:" + made.json()["name"]
    bad_key = "mdk_" + uuid.uuid4().hex
    row = dict(zip(IRIS_FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True))
    rids = {status: f"access-{status}-{uuid.uuid4().hex[:8]}" for status in (401, 422, 200)}

    denied = Client(admin.base, bad_key).get("/api/v1/models", headers={"X-Request-ID": rids[401]})
    assert denied.status_code == 401
    invalid = service.post(f"/api/v1/models/{name}/predict", headers={"X-Request-ID": rids[422]},
                           json={"inputs": [{**row, "sepal_length": "forty-two"}]})
    assert invalid.status_code == 422, invalid.text
    answered = service.post(f"/api/v1/models/{name}/predict", headers={"X-Request-ID": rids[200]}, json={"inputs": [row]})
    assert answered.status_code == 200, answered.text

    probe = f"access-probe-{uuid.uuid4().hex[:8]}"
    assert admin.get("/healthz", headers={"X-Request-ID": probe}).status_code == 200

    entries = {status: access_entry(fmt, log, rid) for status, rid in rids.items()}
    # Successful probes (every few seconds from an orchestrator) are left out; the requests after one were logged.
    assert probe not in log.read_text()
    none = "-" if fmt == "text" else None
    assert {k: v for k, v in entries[401].items() if k not in ("time", "duration_ms")} == {
        "request_id": rids[401], "client": "127.0.0.1", "credential": "-", "method": "GET", "path": "/api/v1/models",
        "status": 401, "model": none, "version": none}
    assert {k: v for k, v in entries[422].items() if k not in ("time", "duration_ms")} == {
        "request_id": rids[422], "client": "127.0.0.1", "credential": service_name, "method": "POST",
        "path": f"/api/v1/models/{name}/predict", "status": 422, "model": name, "version": none}
    assert {k: v for k, v in entries[200].items() if k not in ("time", "duration_ms")} == {
        "request_id": rids[200], "client": "127.0.0.1", "credential": service_name, "method": "POST",
        "path": f"/api/v1/models/{name}/predict", "status": 200, "model": name, "version": 1}
    for entry in entries.values():
        assert 0 < float(entry["duration_ms"]) < 30000  # type: ignore[arg-type]
    if fmt == "json":
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", str(entries[200]["time"]))

    # Never a credential or a body: neither key, nor the row's values, appear anywhere in the API's log.
    text = log.read_text()
    for secret in (admin.key, service.key, bad_key, "forty-two"):
        assert secret and secret not in text



_EXIT_RIGHT_AFTER_A_REQUEST = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s")
from functools import partial
from flask import Flask, g
from server.http import access_log
from server.services.request_scope import run_after_response
app = Flask("exit")
app.add_url_rule("/x", "x", lambda: "ok")

@app.after_request
def deferred(resp):  # as server/http/app.py runs the request's deferred work once the answer is out
    pending = g.pop("after_response", None)
    if pending:
        resp.call_on_close(partial(run_after_response, pending))
    return resp

access_log.install(app, "text")
app.test_client().get("/x", headers={"X-Request-ID": sys.argv[1]}).close()
"""


def test_a_line_queued_just_before_the_process_exits_is_still_written(tmp_path: Path) -> None:
    """Lines are written by a thread every 0.1 s; the ones still queued are written as the process exits."""
    log, rid = tmp_path / "api.log", f"access-exit-{uuid.uuid4().hex[:8]}"
    with open(log, "ab") as stderr:  # the API's stderr is its log file (installer/processes.py)
        subprocess.run([sys.executable, "-c", _EXIT_RIGHT_AFTER_A_REQUEST, rid], cwd=ROOT, check=True, timeout=60,
                       stderr=stderr)
    assert [line for line in log.read_text().splitlines() if rid in line and "modeldeck.access" in line], log.read_text()
