"""The README's quickstart, step by step, over real HTTP against the full stack."""

from __future__ import annotations

import csv
import io
import time

from conftest import IRIS_FEATURES, Client, unique


def reference_csv(X) -> bytes:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(IRIS_FEATURES)
    w.writerows(X[:60].tolist())
    return out.getvalue().encode()


def test_readme_quickstart(admin: Client, operator: Client, make_client, iris, iris_skops) -> None:  # type: ignore[no-untyped-def]
    model, X = iris
    name = unique("iris")

    # Health is open; everything else needs a key.
    assert admin.get("/healthz").json() == {"status": "ok"}
    assert Client(admin.base, None).get("/api/v1/models").status_code == 401

    # Upload two versions with a reference sample: the schema is inferred from its header.
    first = operator.upload(name, iris_skops, reference=reference_csv(X))
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1
    assert [f["name"] for f in first.json()["input_schema"]] == IRIS_FEATURES
    second = operator.upload(name, iris_skops, reference=reference_csv(X))
    assert second.json()["version"] == 2
    assert second.json()["sha256"] == first.json()["sha256"]

    listed = operator.get("/api/v1/models", params={"prefix": name}).json()
    assert [m["name"] for m in listed["models"]] == [name]
    assert listed["models"][0]["latest_version"] == 2

    # Predict with rows as objects and as lists: the latest version answers by default.
    rows = [dict(zip(IRIS_FEATURES, X[0])), list(X[100])]
    service = make_client("service", models=[name])
    answer = service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["predictions"] == model.predict(X[[0, 100]]).tolist()
    assert body["version"] == 2 and body["model"] == name and body["request_id"]

    # Promote version 1 to production: predictions without a version now use it; roll forward and back.
    assert operator.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1}).status_code == 200
    assert service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows}).json()["version"] == 1
    assert operator.put(f"/api/v1/models/{name}/aliases/production", json={"version": 2}).status_code == 200
    assert service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows}).json()["version"] == 2
    assert operator.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1}).status_code == 200
    by_alias = service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows, "version": "production"})
    assert by_alias.json()["version"] == 1

    # Archive the version no alias points at; the aliased one is refused.
    refused = admin.delete(f"/api/v1/models/{name}/versions/1")
    assert refused.status_code == 409
    assert "production" in refused.json()["error"]["message"]
    archived = admin.delete(f"/api/v1/models/{name}/versions/2")
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    gone = service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows, "version": 2})
    assert gone.status_code == 404

    # Async: 202 and a job id, then the result.
    queued = service.post(f"/api/v1/models/{name}/predict?async=true", json={"inputs": rows})
    assert queued.status_code == 202
    job_id = queued.json()["job_id"]
    deadline = time.monotonic() + 30
    while (job := service.get(f"/api/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["result"]["predictions"] == model.predict(X[[0, 100]]).tolist()
    assert job["version"] == 1

    # The OpenAPI document and Swagger UI are served.
    doc = admin.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/models/{name}/predict" in doc["paths"]
    for path in ("/api/docs", "/api/docs/"):  # both answer the page itself, no redirect
        page = admin.get(path, allow_redirects=False)
        assert page.status_code == 200 and "swagger-ui" in page.text
