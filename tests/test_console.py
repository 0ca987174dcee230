"""Console pages with Streamlit's AppTest against the real API (real services behind it)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import IRIS_FEATURES, ROOT, Client, unique
from test_quickstart import reference_csv

APP = str(ROOT / "console" / "app.py")


@pytest.fixture
def console(api_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MODELDECK_CONSOLE_API_URL", api_url)
    st.cache_resource.clear()

    def open_as(client: Client | None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        if client is not None:
            at.session_state.credential = client.key
            at.session_state.me = client.get("/api/v1/me").json()
        at.run()
        assert not at.exception, at.exception
        return at

    yield open_as
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def iris_model(operator: Client, iris_skops: bytes, iris) -> str:  # type: ignore[no-untyped-def]
    name = unique("console-iris")
    assert operator.upload(name, iris_skops, reference=reference_csv(iris[1])).status_code == 201
    assert operator.upload(name, iris_skops, reference=reference_csv(iris[1])).status_code == 201
    return name


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_sign_in_shows_the_servers_message_then_signs_in(console, admin_key: str) -> None:  # type: ignore[no-untyped-def]
    at = console(None)
    at.text_input[0].input("mdk_wrong")
    at.button[0].click()
    at.run()
    assert [e.value for e in at.error] == ["invalid API key"]
    at.text_input[0].input(admin_key)
    at.button[0].click()
    at.run()
    assert at.session_state.me["role"] == "admin"
    assert [m.label for m in at.metric] == ["Platform", "Broker", "Repository"]
    assert at.metric[0].value == "ready"


def test_an_analyst_is_not_offered_operator_pages(console, make_client) -> None:  # type: ignore[no-untyped-def]
    at = console(make_client("analyst"))
    with pytest.raises(Exception):
        go(at, "models")
    go(at, "predict")  # offered


def test_predict_from_the_form_shows_the_apis_answer(console, make_client, iris_model: str, iris) -> None:  # type: ignore[no-untyped-def]
    model, X = iris
    at = go(console(make_client("analyst")), "predict")
    model_box = next(s for s in at.selectbox if s.label == "Model")
    model_box.select(iris_model)
    at.run()
    fields = {n.label: n for n in at.number_input}
    assert list(fields) == IRIS_FEATURES
    for feature, value in zip(IRIS_FEATURES, X[100]):
        fields[feature].set_value(float(value))
    next(b for b in at.button if b.label == "Predict").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.success[0].value == f"Answered by {iris_model} version 2"
    shown = at.dataframe[0].value
    assert shown["prediction"].tolist() == model.predict(X[[100]]).tolist()


def test_a_classifier_shows_its_label_and_each_classs_probability_from_a_form_that_starts_at_the_reference(
        console, make_client, api_url: str, admin_key: str) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd
    from modeldeck_client import ModelDeck
    from test_notebook_models import churn_frame
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = churn_frame(300, 4).fillna({"income": 50.0, "segment": "a"})
    label = np.where(frame["city"] == "paris", "churn", "stay")
    model = make_pipeline(ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), ["city", "segment"]),
                                             ("n", SimpleImputer(), ["income", "visits"])]),
                          LogisticRegression(max_iter=1000)).fit(frame, label)
    name = unique("console-churn")
    ModelDeck(api_url, admin_key).upload(model, name, reference=frame)
    at = go(console(make_client("analyst")), "predict")
    next(s for s in at.selectbox if s.label == "Model").select(name)
    at.run()
    city = next(s for s in at.selectbox if s.label == "city")
    assert sorted(city.options) == ["lyon", "nice", "paris"]  # categories seen in the reference, not a free text box
    assert city.value == frame["city"].value_counts().index[0]  # starts at the most frequent
    income = next(n for n in at.number_input if n.label == "income")
    assert income.value == pytest.approx(float(frame["income"].median()))
    city.select("paris")
    next(b for b in at.button if b.label == "Predict").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    shown = at.dataframe[0].value
    row = pd.DataFrame([{c: shown[c].iloc[0] for c in ("city", "member", "income", "visits", "segment")}])
    assert row["city"].iloc[0] == "paris" and at.metric[0].value == model.predict(row)[0] == "churn"
    np.testing.assert_allclose([shown["P(churn)"].iloc[0], shown["P(stay)"].iloc[0]], model.predict_proba(row)[0],
                               atol=1e-9)
    assert len(at.get("plotly_chart")) == 1  # the probability of each class


def test_operator_promotes_and_rolls_back_with_confirmation(console, operator: Client, iris_model: str) -> None:  # type: ignore[no-untyped-def]
    at = go(console(operator), "models")
    next(s for s in at.selectbox if s.label == "Model").select(iris_model)
    at.run()
    next(s for s in at.selectbox if s.label == "Point it at version").select(1)
    at.run()
    next(b for b in at.button if b.label == "Move alias").click()
    at.run()
    assert at.warning[0].value == "tick the confirmation first"
    assert operator.get(f"/api/v1/models/{iris_model}").json()["aliases"] == {}
    next(s for s in at.selectbox if s.label == "Point it at version").select(1)
    next(c for c in at.checkbox if c.label.startswith("Yes, move the alias")).check()
    next(b for b in at.button if b.label == "Move alias").click()
    at.run()
    assert at.success[0].value == "'production' now points at version 1"
    assert operator.get(f"/api/v1/models/{iris_model}").json()["aliases"] == {"production": 1}


def test_operator_sets_a_versions_monitoring_policy(console, operator: Client, iris_model: str) -> None:  # type: ignore[no-untyped-def]
    at = go(console(operator), "models")
    next(s for s in at.selectbox if s.label == "Model").select(iris_model)
    at.run()
    next(s for s in at.selectbox if s.key == "policy_version").select(2)
    at.run()
    next(s for s in at.slider if s.label == "Log this share of predictions").set_value(0.25)
    next(n for n in at.number_input if n.label == "Alert: p99 above (ms)").set_value(250.0)
    next(n for n in at.number_input if n.label == "Drift PSI: warn at").set_value(0.5)
    next(n for n in at.number_input if n.label == "Drift PSI: alert at").set_value(0.2)
    next(b for b in at.button if b.label == "Save policy").click()
    at.run()
    # The server's refusal is shown word for word and nothing is saved.
    assert [e.value for e in at.error] == ["field 'drift_psi_alert': Value error, must be above drift_psi_warn (0.5), got 0.2"]
    assert operator.get(f"/api/v1/models/{iris_model}/versions/2").json()["monitoring"] is None
    next(s for s in at.selectbox if s.key == "policy_version").select(2)
    next(n for n in at.number_input if n.label == "Drift PSI: alert at").set_value(0.9)
    next(b for b in at.button if b.label == "Save policy").click()
    at.run()
    assert at.success[0].value == "monitoring policy of version 2 saved"
    policy = operator.get(f"/api/v1/models/{iris_model}/versions/2").json()["monitoring"]
    assert (policy["log_sample_rate"], policy["p99_alert_ms"], policy["drift_psi_warn"], policy["drift_psi_alert"],
            policy["error_rate_alert"]) == (0.25, 250.0, 0.5, 0.9, None)


def test_admin_creates_a_key_and_sees_it_once(console, admin: Client) -> None:  # type: ignore[no-untyped-def]
    at = go(console(admin), "keys")
    name = unique("console-key")
    next(t for t in at.text_input if t.label == "Name").input(name)
    next(b for b in at.button if b.label == "Create key").click()
    at.run()
    assert at.success[0].value == "Key created. Copy it now: it is shown only once."
    key = at.code[0].value
    assert Client(admin.base, key).get("/api/v1/me").json()["subject"] == f"apikey:{name}"


def test_audit_page_filters_and_verifies(console, admin: Client, iris_model: str) -> None:  # type: ignore[no-untyped-def]
    at = go(console(admin), "audit")
    next(t for t in at.text_input if t.label == "Action").input("model.upload")
    at.run()
    frame = at.dataframe[0].value
    assert set(frame["action"]) == {"model.upload"}
    assert f"{iris_model}:2" in set(frame["target"])
    next(b for b in at.button if b.label == "Verify the hash chain").click()
    at.run()
    assert at.success[0].value.startswith("Chain intact: ")


def plotted(values: Any) -> list[Any]:
    """Return a plotly trace's values: a list, or plotly's base64 typed array."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def test_monitoring_page_draws_the_apis_numbers(console, make_client, iris_model: str, stack, iris) -> None:  # type: ignore[no-untyped-def]
    analyst = make_client("analyst")
    for _ in range(5):
        assert analyst.post(f"/api/v1/models/{iris_model}/predict",
                            json={"inputs": [iris[1][0].tolist()], "version": 2}).status_code == 200
    import time

    deadline = time.monotonic() + 30
    while not any(m["model"] == iris_model for m in analyst.get("/api/v1/monitoring/overview").json()["busiest_models"]):
        assert time.monotonic() < deadline, "metrics were not flushed"
        time.sleep(0.5)
    overview = analyst.get("/api/v1/monitoring/overview", params={"window": "6h"}).json()
    at = go(console(analyst), "monitoring")
    assert at.metric[0].label == "Requests" and int(at.metric[0].value) >= overview["requests"]
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    pools = analyst.get("/api/v1/monitoring/pools", params={"since": int(time.time()) - 21600}).json()["pools"]
    cpu = next(p["points"] for p in pools if p["name"] == "cpu")
    drawn = next(trace for trace in charts["Live workers over time"]["data"] if trace["name"] == "cpu")
    assert plotted(drawn["y"])[:len(cpu)] == [p["workers"] for p in cpu] and cpu[0]["workers"] >= 1
    assert "Queue depth over time" in charts
    next(s for s in at.selectbox if s.label == "Model").select(iris_model)
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) >= 4
    # Per version: the analyst's requests went to version 2; version 1's chart exists only if the API has points for it.
    v1 = analyst.get(f"/api/v1/monitoring/models/{iris_model}", params={"version": 1, "since": int(time.time()) - 21600})
    for version, expected in ((2, True), (1, bool(v1.json()["points"]))):
        next(s for s in at.selectbox if s.key == "series_version").select(version)
        at.run()
        titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
        assert (f"{iris_model} v{version}: latency (ms)" in titles) is expected, titles


def test_operator_sees_workers_and_scales_a_pool(console, operator: Client, stack) -> None:  # type: ignore[no-untyped-def]
    at = go(console(operator), "runtimes")
    assert any(s.value.startswith("Pool cpu") for s in at.subheader)
    live = next(m for m in at.metric if m.label == "Live workers")
    assert int(live.value) >= 1
    frame = at.dataframe[0].value
    assert set(frame["state"]) <= {"idle", "busy", "starting", "stopping", "lost"} and len(frame) >= 1
    replicas = next(n for n in at.number_input if n.label == "Replicas")
    replicas.set_value(2)
    next(b for b in at.button if b.label == "Scale").click()
    at.run()
    assert at.success[0].value == "pool cpu scaling to 2"
    pool = next(p for p in operator.get("/api/v1/runtimes").json()["pools"] if p["name"] == "cpu")
    assert pool["replicas_desired"] == 2
    # No controller runs in this test, so nothing was started; forget the setting so later controllers ignore cpu.
    stack.db.pools.delete_one({"_id": "cpu"})
