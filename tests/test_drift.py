"""Drift: PSI and KS per feature between the reference sample and logged inputs; drift alerts."""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Client, Proc, Stack, start_api, unique, wait_for
from sample_models import SlowModel
from server.services.drift import ks_fallback, ks_test, psi_categorical, psi_numeric

COLORS = ["red", "green", "blue"]


def draw(rng: random.Random, n: int, shift: bool) -> list[list[Any]]:
    """Rows of (x1, x2, color); shifted rows move x2 by two standard deviations and favour blue."""
    weights = [0.1, 0.1, 0.8] if shift else [0.5, 0.3, 0.2]
    return [[rng.gauss(10, 2), rng.gauss(5, 1) + (2 if shift else 0), rng.choices(COLORS, weights)[0]]
            for _ in range(n)]


def reference_csv(rng: random.Random) -> bytes:
    lines = ["x1,x2,color"] + [f"{a:.4f},{b:.4f},{c}" for a, b, c in draw(rng, 1000, shift=False)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def drift_api(stack: Stack, worker: Proc, admin_key: str) -> Iterator[Client]:
    proc, url = start_api(stack, MODELDECK_ALLOW_PICKLE="true", MODELDECK_METRICS_FLUSH_INTERVAL_S="0.3",
                          MODELDECK_ALERT_INTERVAL_S="0.3", MODELDECK_DRIFT_MIN_ROWS="100")
    yield Client(url, admin_key)
    proc.stop()


def upload(client: Client, name: str, rng: random.Random, **policy: Any) -> None:
    resp = client.upload(name, pickle.dumps(SlowModel(0.0)), fmt="pickle", filename="m.pkl",
                         reference=reference_csv(rng), monitoring={"log_sample_rate": 1.0, **policy})
    assert resp.status_code == 201, resp.text


def send(client: Client, name: str, rows: list[list[Any]]) -> None:
    for start in range(0, len(rows), 100):
        resp = client.post(f"/api/v1/models/{name}/predict", json={"inputs": rows[start:start + 100]})
        assert resp.status_code == 200, resp.text


def drift_when(client: Client, name: str, rows: int) -> dict[str, Any]:
    body: dict[str, Any] = {}

    def logged() -> bool:
        nonlocal body
        resp = client.get(f"/api/v1/monitoring/models/{name}/drift", params={"window": "10m"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        return bool(body["rows"] >= rows)

    wait_for(logged, 15, f"prediction logs of {name}")
    return body


def test_shifted_inputs_flag_exactly_the_shifted_features(drift_api: Client) -> None:
    rng = random.Random(7)
    name = unique("drift")
    upload(drift_api, name, rng)
    send(drift_api, name, draw(rng, 400, shift=True))
    body = drift_when(drift_api, name, 400)
    status = {f["feature"]: f["status"] for f in body["features"]}
    assert status == {"x1": "ok", "x2": "alert", "color": "alert"}
    assert body["status"] == "alert"
    x1, x2, color = body["features"]
    assert x1["psi"] < 0.1 and x2["psi"] > 0.25 and color["psi"] > 0.25
    assert x2["ks_statistic"] > 0.5 and x2["ks_pvalue"] < 1e-6
    assert x1["ks_pvalue"] > 0.001
    assert color["ks_statistic"] is None
    assert body["thresholds"] == {"psi_warn": 0.1, "psi_alert": 0.25}


def test_unshifted_inputs_are_ok_and_drift_alerts_are_recorded_only_when_shifted(drift_api: Client) -> None:
    rng = random.Random(11)
    calm, shifted = unique("calm"), unique("shifted")
    upload(drift_api, calm, rng)
    upload(drift_api, shifted, rng)
    send(drift_api, calm, draw(rng, 300, shift=False))
    send(drift_api, shifted, draw(rng, 300, shift=True))
    body = drift_when(drift_api, calm, 300)
    assert body["status"] == "ok", body
    assert [f["status"] for f in body["features"]] == ["ok", "ok", "ok"]
    drift_when(drift_api, shifted, 300)

    def alerted() -> bool:
        return bool(drift_api.get("/api/v1/monitoring/alerts", params={"model": shifted}).json()["alerts"])

    wait_for(alerted, 15, "drift alert")
    [alert] = drift_api.get("/api/v1/monitoring/alerts", params={"model": shifted}).json()["alerts"]
    assert alert["kind"] == "drift" and alert["details"] == {"features": ["x2", "color"]}
    assert drift_api.get("/api/v1/monitoring/alerts", params={"model": calm}).json()["alerts"] == []


def test_per_model_thresholds_apply(drift_api: Client) -> None:
    rng = random.Random(3)
    name = unique("strict")
    upload(drift_api, name, rng, drift_psi_warn=0.0001, drift_psi_alert=50)
    send(drift_api, name, draw(rng, 200, shift=False))
    body = drift_when(drift_api, name, 200)
    assert body["thresholds"] == {"psi_warn": 0.0001, "psi_alert": 50}
    assert body["status"] == "warn"


def test_logging_and_thresholds_changed_after_upload_apply_and_are_audited(drift_api: Client, make_client: Any) -> None:
    rng = random.Random(13)
    name = unique("retune")
    resp = drift_api.upload(name, pickle.dumps(SlowModel(0.0)), fmt="pickle", filename="m.pkl",
                            reference=reference_csv(rng))
    assert resp.status_code == 201, resp.text
    assert resp.json()["monitoring"] is None
    send(drift_api, name, draw(rng, 100, shift=False))
    policy = {"log_sample_rate": 1.0, "drift_psi_warn": 0.0001, "drift_psi_alert": 50}
    resp = drift_api.put(f"/api/v1/models/{name}/versions/1/monitoring", json=policy)
    assert resp.status_code == 200, resp.text
    assert resp.json()["monitoring"] == {**policy, "log_outputs": False, "error_rate_alert": None, "p99_alert_ms": None,
                                         "alert_min_requests": None}
    # Every API process logs from now on: the 100 rows sent before the change were not logged.
    send(drift_api, name, draw(rng, 200, shift=False))
    body = drift_when(drift_api, name, 200)
    assert body["rows"] == 200
    assert body["thresholds"] == {"psi_warn": 0.0001, "psi_alert": 50}
    assert body["status"] == "warn"
    [entry] = drift_api.get("/api/v1/audit", params={"action": "model.monitoring", "target": f"{name}:1"}).json()["entries"]
    assert entry["details"]["old"] is None and entry["details"]["new"]["log_sample_rate"] == 1.0
    assert drift_api.get(f"/api/v1/models/{name}/versions/1").json()["monitoring"]["drift_psi_warn"] == 0.0001


@pytest.mark.parametrize("body, message", [
    ({"log_sample_rate": 2}, "log_sample_rate"),
    ({"drift_psi_warn": 0.5, "drift_psi_alert": 0.2}, "field 'drift_psi_alert': Value error, must be above drift_psi_warn (0.5), got 0.2"),
    ({"p99_alert_ms": 10, "paging": True}, "paging"),
])
def test_bad_monitoring_policies_are_refused_and_change_nothing(drift_api: Client, body: dict[str, Any],
                                                                message: str) -> None:
    name = unique("badpolicy")
    rng = random.Random(1)
    upload(drift_api, name, rng)
    resp = drift_api.put(f"/api/v1/models/{name}/versions/1/monitoring", json=body)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]["message"]
    assert drift_api.get(f"/api/v1/models/{name}/versions/1").json()["monitoring"]["log_sample_rate"] == 1.0
    assert drift_api.get("/api/v1/audit", params={"action": "model.monitoring", "target": f"{name}:1"}).json()["entries"] == []


def test_changing_a_monitoring_policy_needs_an_operator(drift_api: Client, make_client: Any) -> None:
    name = unique("policyrole")
    upload(drift_api, name, random.Random(2))
    analyst = make_client("analyst")
    assert analyst.put(f"/api/v1/models/{name}/versions/1/monitoring", json={}).status_code == 403
    assert drift_api.put(f"/api/v1/models/{name}/versions/9/monitoring", json={}).status_code == 404


def test_drift_needs_enough_logged_rows(drift_api: Client) -> None:
    rng = random.Random(5)
    name = unique("few")
    upload(drift_api, name, rng)
    resp = drift_api.get(f"/api/v1/monitoring/models/{name}/drift")
    assert resp.status_code == 200
    assert resp.json()["status"] == "insufficient_data"
    assert resp.json()["message"] == "0 logged rows in the window; drift needs at least 100"


def test_drift_without_a_reference_sample_says_how_to_get_one(drift_api: Client) -> None:
    name = unique("noref")
    assert drift_api.upload(name, pickle.dumps(SlowModel(0.0)), fmt="pickle", filename="m.pkl").status_code == 201
    resp = drift_api.get(f"/api/v1/monitoring/models/{name}/drift")
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == (
        f"model '{name}' version 1 has no reference sample; upload the version with a 'reference' CSV part")


def test_logged_rows_are_bounded_in_size(stack: Stack, drift_api: Client) -> None:
    rng = random.Random(9)
    name = unique("big")
    upload(drift_api, name, rng)
    rows = draw(rng, 2000, shift=False)
    resp = drift_api.post(f"/api/v1/models/{name}/predict", json={"inputs": rows})
    assert resp.status_code == 200
    wait_for(lambda: stack.db.prediction_logs.count_documents({"model": name}) == 1, 15, "prediction log")
    entry = stack.db.prediction_logs.find_one({"model": name})
    assert entry["rows"] == 2000 and entry["truncated"] is True
    assert 0 < len(entry["inputs"]) < 2000
    assert "outputs" not in entry


def test_psi_and_ks_agree_with_their_definitions() -> None:
    rng = random.Random(1)
    ref = [rng.gauss(0, 1) for _ in range(1000)]
    same = [rng.gauss(0, 1) for _ in range(1000)]
    moved = [rng.gauss(1, 1) for _ in range(1000)]
    assert psi_numeric(ref, same) < 0.05 < 0.25 < psi_numeric(ref, moved)
    assert psi_categorical({"a": 50, "b": 50}, ["a"] * 50 + ["b"] * 50) == 0
    assert psi_categorical({"a": 90, "b": 10}, ["a"] * 10 + ["b"] * 90) > 1
    for other in (same, moved):
        d, p = ks_test(ref, other)
        d2, p2 = ks_fallback(ref, other)
        assert d2 == pytest.approx(d, abs=1e-9)
        assert p2 == pytest.approx(p, rel=0.2, abs=1e-6)
