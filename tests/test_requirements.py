"""A model's pip requirements are checked against the environments live workers report."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from conftest import IRIS_SCHEMA, Client, unique

ROW = [5.1, 3.5, 1.4, 0.2]
SKLEARN = version("scikit-learn")


def test_worker_reports_its_python_environment(stack, worker) -> None:  # type: ignore[no-untyped-def]
    doc = stack.db.workers.find_one({"pid": worker.popen.pid})
    assert doc["environment"]["scikit-learn"] == SKLEARN
    assert doc["environment"]["numpy"] == version("numpy")
    assert doc["environment"]["python"].startswith("3.11")


def test_model_whose_requirements_the_pool_meets_predicts(admin: Client, iris_skops: bytes) -> None:
    name = unique("req-ok")
    meta = {"input_schema": IRIS_SCHEMA, "requirements": [f"scikit-learn=={SKLEARN}", "numpy>=1.20", "skops"]}
    assert admin.upload(name, iris_skops, **meta).status_code == 201
    resp = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [ROW]})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("requirements, named, has", [
    (["scikit-learn>=99,<100"], "scikit-learn<100,>=99", SKLEARN),
    (["numpy>=1", "torch>=2.0"], "torch>=2.0", "no torch installed"),
])
def test_model_whose_requirements_no_worker_meets_is_refused_before_sending(
        admin: Client, iris_skops: bytes, stack, requirements: list[str], named: str, has: str) -> None:  # type: ignore[no-untyped-def]
    name = unique("req-unmet")
    assert admin.upload(name, iris_skops, input_schema=IRIS_SCHEMA, requirements=requirements).status_code == 201
    jobs_before = stack.db.jobs.count_documents({})
    for path, body in ((f"/api/v1/models/{name}/predict", {"inputs": [ROW]}), ("/api/v1/jobs", {"model": name, "inputs": [ROW]})):
        resp = admin.post(path, json=body)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["message"] == (
            f"model '{name}' version 1 needs {named}; pool cpu has {has}. Serve the pool from an environment that has it "
            "(see docs/runtime.md) or upload the model to a pool that does")
        assert resp.json()["error"]["details"]["requirement"] == named
    assert stack.db.jobs.count_documents({}) == jobs_before


@pytest.mark.parametrize("bad", ["scikit-learn>>1.0", "numpy==", "not a requirement!"])
def test_upload_with_a_bad_requirement_string_is_400_naming_it(admin: Client, iris_skops: bytes, bad: str) -> None:
    resp = admin.upload(unique("req-bad"), iris_skops, requirements=["numpy", bad])
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith(f"metadata field 'requirements', item 1: {bad!r} is not a pip requirement "
                              "(expected e.g. 'scikit-learn>=1.5,<1.6'): ")
