"""Hostile input: traversal, bombs, code in artifacts, oversized uploads and predictions that try to break the API.

Complements test_uploads.py (bad metadata, pickle policy, 413 on a small limit) and test_predict.py (bad rows):
here every request is built to attack, and each must get a clear 4xx while nothing is written or run.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import onnx
import psutil
import pytest
from conftest import IRIS_SCHEMA, Client, Stack, repository_counts, unique
from onnx import TensorProto, helper
from sample_models import ReverseShell

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def iris_name(operator: Client, iris_skops: bytes) -> str:
    name = unique("iris")
    assert operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    return name


@pytest.fixture(scope="module")
def schemaless_name(operator: Client, iris_skops: bytes) -> str:
    name = unique("free")
    assert operator.upload(name, iris_skops).status_code == 201
    return name


def error(resp: Any) -> str:
    return str(resp.json()["error"]["message"])


def with_member(skops_bytes: bytes, member: str, data: bytes) -> bytes:
    """A genuine skops archive with one more member added."""
    buf = io.BytesIO(skops_bytes)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr(member, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Path traversal
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "..", ".", "-rf", "a/b", "..\\..\\boot.ini", "name\x00.skops"])
def test_model_names_that_read_as_paths_are_refused(stack: Stack, operator: Client, iris_skops: bytes, name: str) -> None:
    before = repository_counts(stack.db)
    resp = operator.upload(name, iris_skops)
    assert resp.status_code == 400, resp.text
    assert error(resp).startswith("metadata field 'name': String should match pattern")
    assert repository_counts(stack.db) == before


def test_traversal_in_the_client_file_name_is_kept_to_its_base_name(operator: Client, iris_skops: bytes, tmp_path: Path) -> None:
    target = tmp_path / f"planted-{unique('x')}.skops"
    evil = "../" * 12 + str(target).lstrip("/")
    resp = operator.upload(unique("fname"), iris_skops, filename=evil)
    assert resp.status_code == 201, resp.text
    assert resp.json()["filename"] == target.name
    assert not target.exists()


def test_archive_member_outside_the_archive_is_refused(stack: Stack, operator: Client, iris_skops: bytes, tmp_path: Path) -> None:
    planted = tmp_path / "zipslip.txt"
    member = "../" * 12 + str(planted).lstrip("/")
    before = repository_counts(stack.db)
    resp = operator.upload(unique("zipslip"), with_member(iris_skops, member, b"owned"))
    assert resp.status_code == 422, resp.text
    assert error(resp) == f"archive member {member!r} points outside the archive; refused"
    assert not planted.exists()
    assert repository_counts(stack.db) == before


def test_url_path_traversal_finds_nothing(operator: Client) -> None:
    for path in ["/api/v1/models/..%2F..%2Fetc%2Fpasswd", "/api/v1/models/%2e%2e/versions/1",
                 "/api/v1/models/x/versions/1/..%2F..%2F..%2Fartifact"]:
        resp = operator.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------------------------------------------
# Bombs
# ---------------------------------------------------------------------------------------------------------------

def test_zip_bomb_is_refused_before_anything_inflates_it(stack: Stack, tight_api: Client, iris_skops: bytes) -> None:
    # 300 MB of spaces deflate to ~300 KB: under tight_api's 1 MB upload limit, 300 times over it unpacked.
    buf = io.BytesIO(iris_skops)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as z, z.open("bomb.json", "w", force_zip64=True) as f:
        block = b" " * (16 << 20)
        for _ in range(19):
            f.write(block)
    bomb = buf.getvalue()
    assert len(bomb) < 1024 * 1024
    warm = tight_api.upload(unique("warm"), iris_skops)
    assert warm.status_code == 201, warm.text  # the API imports skops once
    api = psutil.Process(_api_pid(tight_api))
    rss = api.memory_info().rss
    before = repository_counts(stack.db)
    resp = tight_api.upload(unique("bomb"), bomb)
    assert resp.status_code == 422, resp.text
    assert error(resp).startswith("archive unpacks to more than 1048576 bytes (member 'bomb.json' declares 318767104 bytes")
    assert error(resp).endswith("refused as a zip bomb")
    assert repository_counts(stack.db) == before
    assert api.memory_info().rss - rss < 50 * 1024 * 1024


def test_compressed_request_body_is_refused_not_inflated(operator: Client, iris_name: str) -> None:
    # A gzip body that would inflate to 100 MB of rows; the API must not inflate it (nor guess at it).
    raw = b'{"inputs": [' + b"[5.1, 3.5, 1.4, 0.2]," * 5_000_000 + b"[5.1, 3.5, 1.4, 0.2]]}"
    body = gzip.compress(raw, compresslevel=1)
    resp = operator.post(f"/api/v1/models/{iris_name}/predict", data=body,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status_code == 415, resp.text
    assert error(resp) == "Content-Encoding 'gzip' is not accepted; send the JSON body uncompressed"


# ---------------------------------------------------------------------------------------------------------------
# Code in artifacts
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Any:
    """A loopback port a reverse shell would dial; the test proves nothing ever connects."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(0.5)
    yield sock
    sock.close()


