"""Uploading models: versions, formats, the pickle policy, and bad uploads that leave nothing behind."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from typing import Any

import pytest

from conftest import IRIS_SCHEMA, Client, repository_counts, unique
from sample_models import SlowModel


def post_raw(client: Client, files: dict[str, Any]) -> Any:
    return client.post("/api/v1/models", files=files)


def meta(name: str, **extra: Any) -> tuple[None, str]:
    return (None, json.dumps({"name": name, "format": "skops", "pool": "cpu", **extra}))


BAD_UPLOADS = [
    ("no file", lambda m, n: {"metadata": meta(n)}, 400, "missing file part 'file': attach the model artifact"),
    ("empty file", lambda m, n: {"file": ("m.skops", b""), "metadata": meta(n)}, 400, "file 'm.skops' is empty"),
    ("no metadata", lambda m, n: {"file": ("m.skops", m)}, 400,
     "missing form field 'metadata': expected a JSON object with name, format and pool"),
    ("metadata not JSON", lambda m, n: {"file": ("m.skops", m), "metadata": (None, "{name: iris")}, 400,
     "form field 'metadata' is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("metadata not an object", lambda m, n: {"file": ("m.skops", m), "metadata": (None, "[1]")}, 400,
     "form field 'metadata' must be a JSON object, got list"),
    ("unsupported format", lambda m, n: {"file": ("m.zip", m), "metadata": meta(n, format="zip")}, 400,
     "metadata field 'format': Input should be 'skops', 'onnx', 'joblib', 'pickle', 'torchscript' or 'huggingface', got 'zip'"),
    ("bad characters in name", lambda m, n: {"file": ("m.skops", m), "metadata": meta("iris model!")}, 400,
     "metadata field 'name': String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$', got 'iris model!'"),
    ("name over 100 characters", lambda m, n: {"file": ("m.skops", m), "metadata": meta("x" * 101)}, 400,
     "metadata field 'name': String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$', got '" + "x" * 78),
    ("unknown metadata key", lambda m, n: {"file": ("m.skops", m), "metadata": meta(n, colour="red")}, 400,
     "metadata field 'colour': Extra inputs are not permitted, got 'red'"),
    ("skops that is not a zip", lambda m, n: {"file": ("m.skops", b"not a model"), "metadata": meta(n)}, 422,
     "file is not a skops archive (expected a zip written by skops.io.dump)"),
    ("onnx that is not onnx", lambda m, n: {"file": ("m.onnx", m), "metadata": meta(n, format="onnx")}, 422,
     "file is not a valid ONNX model"),
    ("pickle while disabled", lambda m, n: {"file": ("m.pkl", pickle.dumps(1)), "metadata": meta(n, format="pickle")}, 422,
     "format 'pickle' is disabled on this server: pickles run arbitrary code when loaded; upload skops or onnx, "
     "or have an operator set MODELDECK_ALLOW_PICKLE=true"),
    ("duplicate schema field", lambda m, n: {"file": ("m.skops", m), "metadata": meta(
        n, input_schema=[{"name": "a", "type": "number"}, {"name": "a", "type": "number"}])}, 400,
     "metadata field 'input_schema': feature 'a' appears more than once"),
    ("reference without schema columns", lambda m, n: {
        "file": ("m.skops", m), "metadata": meta(n, input_schema=IRIS_SCHEMA), "reference": ("r.csv", b"a,b\n1,2\n")}, 422,
     "reference sample lacks column 'sepal_length' of the input schema; its columns are: a, b"),
]


@pytest.mark.parametrize("case,files,status,message", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_upload_is_refused_and_leaves_nothing(stack, operator: Client, iris_skops: bytes,
                                                  case, files, status, message) -> None:  # type: ignore[no-untyped-def]
    name = unique("bad")
    before = repository_counts(stack.db)
    resp = post_raw(operator, files(iris_skops, name))
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"].startswith(message)
    assert repository_counts(stack.db) == before
    assert operator.get(f"/api/v1/models/{name}").status_code == 404


def test_each_upload_is_a_new_immutable_version(operator: Client, iris_skops: bytes) -> None:
    name = unique("versions")
    versions = [operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA).json() for _ in range(3)]
    assert [v["version"] for v in versions] == [1, 2, 3]
    detail = operator.get(f"/api/v1/models/{name}").json()
    assert [v["version"] for v in detail["versions"]] == [1, 2, 3]
    assert detail["latest_version"] == 3
    one = operator.get(f"/api/v1/models/{name}/versions/2").json()
    assert one["sha256"] == versions[1]["sha256"] and one["input_schema"] == IRIS_SCHEMA


def test_skops_with_untrusted_types_is_refused(operator: Client) -> None:
    # A skops archive naming a type outside the trusted prefixes (here a builtin function) is code we will not load.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", json.dumps({"__class__": "eval", "__module__": "builtins",
                                              "__loader__": "TypeNode", "__id__": 1, "protocol": 2, "_skops_version": "0.16.0"}))
    resp = operator.upload(unique("evil"), buf.getvalue())
    assert resp.status_code == 422
    assert "skops file needs types that this deployment does not trust" in resp.json()["error"]["message"]


def test_operator_cannot_upload_pickle_even_when_enabled(tight_api: Client, make_client) -> None:  # type: ignore[no-untyped-def]
    operator = Client(tight_api.base, make_client("operator").key)
    resp = operator.upload(unique("pkl"), pickle.dumps(SlowModel(0)), fmt="pickle", filename="m.pkl")
    assert resp.status_code == 403
    assert resp.json()["error"]["message"] == "format 'pickle' runs arbitrary code when loaded; only an admin may upload it"


def test_admin_can_upload_pickle_when_enabled(tight_api: Client) -> None:
    resp = tight_api.upload(unique("pkl"), pickle.dumps(SlowModel(0)), fmt="pickle", filename="m.pkl")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "pickle"


def test_upload_over_the_size_limit_is_413(stack, tight_api: Client) -> None:  # type: ignore[no-untyped-def]
    before = repository_counts(stack.db)
    resp = tight_api.upload(unique("big"), b"\0" * (3 * 1024 * 1024))
    assert resp.status_code == 413
    assert resp.json()["error"]["message"] == "request body is over the upload limit of 1048576 bytes (MODELDECK_MAX_UPLOAD_MB)"
    assert repository_counts(stack.db) == before


def test_alias_errors(operator: Client, iris_skops: bytes) -> None:
    name = unique("alias")
    operator.upload(name, iris_skops)
    cases = [
        (f"/api/v1/models/{name}/aliases/production", {"version": 9}, 404, f"model '{name}' has no version 9"),
        (f"/api/v1/models/{name}/aliases/production", {"version": "one"}, 400,
         "field 'version': Input should be a valid integer, unable to parse string as an integer, got 'one'"),
        (f"/api/v1/models/{name}/aliases/latest", {"version": 1}, 400,
         "alias 'latest' is not allowed: use a letter then letters, digits, '_' or '-' (at most 50), not 'latest'"),
        (f"/api/v1/models/nope-{name}/aliases/production", {"version": 1}, 404, f"model 'nope-{name}' does not exist"),
    ]
    for path, body, status, message in cases:
        resp = operator.put(path, json=body)
        assert (resp.status_code, resp.json()["error"]["message"]) == (status, message)
