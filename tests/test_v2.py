"""Open Inference Protocol v2 (KServe / Triton REST) end to end, with the real tritonclient and plain HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, unique

ROWS = [0, 1, 50, 51, 100, 149]


def bearer(client: Client) -> dict[str, str]:
    # A fresh dict on every call: tritonclient's infer() writes Inference-Header-Content-Length into the
    # headers dict it is given, which would then be sent, stale, with a later all-JSON request.
    return {"Authorization": f"Bearer {client.key}"}


@pytest.fixture(scope="module")
def tc(api_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=api_url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def iris_v2(operator: Client, make_client: Any, iris_skops: bytes) -> tuple[str, Client]:
    """An iris model uploaded with an input schema, and a service key scoped to it."""
    name = unique("v2-iris")
    resp = operator.upload(name, iris_skops, input_schema=IRIS_SCHEMA)
    assert resp.status_code == 201, resp.text
    return name, make_client("service", models=[name])


def matrix_input(rows: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))  # binary_data=True, tritonclient's default
    return tensor


def test_triton_client_reads_health_and_metadata_then_infers(tc, iris_v2, iris) -> None:  # type: ignore[no-untyped-def]
    name, service = iris_v2
    model, X = iris
    assert tc.is_server_live(headers=bearer(service)) and tc.is_server_ready(headers=bearer(service))
    assert tc.is_model_ready(name, headers=bearer(service)) and tc.is_model_ready(name, "1", headers=bearer(service))
    meta = tc.get_model_metadata(name, headers=bearer(service))
    assert meta["name"] == name and meta["versions"] == ["1"] and meta["platform"] == "skops"
    assert meta["inputs"] == [{"name": f, "datatype": "FP64", "shape": [-1]} for f in IRIS_FEATURES]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba", "predict_log_proba", "decision_function"]
    assert tc.get_model_metadata(name, "1", headers=bearer(service))["name"] == name
    assert "binary_tensor_data" in tc.get_server_metadata(headers=bearer(service))["extensions"]

    # One FP32 [N, 4] tensor sent as binary data; the output asked for as binary and as JSON.
    rows = X[ROWS].astype(np.float32)
    expected = model.predict(rows).tolist()
    for binary_out in (True, False):
        out = triton.InferRequestedOutput("predict", binary_data=binary_out)
        result = tc.infer(name, [matrix_input(rows)], outputs=[out], headers=bearer(service), request_id="req-42")
        assert result.as_numpy("predict").tolist() == expected
        response = result.get_response()
        assert response["model_name"] == name and response["model_version"] == "1" and response["id"] == "req-42"
        assert response["outputs"][0]["shape"] == [len(ROWS)]
        assert ("data" in response["outputs"][0]) is not binary_out

    # No outputs named: tritonclient asks for every output in binary.
    assert tc.infer(name, [matrix_input(rows)], headers=bearer(service)).as_numpy("predict").tolist() == expected

    # The probabilities, asked for by name beside the labels, in binary: one row per input, one column per class.
    outs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = tc.infer(name, [matrix_input(rows)], outputs=outs, headers=bearer(service))
    assert result.as_numpy("predict").tolist() == expected
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(rows), rtol=0, atol=1e-9)
    assert result.get_output("predict_proba")["parameters"]["classes"] == "[0,1,2]"

    # One FP64 tensor of shape [N] per feature, all in JSON, on version 1 named explicitly.
    per_feature = []
    for j, feature in enumerate(IRIS_FEATURES):
        tensor = triton.InferInput(feature, [len(ROWS)], "FP64")
        tensor.set_data_from_numpy(X[ROWS, j], binary_data=False)
        per_feature.append(tensor)
    out = triton.InferRequestedOutput("predict", binary_data=False)
    result = tc.infer(name, per_feature, model_version="1", outputs=[out], headers=bearer(service))
    assert result.as_numpy("predict").tolist() == model.predict(X[ROWS]).tolist()
    assert result.get_response()["model_version"] == "1"


def failure(call: Any, *args: Any, **kw: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kw)
    return info.value


def test_errors_come_back_as_protocol_error_objects(tc, iris_v2, iris, make_client) -> None:  # type: ignore[no-untyped-def]
    name, service = iris_v2
    X = iris[1][:3]

    missing = unique("v2-missing")
    err = failure(tc.infer, missing, [matrix_input(X)], headers=bearer(make_client("service")))
    assert err.status() == "404" and err.message() == f"model '{missing}' does not exist"
    err = failure(tc.infer, name, [matrix_input(X)], model_version="7", headers=bearer(service))
    assert err.status() == "404" and err.message() == f"model '{name}' has no version 7"

    err = failure(tc.infer, name, [matrix_input(X[:, :3])], headers=bearer(service))
    assert err.status() == "400"
    assert err.message() == ("input 'input-0': shape [3, 3] has 3 values per row; this model takes 4 "
                             "(sepal_length, sepal_width, petal_length, petal_width)")

    err = failure(tc.infer, name, [matrix_input(X)], outputs=[triton.InferRequestedOutput("proba")], headers=bearer(service))
    assert err.status() == "400" and err.message() == ("unknown output 'proba'; this model's outputs are predict, predict_proba, predict_log_proba, "
                                                          "decision_function")

    err = failure(tc.infer, name, [matrix_input(X)])
    assert err.status() == "401" and err.message().startswith("missing credential")
    assert failure(tc.get_model_metadata, name).status() == "401"

    # The same errors over plain HTTP: a JSON object with one string, "error".
    url = f"/v2/models/{name}/infer"
    short = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": X[:2].ravel().tolist()[:7]}]}
    resp = service.post(url, json=short)
    assert resp.status_code == 400
    assert resp.json() == {"error": "input 'input-0': shape [2, 4] needs 8 values, got 7"}
    columns = [{"name": f, "shape": [1], "datatype": "FP64", "data": ["x" if f == "petal_width" else 1.0]}
               for f in IRIS_FEATURES]
    resp = service.post(url, json={"inputs": columns})
    assert resp.status_code == 400 and resp.json() == {"error": "row 0, field 'petal_width': expected a number, got 'x'"}
    resp = Client(service.base, None).post(url, json=short)
    assert resp.status_code == 401 and set(resp.json()) == {"error"} and isinstance(resp.json()["error"], str)


def test_a_key_scoped_to_another_model_is_refused(tc, iris_v2, iris, make_client) -> None:  # type: ignore[no-untyped-def]
    name, _ = iris_v2
    other = make_client("service", models=[unique("v2-other")])
    # Outside its scope a model looks like one that does not exist (tests/test_scope.py walks every operation).
    err = failure(tc.infer, name, [matrix_input(iris[1][:2])], headers=bearer(other))
    assert err.status() == "404" and err.message() == f"model '{name}' does not exist"
    assert not tc.is_model_ready(name, headers=bearer(other))
    resp = other.get(f"/v2/models/{name}")
    assert resp.status_code == 404 and resp.json()["error"] == f"model '{name}' does not exist"


def test_binary_tensor_data_over_plain_http(iris_v2, iris) -> None:  # type: ignore[no-untyped-def]
    """The extension by hand: JSON header, then raw little-endian tensors; binary_data on an output wins."""
    name, service = iris_v2
    model, X = iris
    rows = X[ROWS]
    raw = rows.astype("<f8").tobytes()
    header = orjson.dumps({"id": "bin-1", "parameters": {"binary_data_output": True}, "inputs": [
        {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "parameters": {"binary_data_size": len(raw)}}]})
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    resp = service.post(f"/v2/models/{name}/infer", data=header + raw, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/octet-stream"
    n = int(resp.headers["Inference-Header-Content-Length"])
    answer = orjson.loads(resp.content[:n])
    (tensor,) = answer["outputs"]
    assert answer["id"] == "bin-1" and tensor["datatype"] == "INT64" and tensor["shape"] == [len(ROWS)]
    assert tensor["parameters"]["binary_data_size"] == len(resp.content) - n == 8 * len(ROWS)
    assert np.frombuffer(resp.content[n:], "<i8").tolist() == model.predict(rows).tolist()

    # "binary_data": false on the output overrides binary_data_output: a plain JSON answer.
    body = orjson.loads(header)
    body["outputs"] = [{"name": "predict", "parameters": {"binary_data": False}}]
    header = orjson.dumps(body)
    headers["Inference-Header-Content-Length"] = str(len(header))
    resp = service.post(f"/v2/models/{name}/infer", data=header + raw, headers=headers)
    assert resp.status_code == 200 and "Inference-Header-Content-Length" not in resp.headers
    assert resp.json()["outputs"][0]["data"] == model.predict(rows).tolist()

    # A binary_data_size that runs past the body is a 400 naming the input.
    resp = service.post(f"/v2/models/{name}/infer", data=header + raw[:-8], headers=headers)
    assert resp.status_code == 400
    assert resp.json() == {"error": f"input 'input-0': binary_data_size {len(raw)} runs past the end of the body"}