def nobody_called(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


def test_reverse_shell_pickle_is_refused_while_pickles_are_disabled(stack: Stack, admin: Client, operator: Client,
                                                                    listener: socket.socket) -> None:
    shell = pickle.dumps(ReverseShell("127.0.0.1", listener.getsockname()[1]))
    before = repository_counts(stack.db)
    for client in (admin, operator):
        resp = client.upload(unique("shell"), shell, fmt="pickle", filename="model.pkl")
        assert resp.status_code == 422, resp.text
        assert error(resp).startswith("format 'pickle' is disabled on this server")
    assert repository_counts(stack.db) == before
    assert nobody_called(listener)


def test_reverse_shell_pickle_when_enabled_only_from_an_admin_and_audited(tight_api: Client, make_client: Any,
                                                                          listener: socket.socket) -> None:
    shell = pickle.dumps(ReverseShell("127.0.0.1", listener.getsockname()[1]))
    name = unique("shell")
    operator = Client(tight_api.base, make_client("operator").key)
    refused = operator.upload(name, shell, fmt="pickle", filename="model.pkl")
    assert refused.status_code == 403
    assert error(refused) == "format 'pickle' runs arbitrary code when loaded; only an admin may upload it"
    accepted = tight_api.upload(name, shell, fmt="pickle", filename="model.pkl")
    assert accepted.status_code == 201, accepted.text
    try:
        assert nobody_called(listener)  # the API stored it without unpickling it
        entries = tight_api.get("/api/v1/audit", params={"target_prefix": name}).json()["entries"]
        uploads = [e for e in entries if e["action"] == "model.upload"]
        assert len(uploads) == 1 and uploads[0]["details"]["pickle"] is True and uploads[0]["role"] == "admin"
        denied = tight_api.get("/api/v1/audit", params={"outcome": "denied", "limit": 50}).json()["entries"]
        mine = [e for e in denied if e["request_id"] == refused.headers["X-Request-ID"]]
        assert len(mine) == 1 and mine[0]["status"] == 403 and mine[0]["role"] == "operator"
    finally:
        # Never leave a live reverse shell behind for a later test (or a fuzzer) to predict with.
        assert tight_api.delete(f"/api/v1/models/{name}/versions/1").status_code == 200


def test_skops_with_untrusted_types_is_refused_naming_them(operator: Client, iris_skops: bytes) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", json.dumps({
            "__class__": "Popen", "__module__": "subprocess", "__loader__": "ObjectNode", "__id__": 1,
            "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "__id__": 2,
                        "content": {}, "key_types": {"__class__": "list", "__module__": "builtins",
                                                     "__loader__": "ListNode", "__id__": 3, "content": []}},
            "protocol": 2, "_skops_version": "0.11.0"}))
    resp = operator.upload(unique("popen"), buf.getvalue())
    assert resp.status_code == 422, resp.text
    assert error(resp) == ("skops file needs types that this deployment does not trust: subprocess.Popen; "
                           "an admin may add their prefixes to MODELDECK_SKOPS_TRUSTED_PREFIXES")
    assert resp.json()["error"]["details"]["untrusted_types"] == ["subprocess.Popen"]


