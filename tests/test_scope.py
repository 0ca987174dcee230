"""Model scope, walked over the OpenAPI document: every operation that names a model refuses a key scoped to another.

The walk reads ``x-model-scope`` from the document (server/http/scope.py), so an endpoint added later is covered
without a new test: where it finds its model (path, query, body, multipart part, job), what a list shows, or that
scoped keys may not use it at all.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import requests
from streamlit.testing.v1 import AppTest

from conftest import ROOT, Client, Stack, unique
from server.core import metrics_repo

ROLES = ["service", "analyst", "operator", "admin"]
# The other parts of a multipart upload, so only the part naming the model decides.
FORM_FILES = {"file": ("x.bin", b"x"), "reference": ("r.csv", b"a\n1\n")}


@pytest.fixture(scope="module")
def document(api_url: str) -> dict[str, Any]:
    return dict(Client(api_url, None).get("/api/v1/openapi.json").json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), op) for path, item in document["paths"].items() for method, op in item.items()]


@pytest.fixture(scope="module")
def world(stack: Stack, admin: Client, make_client: Any, iris_skops: bytes) -> dict[str, Any]:
    """Model A (the keys' scope) and model B (outside it) with a version, a job, an alert, metrics and a prediction."""
    a, b = unique("scope-a"), unique("scope-b")
    for name in (a, b):
        assert admin.upload(name, iris_skops).status_code == 201
    row = [5.1, 3.5, 1.4, 0.2]
    now = time.time()
    for name in (a, b):  # each model appears in every list: a prediction, a job, a metrics bucket, an alert
        assert admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [row]}).status_code == 200
        job = admin.post(f"/api/v1/models/{name}/predict?async=true", json={"inputs": [row]})
        assert job.status_code == 202, job.text
        metrics_repo.add_to_bucket(stack.db, metrics_repo.MINUTE, {"model": name, "version": 1, "pool": "cpu",
                                                                  "t": int(now) - int(now) % 60}, {"requests": 3, "ok": 3})
        metrics_repo.insert_alert(stack.db, {"_id": f"{name}:1:error_rate:{int(now)}", "model": name, "version": 1,
                                             "kind": "error_rate", "value": 1.0, "threshold": 0.5,
                                             "message": f"model {name} version 1: error rate 100%", "details": {},
                                             "time": "2026-12-06T00:00:00Z", "t": now, "window_s": 300})
    keys = {role: make_client(role, [a]) for role in ROLES}
    return {"a": a, "b": b, "job": job.json()["job_id"], "keys": keys, "missing": unique("scope-missing"),
            "missing_job": "job_" + "0" * 32}


def call(client: Client, path: str, method: str, scope: str, value: str) -> requests.Response:
    """Call an operation with the model (or job) the scope reads set to value; other parameters get dummies."""
    kind, _, where = scope.partition(":")
    params: dict[str, str] = {}
    concrete = re.sub(r"\{(\w+)\}", lambda m: value if m.group(1) == where else ("1" if m.group(1) == "version" else "x"),
                      path)
    kw: dict[str, Any] = {}
    if kind == "query":
        params[where] = value
    elif kind == "body":
        kw["json"] = {where: value}
    elif kind == "form":
        part, _, field = where.partition(".")
        kw["files"] = {part: (None, json.dumps({field: value})), **FORM_FILES}
    elif method in ("POST", "PUT"):
        kw["json"] = {}
    return client.request(method, concrete, params=params, **kw)


def comparable(resp: requests.Response, name: str) -> tuple[int, str]:
    """The answer with the name asked for and the request id taken out."""
    text = resp.text.replace(name, "<name>")
    return resp.status_code, re.sub(r'"request_id":\s*"[^"]*"', "", text)


