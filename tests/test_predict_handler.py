"""The worker's handler for synchronous predictions (runtime/predict_handler.py) on real workers.

It leans on Celery's internals (its strategy hook, the consumer's pool, the message's ack), pinned in
pyproject.toml; these tests fail if the handler stops answering, if Celery's fallback task answers instead, or if
the inline lane stops taking effect.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from conftest import Client, Proc, Stack, start_worker, unique, wait_for
from sample_models import SlowModel
from runtime.predict_handler import InlineGate
from server.core import wire
from server.transport.router import Router


def test_a_synchronous_prediction_is_answered_by_the_handler_not_by_celerys_fallback_task(
        stack: Stack, worker: Proc, operator: Client, iris_skops: bytes, iris: Any) -> None:
    """The handler marks its answers with the lane it ran on; Celery's default strategy (the fallback task) cannot."""
    model, X = iris
    name = unique("handler")
    assert operator.upload(name, iris_skops).status_code == 201
    ref = wire.model_ref(stack.db.versions.find_one({"_id": f"{name}:1"}))
    router = Router(stack.settings.broker_url, stack.settings.queue_prefix)
    router.start()
    try:
        lanes = []
        for i in range(3):
            reply = router.call("cpu", wire.PredictRequest(ref, X[:2].tolist()), 10.0, f"handler-{i}")
            assert reply.status == wire.SUCCESS and reply.outcome is not None and reply.outcome.ok, reply
            assert reply.outcome.predictions == model.predict(X[:2]).tolist()
            lanes.append(reply.outcome.lane)
    finally:
        router.stop()
    # The same artifact may already be cached and proven fast by other tests: inline or pool, never "task".
    assert set(lanes) <= {"pool", "inline"}, lanes


def test_the_fast_lane_and_celerys_default_strategy_answer_alike(stack: Stack, worker: Proc, operator: Client,
                                                                 iris_skops: bytes, iris: Any) -> None:
    """Workers answer runtime.predict through runtime.predict_handler; MODELDECK_WORKER_FAST_LANE=false restores Celery's path."""
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
        models = {name: wire.model_ref(stack.db.versions.find_one({"_id": f"{name}:1"})) for name in (fast, coded)}

        def lanes(name: str, rows: list[list[float]], n: int) -> list[str]:
            out = []
            for i in range(n):
                outcome = router.call(pool, wire.PredictRequest(models[name], rows), 10.0, f"{name}-{i}").outcome
                assert outcome is not None and outcome.ok, outcome
                expected = model.predict(rows).tolist() if name == fast else [r[0] for r in rows]
                assert outcome.predictions == expected
                out.append(outcome.lane)
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
    gate = InlineGate(max_ms=2.0)
    model: wire.ModelRef = {"name": "m", "version": 1, "sha256": "ab" * 32, "format": fmt, "trusted_types": []}
    rows = [[1.0, 2.0]] * 5
    req = wire.PredictRequest(model, rows)

    def outcome(model_ms: float, cold: bool = False, process_cpu_ms: float | None = None) -> wire.PredictOutcome:
        return wire.PredictOutcome(ok=True, cold=cold, model_ms=model_ms, process_cpu_ms=process_cpu_ms)

    warm = outcome(0.3)
    gate.observe(req, outcome(150.0, cold=True), inline=False)  # a load is not counted
    for _ in range(InlineGate.RUNS - 1):
        gate.observe(req, warm, inline=False)
    assert not gate.allows(req)
    gate.observe(req, warm, inline=False)
    assert gate.allows(req) is inline
    if not inline:
        return
    assert gate.allows(wire.PredictRequest(model, rows[:1])) and not gate.allows(wire.PredictRequest(model, rows * 2))
    gate.observe(req, outcome(2.5), inline=False)  # slow on the pool: proven again from zero
    assert not gate.allows(req)
    for _ in range(InlineGate.RUNS):
        gate.observe(req, warm, inline=False)
    assert gate.allows(req)
    # The process was not scheduled (wall time over the bound, hardly any CPU): not the model's doing, still proven.
    gate.observe(req, outcome(9.0, process_cpu_ms=0.4), inline=True)
    assert gate.allows(req)
    # The model's own work (its threads count: the whole process's CPU time) over the bound: proven again.
    gate.observe(req, outcome(9.0, process_cpu_ms=8.7), inline=True)
    assert not gate.allows(req)
    for _ in range(InlineGate.RUNS):
        gate.observe(req, warm, inline=False)
    assert gate.allows(req)
    gate.observe(req, outcome(25.0), inline=True)  # ten times the bound inline: never again
    for _ in range(InlineGate.RUNS * 2):
        gate.observe(req, warm, inline=False)
    assert not gate.allows(req)
    assert not InlineGate(max_ms=0).allows(req)