def test_onnx_with_a_custom_operator_domain_is_refused(stack: Stack, operator: Client) -> None:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])
    node = helper.make_node("ReverseShell", ["X"], ["Y"], domain="com.evil")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    onnx.checker.check_model(model)  # the ONNX checker itself lets it through
    before = repository_counts(stack.db)
    resp = operator.upload(unique("customop"), model.SerializeToString(), fmt="onnx", filename="m.onnx")
    assert resp.status_code == 422, resp.text
    assert error(resp).startswith("ONNX model uses custom operator domain(s) com.evil (ReverseShell); only the domains")
    assert resp.json()["error"]["details"]["custom_domains"] == ["com.evil"]
    assert repository_counts(stack.db) == before


# ---------------------------------------------------------------------------------------------------------------
# Oversized uploads
# ---------------------------------------------------------------------------------------------------------------

def _api_pid(client: Client) -> int:
    port = int(client.base.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            # gunicorn's arbiter listens; its one worker (a child) serves.
            children = psutil.Process(conn.pid).children()
            return children[0].pid if children else conn.pid
    raise AssertionError(f"no process listens on {port}")


def test_a_5_gb_upload_against_the_1_gb_limit_is_413_without_being_read(stack: Stack, admin: Client) -> None:
    api = psutil.Process(_api_pid(admin))
    rss = api.memory_info().rss
    port = int(admin.base.rsplit(":", 1)[1])
    boundary = "modeldeckboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps({'name': unique('huge'), 'format': 'skops', 'pool': 'cpu'})}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.skops\"\r\n\r\n").encode()
    declared = 5 * 1024**3
    before = repository_counts(stack.db)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"POST /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin.key}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n").encode())
        sock.sendall(head)
        sent = len(head)
        try:  # keep sending until the server answers or stops reading; it must not wait for all 5 GB
            sock.settimeout(0.05)
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"\0" * 1024 * 1024)
                sent += 1024 * 1024
        except (TimeoutError, ConnectionError):
            pass
        sock.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"413", reply[:500]
    assert b"request body is over the upload limit of 1073741824 bytes (MODELDECK_MAX_UPLOAD_MB)" in rest
    assert time.monotonic() - started < 10
    assert api.memory_info().rss - rss < 50 * 1024 * 1024
    assert repository_counts(stack.db) == before


