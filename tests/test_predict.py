"""Predictions: bad requests, missing workers, timeouts and models that cannot load or run."""

from __future__ import annotations

import pickle
import time
import zipfile
import io
from typing import Any

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, Proc, Stack, repository_counts, start_worker, unique, wait_for
from sample_models import NaNModel, RaisingModel, SlowModel

from runtime.fastlane import _InlineGate
from server.predictions import task_spec
from server.router import Router


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


def test_the_fast_lane_and_celerys_default_strategy_answer_alike(stack: Stack, worker: Proc, operator: Client,
                                                                 iris_skops: bytes, iris: Any) -> None:
    """Workers answer runtime.predict through runtime.fastlane; MODELDECK_WORKER_FAST_LANE=false restores Celery's path."""
    model, X = iris
    pool = unique("defaultlane").replace("-", "_")
    default = start_worker(stack, pool, MODELDECK_WORKER_FAST_LANE="false")
    try:
        fast, slow = unique("fast"), unique("slow")
        assert operator.upload(fast, iris_skops).status_code == 201
        assert operator.upload(slow, iris_skops, pool=pool).status_code == 201
        rows = X[:50].tolist()
        # The API counts live workers from heartbeats at most a second old: wait until it sees the new pool's.
        wait_for(lambda: operator.post(f"/api/v1/models/{slow}/predict", json={"inputs": rows[:1]}).status_code != 503,
                 10, f"the API to see pool {pool}")
        answers = {}
        for name in (fast, slow):
            resp = operator.post(f"/api/v1/models/{name}/predict", json={"inputs": rows})
            assert resp.status_code == 200, resp.text
            answers[name] = resp.json()["predictions"]
        assert answers[fast] == answers[slow] == model.predict(X[:50]).tolist()
        assert "runtime.predict messages take the fast lane" in worker.log.read_text()
        assert "runtime.predict messages take the fast lane" not in default.log.read_text()
        # A model failure comes back the same way on both lanes: a clear error naming the model, not a hang.
        for name in (fast, slow):
            bad = operator.post(f"/api/v1/models/{name}/predict", json={"inputs": [[1.0, 2.0]]})
            assert bad.status_code == 500 and bad.json()["error"]["code"] == "model_error"
            assert bad.json()["error"]["message"].startswith(f"model '{name}' version 1 raised ValueError: X has 2 features")
    finally:
        default.stop()


def test_proven_fast_code_free_models_run_on_the_consumer_thread_and_others_on_the_pool(
        stack: Stack, tight_api: Client, iris_skops: bytes, iris: Any) -> None:
    """After 20 warm runs within MODELDECK_WORKER_INLINE_MAX_MS, a skops model's predictions skip the pool thread,
    for as many rows as those runs had; a pickled model always runs on the pool; answers are the same either way."""
    model, X = iris
    pool = unique("inline").replace("-", "_")
    # A generous bound so that a loaded CI machine does not decide the test; the default is 2 ms.
    proc = start_worker(stack, pool, MODELDECK_WORKER_INLINE_MAX_MS="500")
    router = Router(stack.settings.broker_url, stack.settings.queue_prefix)
    router.start()
    try:
        fast, coded = unique("fast"), unique("coded")
        assert tight_api.upload(fast, iris_skops, pool=pool).status_code == 201
        assert tight_api.upload(coded, pickle.dumps(SlowModel(0.0)), fmt="pickle", filename="m.pkl", pool=pool).status_code == 201
        specs = {name: task_spec(stack.db.versions.find_one({"_id": f"{name}:1"})) for name in (fast, coded)}

        def lanes(name: str, rows: list[list[float]], n: int) -> list[str]:
            out = []
            for i in range(n):
                reply = router.call(pool, "runtime.predict", [specs[name], rows], 10.0, f"{name}-{i}")
                result = reply["result"]
                assert result["ok"], result
                expected = model.predict(rows).tolist() if name == fast else [r[0] for r in rows]
                assert result["predictions"] == expected
                out.append(result["lane"])
            return out

        one, three = X[:1].tolist(), X[:3].tolist()
        assert lanes(fast, one, 1) == ["pool"]  # cold: the load's time says nothing about the model's speed
        assert lanes(fast, three, 20) == ["pool"] * 20
        assert lanes(fast, three, 3) == ["inline"] * 3
        assert lanes(fast, one, 1) == ["inline"]
        assert lanes(fast, X[:4].tolist(), 1) == ["pool"]  # more rows than any proven run
        assert lanes(coded, one, 25) == ["pool"] * 25  # pickles may run any code: never on the consumer thread
    finally:
        router.stop()
        proc.stop()


@pytest.mark.parametrize("fmt,inline", [("skops", True), ("onnx", True), ("pickle", False), ("joblib", False),
                                        ("torchscript", False)])
def test_inline_gate_admits_only_code_free_formats_within_proven_rows_and_bans_a_far_too_slow_inline_run(fmt: str, inline: bool) -> None:
    gate = _InlineGate(max_ms=2.0)
    spec = {"name": "m", "version": 1, "sha256": "ab" * 32, "format": fmt}
    rows = [[1.0, 2.0]] * 5
    warm = {"ok": True, "cold": False, "model_ms": 0.3}
    gate.observe(spec, rows, {**warm, "cold": True, "model_ms": 150.0}, inline=False)  # a load is not counted
    for _ in range(_InlineGate.RUNS - 1):
        gate.observe(spec, rows, warm, inline=False)
    assert not gate.allows([spec, rows])
    gate.observe(spec, rows, warm, inline=False)
    assert gate.allows([spec, rows]) is inline
    if not inline:
        return
    assert gate.allows([spec, rows[:1]]) and not gate.allows([spec, rows * 2])
    assert not gate.allows([spec]) and not gate.allows("junk")
    gate.observe(spec, rows, {**warm, "model_ms": 2.5}, inline=False)  # slow on the pool: proven again from zero
    assert not gate.allows([spec, rows])
    for _ in range(_InlineGate.RUNS):
        gate.observe(spec, rows, warm, inline=False)
    assert gate.allows([spec, rows])
    # The process was not scheduled (wall time over the bound, hardly any CPU): not the model's doing, still proven.
    gate.observe(spec, rows, {**warm, "model_ms": 9.0, "process_cpu_ms": 0.4}, inline=True)
    assert gate.allows([spec, rows])
    # The model's own work (its threads count: the whole process's CPU time) over the bound: proven again.
    gate.observe(spec, rows, {**warm, "model_ms": 9.0, "process_cpu_ms": 8.7}, inline=True)
    assert not gate.allows([spec, rows])
    for _ in range(_InlineGate.RUNS):
        gate.observe(spec, rows, warm, inline=False)
    assert gate.allows([spec, rows])
    gate.observe(spec, rows, {**warm, "model_ms": 25.0}, inline=True)  # ten times the bound inline: never again
    for _ in range(_InlineGate.RUNS * 2):
        gate.observe(spec, rows, warm, inline=False)
    assert not gate.allows([spec, rows])
    assert not _InlineGate(max_ms=0).allows([spec, rows])