def test_every_operation_declares_its_model_scope(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        scope = op.get("x-model-scope")
        assert scope in ("list", "none", "unscoped") or re.match(r"^(path|query|body|form|job):[\w.]+$", scope), (method, path)
        if "/models/{name}" in path:
            assert scope == "path:name", (method, path)


def test_each_model_naming_operation_answers_a_model_outside_the_scope_as_one_that_does_not_exist(
        document: dict[str, Any], world: dict[str, Any]) -> None:
    walked = 0
    for path, method, op in operations(document):
        scope, min_role = op["x-model-scope"], op["x-min-role"]
        if scope in ("list", "none", "unscoped") or min_role == "anyone":
            continue
        job = scope.startswith("job:")
        outside, missing = (world["job"], world["missing_job"]) if job else (world["b"], world["missing"])
        for role in ROLES[ROLES.index(min_role):]:
            client = world["keys"][role]
            refused = call(client, path, method, scope, outside)
            assert refused.status_code == 404, (method, path, role, refused.text)
            message = refused.json()["error"]
            message = message if isinstance(message, str) else message["message"]  # /v2 answers {"error": "..."}
            expected = (f"job '{outside}' does not exist or its result has expired" if job
                        else f"model '{outside}' does not exist")
            assert message == expected, (method, path, role)
            # Byte for byte what a model (or job) that does not exist gets: the key learns nothing.
            assert comparable(refused, outside) == comparable(call(client, path, method, scope, missing), missing), \
                (method, path, role)
            walked += 1
    assert walked >= 40, f"only {walked} operation and role pairs named a model"


def test_lists_show_only_the_models_in_scope(document: dict[str, Any], world: dict[str, Any]) -> None:
    lists = [(path, method, op) for path, method, op in operations(document) if op["x-model-scope"] == "list"]
    assert {p for p, _, _ in lists} >= {"/api/v1/models", "/api/v1/jobs", "/api/v1/monitoring/overview",
                                        "/api/v1/monitoring/alerts", "/metrics"}
    for path, method, op in lists:
        for role in ROLES[ROLES.index(op["x-min-role"]):]:
            client = world["keys"][role]
            for params in ({}, {"model": world["b"]}, {"prefix": "scope-"}):
                names = {p["name"] for p in op["parameters"] if p["in"] == "query"}
                resp = client.request(method, path, params={k: v for k, v in params.items() if k in names})
                assert resp.status_code == 200, (method, path, role, resp.text)
                assert world["b"] not in resp.text, (method, path, role, params)
            # Filtering is not emptying: the model in scope is still listed (the owner's filter aside for jobs).
            if not (path == "/api/v1/jobs" and role in ("service", "analyst")):
                assert world["a"] in client.request(method, path).text, (method, path, role)
            if "prefix" in names:
                assert world["a"] in client.request(method, path, params={"prefix": world["a"][:10]}).text, (path, role)


def test_lists_name_the_other_model_for_an_unscoped_key(document: dict[str, Any], world: dict[str, Any],
                                                         admin: Client) -> None:
    # The control for the test above: the same lists, read without a scope, do show model B.
    for path in ("/api/v1/models", "/api/v1/jobs", "/api/v1/monitoring/overview", "/api/v1/monitoring/alerts", "/metrics"):
        resp = admin.get(path, params={"limit": 500} if path in ("/api/v1/models", "/api/v1/jobs") else None)
        assert resp.status_code == 200 and world["b"] in resp.text, path


def test_operations_spanning_every_model_refuse_scoped_keys(document: dict[str, Any], world: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        if op["x-model-scope"] != "unscoped":
            continue
        for role in ROLES[ROLES.index(op["x-min-role"]):]:
            resp = call(world["keys"][role], path, method, "unscoped", "x")
            assert resp.status_code == 403, (method, path, role, resp.text)
            assert resp.json()["error"]["message"] == (
                f"this operation spans every model; a credential limited to models {world['a']} may not use it "
                "(use a key without 'models')")


def test_a_scoped_key_still_reaches_its_own_model(world: dict[str, Any], iris_skops: bytes) -> None:
    service, operator = world["keys"]["service"], world["keys"]["operator"]
    a = world["a"]
    assert service.get(f"/api/v1/models/{a}").status_code == 200
    assert service.post(f"/api/v1/models/{a}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
    assert service.get(f"/v2/models/{a}").status_code == 200
    assert operator.put(f"/api/v1/models/{a}/aliases/production", json={"version": 1}).status_code == 200
    listed = operator.get("/api/v1/models", params={"limit": 500}).json()
    assert [m["name"] for m in listed["models"]] == [a] and listed["total"] == 1
    # Its own job, by the job's model: readable by the key that queued it and by a scoped operator.
    job = service.post(f"/api/v1/models/{a}/predict?async=true", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).json()["job_id"]
    assert service.get(f"/api/v1/jobs/{job}").status_code == 200
    assert operator.get(f"/api/v1/jobs/{job}").status_code == 200
    jobs = operator.get("/api/v1/jobs").json()["jobs"]
    assert job in [j["id"] for j in jobs] and {j["model"] for j in jobs} == {a}
    # Each way of naming the model lets its own model through: a multipart part, a JSON body field.
    assert operator.upload(a, iris_skops).status_code == 201
    queued = operator.post("/api/v1/jobs", json={"model": a, "inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert queued.status_code == 202, queued.text


def test_an_unscoped_key_gets_the_same_answer_for_a_missing_model(admin: Client, world: dict[str, Any]) -> None:
    # What a scoped key sees for model B is exactly what anyone sees for a model that does not exist.
    scoped = world["keys"]["service"]
    for method, path, kw in (("GET", "/api/v1/models/{}", {}), ("POST", "/api/v1/models/{}/predict", {"json": {"inputs": [[1]]}}),
                             ("GET", "/v2/models/{}", {})):
        refused = scoped.request(method, path.format(world["b"]), **kw)
        missing = admin.request(method, path.format(world["missing"]), **kw)
        assert comparable(refused, world["b"]) == comparable(missing, world["missing"]), path


def test_the_console_offers_a_scoped_operator_only_its_models(api_url: str, world: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    monkeypatch.setenv("MODELDECK_CONSOLE_API_URL", api_url)
    st.cache_resource.clear()
    operator = world["keys"]["operator"]
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state.credential = operator.key
    at.session_state.me = operator.get("/api/v1/me").json()
    at.run()
    assert not at.exception, at.exception
    for hidden in ("runtimes", "audit"):
        with pytest.raises(Exception):
            at.switch_page(f"pages/{hidden}.py")
    at.switch_page("pages/models.py")
    at.run()
    assert not at.exception, at.exception
    shown = " ".join(str(e.value) for e in at.selectbox) + " ".join(str(df.value) for df in at.dataframe)
    assert world["a"] in shown and world["b"] not in shown
    st.cache_resource.clear()
