"""Predictions: bad requests, missing workers, timeouts and models that cannot load or run."""

from __future__ import annotations

import pickle
import time
import zipfile
import io

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, repository_counts, unique
from sample_models import NaNModel, RaisingModel, SlowModel



@pytest.fixture(scope="module")
def iris_name(operator: Client, iris_skops: bytes) -> str:
    name = unique("iris")
    assert operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    return name


ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}

BAD_REQUESTS = [
    ("malformed JSON", b"{inputs: [", 400, "request body is not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)"),
    ("empty body", b"", 400, "request body is empty; expected a JSON object"),
    ("missing inputs", b"{}", 400, "field 'inputs': Field required, got nothing"),
    ("inputs not a list", b'{"inputs": 3}', 400, "field 'inputs': Input should be a valid list, got 3"),
    ("empty inputs", b'{"inputs": []}', 422, "field 'inputs': expected a non-empty list of rows, got an empty list"),
    ("missing feature", {"inputs": [ROW, {k: v for k, v in ROW.items() if k != "petal_width"}]}, 422,
     "row 1: missing field 'petal_width'; expected fields: " + ", ".join(IRIS_FEATURES)),
    ("extra feature", {"inputs": [{**ROW, "colour": "red"}]}, 422,
     "row 0: unknown field 'colour'; expected fields: " + ", ".join(IRIS_FEATURES)),
    ("wrong type", {"inputs": [ROW, {**ROW, "sepal_length": "forty"}]}, 422,
     "row 1, field 'sepal_length': expected a number, got 'forty'"),
    ("boolean for number", {"inputs": [{**ROW, "petal_width": True}]}, 422,
     "row 0, field 'petal_width': expected a number, got True"),
    ("short list row", {"inputs": [[5.1, 3.5, 1.4]]}, 422,
     "row 0: expected 4 values in schema order (" + ", ".join(IRIS_FEATURES) + "), got 3"),
    ("row of wrong kind", {"inputs": ["5.1,3.5"]}, 422,
     "row 0: expected an object keyed by feature name or a list in schema order, got '5.1,3.5'"),
    ("unknown body key", {"inputs": [ROW], "pool": "gpu"}, 400, "field 'pool': Extra inputs are not permitted, got 'gpu'"),
]


@pytest.mark.parametrize("case,body,status,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_predict_request(stack, operator: Client, iris_name: str, case, body, status, message) -> None:  # type: ignore[no-untyped-def]
    before = repository_counts(stack.db)
    kw = {"json": body} if isinstance(body, dict) else {"data": body, "headers": {"Content-Type": "application/json"}}
    resp = operator.post(f"/api/v1/models/{iris_name}/predict", **kw)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"] == message
    assert repository_counts(stack.db) == before


def test_unknown_model_version_or_alias_is_404(operator: Client, iris_name: str) -> None:
    cases = [
        ("/api/v1/models/no-such-model/predict", {"inputs": [ROW]}, "model 'no-such-model' does not exist"),
        (f"/api/v1/models/{iris_name}/predict", {"inputs": [ROW], "version": 7}, f"model '{iris_name}' has no version 7"),
        (f"/api/v1/models/{iris_name}/predict", {"inputs": [ROW], "version": "canary"},
         f"model '{iris_name}' has no alias 'canary'; known aliases: none"),
    ]
    for path, body, message in cases:
        resp = operator.post(path, json=body)
        assert (resp.status_code, resp.json()["error"]["message"]) == (404, message)


def test_json_body_over_the_limit_is_413(tight_api: Client, iris_name: str) -> None:
    resp = tight_api.post(f"/api/v1/models/{iris_name}/predict", json={"inputs": [ROW] * 400})
    assert resp.status_code == 413
    assert "the limit is 16384 bytes (MODELDECK_MAX_BODY_KB)" in resp.json()["error"]["message"]


def test_model_on_a_pool_without_workers_fails_fast_with_503(operator: Client, iris_skops: bytes) -> None:
    name = unique("gpu")
    assert operator.upload(name, iris_skops, pool="gpu").status_code == 201
    started = time.monotonic()
    resp = operator.post(f"/api/v1/models/{name}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert time.monotonic() - started < 1.0
    assert resp.status_code == 503
    assert resp.json()["error"]["message"] == (
        f"no worker is serving pool 'gpu' for model '{name}'; start a worker with MODELDECK_WORKER_POOL=gpu")


def test_slow_model_times_out_with_504_and_its_late_answer_goes_nowhere(tight_api: Client, iris_name: str, iris) -> None:  # type: ignore[no-untyped-def]
    slow = unique("slow")
    assert tight_api.upload(slow, pickle.dumps(SlowModel(3.5)), fmt="pickle", filename="m.pkl").status_code == 201
    started = time.monotonic()
    resp = tight_api.post(f"/api/v1/models/{slow}/predict", json={"inputs": [[1.0, 2.0]]}, headers={"X-Request-ID": "slow-1"})
    waited = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["message"] == (
        "no answer from pool 'cpu' within 2 s (request slow-1); the late result will be dropped")
    assert 1.9 < waited < 3.0
    # Requests made while the late answer arrives get their own answers, never the slow model's.
    model, X = iris
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        answer = tight_api.post(f"/api/v1/models/{iris_name}/predict", json={"inputs": X[:3].tolist()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == model.predict(X[:3]).tolist()
        assert answer.json()["model"] == iris_name


@pytest.mark.parametrize("model,message", [
    (RaisingModel(), "raised ValueError: feature scaling table is empty"),
    (NaNModel(), "failed: the model returned a non-finite value (nan)"),
])
def test_model_that_fails_gets_a_clear_error_and_the_worker_keeps_serving(tight_api: Client, iris_name: str, model, message) -> None:  # type: ignore[no-untyped-def]
    name = unique("broken")
    assert tight_api.upload(name, pickle.dumps(model), fmt="pickle", filename="m.pkl").status_code == 201
    resp = tight_api.post(f"/api/v1/models/{name}/predict", json={"inputs": [[1.0, 2.0]]})
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == f"model '{name}' version 1 {message}"
    assert tight_api.post(f"/api/v1/models/{iris_name}/predict", json={"inputs": [ROW]}).status_code == 200


def test_corrupt_artifact_is_reported_with_model_and_version(stack, operator: Client) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    data = sio.dumps(LogisticRegression(C=0.123, max_iter=300).fit(X, y))
    name = unique("corrupt")
    up = operator.upload(name, data)
    sha = up.json()["sha256"]
    # Flip bytes in the stored chunk, as a damaged disk or a hand edit would.
    chunk = stack.db.artifact_chunks.find_one({"sha256": sha, "n": 0})
    damaged = bytearray(chunk["data"])
    damaged[100:110] = b"\0" * 10
    stack.db.artifact_chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(damaged)}})
    resp = operator.post(f"/api/v1/models/{name}/predict", json={"inputs": [X[0].tolist()]})
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == (
        f"model '{name}' version 1 could not be loaded: artifact {sha} failed its sha256 check; it was altered in the repository")


def test_model_needing_a_missing_library_is_reported(operator: Client) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"")
    name = unique("torch")
    assert operator.upload(name, buf.getvalue(), fmt="torchscript", filename="m.pt").status_code == 201
    resp = operator.post(f"/api/v1/models/{name}/predict", json={"inputs": [[1.0]]})
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == (
        f"model '{name}' version 1 could not be loaded: torchscript models need torch, which this worker's environment lacks")