def test_a_chunked_upload_with_no_length_stops_at_the_limit(stack: Stack, tight_api: Client) -> None:
    # No Content-Length to check up front: the server must stop reading at the limit, not after the stream.
    def body() -> Any:
        head = (f"--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
                f"{json.dumps({'name': unique('chunked'), 'format': 'skops', 'pool': 'cpu'})}\r\n"
                "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.skops\"\r\n\r\n").encode()
        yield head
        for _ in range(64):  # 64 MiB offered against a 1 MiB limit
            yield b"\0" * (1024 * 1024)

    before = repository_counts(stack.db)
    try:
        resp = tight_api.post("/api/v1/models", data=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    except Exception as exc:  # the server may close the connection while the client is still sending
        pytest.fail(f"the server dropped the connection instead of answering 413: {exc}")
    assert resp.status_code == 413, resp.text
    assert error(resp) == "request body is over the upload limit of 1048576 bytes (MODELDECK_MAX_UPLOAD_MB)"
    assert repository_counts(stack.db) == before


# ---------------------------------------------------------------------------------------------------------------
# Prediction inputs
# ---------------------------------------------------------------------------------------------------------------

def _deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


HOSTILE_PREDICTIONS = [
    ("100,000 rows over the row limit", {"json": {"inputs": [ROW] * 100_000}}, 413,
     "field 'inputs': 100000 rows is over the limit of 10000 per request (MODELDECK_MAX_PREDICT_ROWS); "
     "split the rows over several requests or score them with a batch job (POST /api/v1/jobs)"),
    ("JSON nested past the parser's depth", {"data": b'{"inputs": ' + _deep(100_000) + b"}"}, 400,
     "request body is not valid JSON: depth limit exceeded: line 1 column 1036 (char 1035)"),
    ("a row value nested 1,000 deep", {"data": b'{"inputs": [[' + _deep(1000) + b", 1, 1, 1]]}"}, 422,
     "row 0, field 'sepal_length': expected a number, got [[[[...]]]]"),
    ("a version nested 1,000 deep", {"data": b'{"inputs": [[1, 1, 1, 1]], "version": ' + _deep(1000) + b"}"}, 400,
     "field 'version.int': Input should be a valid integer, got [[[[...]]]]; "
     "field 'version.str': Input should be a valid string, got [[[[...]]]]"),
    ("a 9 MB string", {"json": {"inputs": [["x" * 9_000_000, 1, 1, 1]]}}, 422,
     "row 0, field 'sepal_length': expected a number, got '" + "x" * 37 + "..." + "x" * 38 + "'"),
    ("NaN", {"data": b'{"inputs": [[NaN, 1, 1, 1]]}'}, 400,
     "request body is not valid JSON: unexpected character, expected a JSON value: line 1 column 14 (char 13); "
     "NaN and Infinity are not JSON numbers: send finite numbers (or null where the model allows it)"),
    ("Infinity", {"data": b'{"inputs": [[1, -Infinity, 1, 1]]}'}, 400,
     "request body is not valid JSON: no digit after sign: line 1 column 18 (char 17); "
     "NaN and Infinity are not JSON numbers: send finite numbers (or null where the model allows it)"),
    ("a number that overflows to infinity", {"data": b'{"inputs": [[1e999, 1, 1, 1]]}'}, 400,
     "request body is not valid JSON: number is infinity when parsed as double: line 1 column 14 (char 13); "
     "NaN and Infinity are not JSON numbers: send finite numbers (or null where the model allows it)"),
    ("text/plain", {"data": b'{"inputs": [[1, 1, 1, 1]]}', "headers": {"Content-Type": "text/plain"}}, 415,
     "Content-Type must be application/json, got 'text/plain'; send the body as JSON with that header"),
    ("a form post", {"data": {"inputs": "1,1,1,1"}}, 415,
     "Content-Type must be application/json, got 'application/x-www-form-urlencoded'; send the body as JSON with that header"),
    ("multipart", {"files": {"inputs": ("rows.json", b'{"inputs": [[1, 1, 1, 1]]}')}}, 415,
     "Content-Type must be application/json, got 'multipart/form-data'; send the body as JSON with that header"),
    ("a body that is not UTF-8", {"data": b'{"inputs": [["\xff\xfe", 1, 1, 1]]}'}, 400,
     "request body is not valid JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)"),
]


@pytest.mark.parametrize("case,kw,status,message", HOSTILE_PREDICTIONS, ids=[c[0] for c in HOSTILE_PREDICTIONS])
def test_hostile_prediction_input_gets_a_clear_4xx(stack: Stack, operator: Client, iris_name: str,
                                                   case: str, kw: dict[str, Any], status: int, message: str) -> None:
    kw = dict(kw)
    if "data" in kw and isinstance(kw["data"], bytes):
        kw.setdefault("headers", {"Content-Type": "application/json"})
    before = repository_counts(stack.db)
    resp = operator.post(f"/api/v1/models/{iris_name}/predict", **kw)
    assert resp.status_code == status, resp.text[:500]
    assert error(resp) == message
    assert len(resp.content) < 4096  # nothing hostile is echoed back whole
    assert repository_counts(stack.db) == before


def test_schemaless_model_refuses_nested_and_non_finite_cells(operator: Client, schemaless_name: str) -> None:
    deep = b'{"inputs": [[' + _deep(1000) + b", 1, 1, 1]]}"
    resp = operator.post(f"/api/v1/models/{schemaless_name}/predict", data=deep, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text[:500]
    assert error(resp) == "row 0, column 0: expected a number, string or boolean, got [[[[...]]]]"


def test_the_row_limit_holds_for_async_jobs_too(stack: Stack, operator: Client, iris_name: str) -> None:
    before = repository_counts(stack.db)
    resp = operator.post(f"/api/v1/models/{iris_name}/predict?async=true", json={"inputs": [ROW] * 10_001})
    assert resp.status_code == 413, resp.text[:500]
    assert error(resp).startswith("field 'inputs': 10001 rows is over the limit of 10000 per request")
    assert repository_counts(stack.db) == before


def test_the_api_keeps_serving_after_the_attacks(operator: Client, iris_name: str) -> None:
    resp = operator.post(f"/api/v1/models/{iris_name}/predict", json={"inputs": [ROW] * 10_000})
    assert resp.status_code == 200, resp.text[:500]
    assert len(resp.json()["predictions"]) == 10_000
