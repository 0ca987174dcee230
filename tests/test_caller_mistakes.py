"""Two caller mistakes that were 500s: a BYTES tensor to a numeric model, a reference column with no values."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import IRIS_FEATURES, IRIS_SCHEMA, Client, unique


@pytest.fixture(scope="module")
def numeric_models(admin: Client, iris_skops: bytes, worker: Any) -> dict[str, str]:
    names = {"plain": unique("v2-plain"), "schema": unique("v2-schema")}
    assert admin.upload(names["plain"], iris_skops).status_code == 201
    assert admin.upload(names["schema"], iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
    return names


def _bytes(name: str, shape: list[int], data: list[str]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "BYTES", "data": data}


@pytest.mark.parametrize("model, inputs, message", [
    ("plain", [_bytes("input-0", [1, 4], ["a", "b", "c", "d"])],
     "input 'input-0': expected a numeric datatype (FP64, as GET /v2/models/{model} says), got BYTES; send numbers, "
     "or upload the model with an input schema that has string features"),
    ("schema", [_bytes("rows", [1, 4], ["a", "b", "c", "d"])],
     "input 'rows': expected a numeric datatype (FP64, as GET /v2/models/{model} says), got BYTES; send numbers, "
     "or upload the model with an input schema that has string features"),
    ("schema", [{"name": n, "shape": [1], "datatype": "FP64", "data": [1.0]} for n in IRIS_FEATURES[:3]]
     + [_bytes("petal_width", [1], ["wide"])],
     "input 'petal_width': expected datatype FP64 (feature 'petal_width' of model '{model}' is a number), got BYTES"),
])
def test_a_bytes_input_to_a_numeric_model_is_a_400_naming_the_input(admin: Client, numeric_models: dict[str, str],
                                                                    model: str, inputs: list[dict[str, Any]],
                                                                    message: str) -> None:
    name = numeric_models[model]
    resp = admin.post(f"/v2/models/{name}/infer", json={"inputs": inputs})
    assert (resp.status_code, resp.json()) == (400, {"error": message.format(model=name)})


def test_numbers_still_reach_a_numeric_model_through_v2(admin: Client, numeric_models: dict[str, str]) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    assert admin.post(f"/v2/models/{numeric_models['plain']}/infer", json=body).status_code == 200


@pytest.mark.parametrize("column, kind", [("sepal_width", "number"), ("petal_width", "integer")])
def test_a_reference_column_with_no_values_is_a_422_naming_the_column(admin: Client, iris_skops: bytes, column: str,
                                                                       kind: str) -> None:
    schema = [{"name": f["name"], "type": kind if f["name"] == column else f["type"]} for f in IRIS_SCHEMA]
    rows = [[("" if n == column else "1.5") for n in IRIS_FEATURES] for _ in range(3)]
    csv = (",".join(IRIS_FEATURES) + "\n" + "".join(",".join(r) + "\n" for r in rows)).encode()
    resp = admin.upload(unique("blank-ref"), iris_skops, reference=csv, input_schema=schema)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"] == (
        f"reference sample column '{column}': expected numbers (the input schema says {kind}), got 3 blank values; "
        "fill it in, or leave the column out")
    assert resp.json()["error"]["details"] == {"column": column}
