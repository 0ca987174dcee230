"""Real models from a data scientist's notebook, uploaded with the Python client and called on the live stack.

A scikit-learn Pipeline over a DataFrame (a ColumnTransformer selecting string, boolean, float, integer and
nullable columns by name), a HistGradientBoostingClassifier with a categorical column, a skl2onnx classifier:
their predictions and probabilities through REST, the client and OIP v2 must equal the estimator's own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from conftest import ROOT, Client, unique
from modeldeck_client import InvalidInputError, ModelDeck, UnprocessableError

TOL = 1e-9


def churn_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "city": rng.choice(["paris", "lyon", "nice"], n),
        "member": rng.choice([True, False], n),
        "income": rng.normal(50.0, 10.0, n),
        "visits": rng.integers(0, 20, n),
        "segment": rng.choice(np.array(["a", "b", None], dtype=object), n),
    })
    frame.loc[::7, "income"] = np.nan
    return frame


@pytest.fixture(scope="module")
def churn() -> tuple[Any, pd.DataFrame]:
    """The most common shape of a production model: preprocessing by column name, then a classifier."""
    frame = churn_frame(400, 0)
    label = np.where(frame["income"].fillna(50) + 2 * frame["visits"] + 10 * (frame["city"] == "paris") > 72,
                     "churn", "stay")
    pre = ColumnTransformer([
        ("categories", OneHotEncoder(handle_unknown="ignore"), ["city", "segment"]),
        ("flags", "passthrough", ["member"]),
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), ["income", "visits"]),
    ])
    return make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(frame, label), frame


@pytest.fixture(scope="module")
def md(api_url: str, admin_key: str) -> ModelDeck:
    return ModelDeck(api_url, admin_key)


@pytest.fixture(scope="module")
def churn_name(md: ModelDeck, churn: tuple[Any, pd.DataFrame]) -> str:
    model, frame = churn
    name = unique("churn")
    version = md.upload(model, name, sample=frame.head(20), reference=frame, description="churn pipeline")
    assert version.version == 1
    assert version.methods == ["predict", "predict_proba", "predict_log_proba", "decision_function"]
    assert version.classes == ["churn", "stay"]
    assert [(f["name"], f["type"], f.get("nullable", False)) for f in version.input_schema or []] == [
        ("city", "string", False), ("member", "boolean", False), ("income", "number", True),
        ("visits", "integer", False), ("segment", "string", True)]
    return name


def new_rows() -> pd.DataFrame:
    """Rows the model never saw, with an unseen category and nulls where the schema allows them."""
    frame = churn_frame(30, 1)
    frame.loc[0, "city"] = "marseille"  # unseen: OneHotEncoder(handle_unknown="ignore") encodes it as all zeros
    frame.loc[1, "income"] = np.nan
    frame.loc[2, "segment"] = None
    return frame


def test_a_dataframe_pipeline_uploaded_from_a_notebook_answers_like_the_estimator(
        md: ModelDeck, churn: tuple[Any, pd.DataFrame], churn_name: str) -> None:
    model, _ = churn
    rows = new_rows()
    labels = md.predict(churn_name, rows)
    assert isinstance(labels, pd.Series) and list(labels.index) == list(rows.index)
    assert labels.tolist() == model.predict(rows).tolist()
    proba = md.predict(churn_name, rows, method="predict_proba")
    assert list(proba.columns) == ["churn", "stay"] and list(proba.index) == list(rows.index)
    np.testing.assert_allclose(proba.to_numpy(), model.predict_proba(rows), rtol=0, atol=TOL)
    scores = md.predict(churn_name, rows, method="decision_function")
    np.testing.assert_allclose(scores.to_numpy(), model.decision_function(rows), rtol=0, atol=TOL)


def test_rest_answers_probabilities_with_the_class_names(admin: Client, churn: tuple[Any, pd.DataFrame],
                                                        churn_name: str) -> None:
    model, _ = churn
    rows = new_rows().head(3)
    inputs = [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
              for _, row in rows.iterrows()]
    resp = admin.post(f"/api/v1/models/{churn_name}/predict", json={"inputs": inputs, "method": "predict_proba"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["classes"] == ["churn", "stay"]
    np.testing.assert_allclose(body["predictions"], model.predict_proba(rows), rtol=0, atol=TOL)
    labels = admin.post(f"/api/v1/models/{churn_name}/predict", json={"inputs": inputs}).json()
    assert labels["predictions"] == model.predict(rows).tolist() and "classes" not in labels
    detail = admin.get(f"/api/v1/models/{churn_name}/versions/1").json()
    assert detail["classes"] == ["churn", "stay"] and "predict_proba" in detail["methods"]
    assert detail["feature_names"] == ["city", "member", "income", "visits", "segment"]


def test_oip_v2_takes_bytes_features_and_answers_the_requested_outputs(
        admin: Client, churn: tuple[Any, pd.DataFrame], churn_name: str) -> None:
    model, _ = churn
    rows = churn_frame(5, 2).fillna({"income": 51.0, "segment": "a"})
    meta = admin.get(f"/v2/models/{churn_name}").json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("city", "BYTES"), ("member", "BOOL"), ("income", "FP64"), ("visits", "INT64"), ("segment", "BYTES")]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba", "predict_log_proba", "decision_function"]
    dtypes = {"city": "BYTES", "member": "BOOL", "income": "FP64", "visits": "INT64", "segment": "BYTES"}
    inputs = [{"name": c, "shape": [len(rows)], "datatype": dtypes[c], "data": rows[c].tolist()} for c in rows.columns]
    resp = admin.post(f"/v2/models/{churn_name}/infer", json={
        "inputs": inputs, "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert outputs["predict"]["datatype"] == "BYTES" and outputs["predict"]["data"] == model.predict(rows).tolist()
    assert outputs["predict_proba"]["shape"] == [5, 2]
    assert outputs["predict_proba"]["parameters"]["classes"] == '["churn","stay"]'
    np.testing.assert_allclose(np.reshape(outputs["predict_proba"]["data"], (5, 2)), model.predict_proba(rows),
                               rtol=0, atol=TOL)
    bad = admin.post(f"/v2/models/{churn_name}/infer", json={"inputs": inputs, "outputs": [{"name": "transform"}]})
    assert bad.status_code == 400
    assert bad.json()["error"] == ("unknown output 'transform'; this model's outputs are predict, predict_proba, "
                                   "predict_log_proba, decision_function")


def test_async_jobs_take_the_method_too(admin: Client, churn: tuple[Any, pd.DataFrame], churn_name: str) -> None:
    model, _ = churn
    rows = new_rows().head(4).fillna({"income": 50.0})
    inputs = [[None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in row]
              for row in rows.itertuples(index=False, name=None)]
    resp = admin.post(f"/api/v1/models/{churn_name}/predict?async=true",
                      json={"inputs": inputs, "method": "predict_proba"})
    assert resp.status_code == 202, resp.text
    md_job = ModelDeck(admin.base, admin.key).job(resp.json()["job_id"])
    job = md_job.wait(timeout_s=30, poll_s=0.2, progress=False)
    assert job["method"] == "predict_proba" and job["result"]["classes"] == ["churn", "stay"]
    np.testing.assert_allclose(job["result"]["predictions"], model.predict_proba(rows), rtol=0, atol=TOL)


@pytest.mark.parametrize("method,available", [
    ("transform", "predict, predict_proba, predict_log_proba, decision_function"),
])
def test_a_method_the_model_lacks_is_400_naming_those_it_has(admin: Client, churn_name: str, method: str,
                                                             available: str) -> None:
    resp = admin.post(f"/api/v1/models/{churn_name}/predict", json={"inputs": [["paris", True, 50.0, 3, "a"]],
                                                                   "method": method})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        f"field 'method': model '{churn_name}' version 1 has no method '{method}'; available: {available}")


def test_a_regressor_has_no_probabilities(md: ModelDeck) -> None:
    X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    name = unique("line")
    version = md.upload(LinearRegression().fit(X, [1.0, 3.0, 5.0, 7.0]), name, sample=X)
    assert version.methods == ["predict"] and version.classes is None
    np.testing.assert_allclose(md.predict(name, pd.DataFrame({"x": [10.0]})).tolist(), [21.0])
    with pytest.raises(InvalidInputError) as err:
        md.predict(name, X, method="predict_proba")
    assert err.value.status == 400 and err.value.request_id and err.value.code == "invalid_input"
    assert err.value.message == f"field 'method': model '{name}' version 1 has no method 'predict_proba'; available: predict"


@pytest.mark.parametrize("row,message", [
    ({"city": 3, "member": True, "income": 1.0, "visits": 2, "segment": "a"},
     "row 0, field 'city': expected a string, got 3"),
    ({"city": "paris", "member": "yes", "income": 1.0, "visits": 2, "segment": "a"},
     "row 0, field 'member': expected true or false, got 'yes'"),
    ({"city": "paris", "member": True, "income": 1.0, "visits": 2.5, "segment": "a"},
     "row 0, field 'visits': expected an integer, got 2.5"),
    ({"city": None, "member": True, "income": 1.0, "visits": 2, "segment": "a"},
     "row 0, field 'city': expected a string, got None"),
    ({"city": "paris", "member": True, "income": "rich", "visits": 2, "segment": "a"},
     "row 0, field 'income': expected a number or null, got 'rich'"),
])
def test_a_wrong_type_for_a_dataframe_model_is_422_naming_row_field_value_and_type(
        admin: Client, churn_name: str, row: dict[str, Any], message: str) -> None:
    resp = admin.post(f"/api/v1/models/{churn_name}/predict", json={"inputs": [row]})
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == message


def test_a_schema_that_contradicts_the_models_features_is_refused(md: ModelDeck, churn: tuple[Any, pd.DataFrame]) -> None:
    model, frame = churn
    schema = [{"name": n, "type": "number"} for n in ("city", "member", "income", "age")]
    with pytest.raises(UnprocessableError) as err:
        md.upload(model, unique("contra"), input_schema=schema)
    assert err.value.status == 422
    assert err.value.message.startswith("input_schema contradicts the features model 'contra-")
    assert err.value.message.endswith(
        "was fitted on: the schema names city, member, income, age; the model takes city, member, income, visits, "
        "segment (not in the model: age) (missing from the schema: visits, segment)")
    assert err.value.details["model_features"] == ["city", "member", "income", "visits", "segment"]


def test_a_name_selecting_model_without_schema_or_sample_is_refused_with_what_to_send(
        md: ModelDeck, churn: tuple[Any, pd.DataFrame]) -> None:
    model, _ = churn
    with pytest.raises(UnprocessableError, match=r"was fitted on named features \(city, member, income, visits, "
                                                 r"segment\) whose types cannot be read off the model; send "
                                                 r"'input_schema' in the metadata or a 'reference' CSV"):
        md.upload(model, unique("noschema"))


def test_hist_gradient_boosting_with_a_categorical_column(md: ModelDeck) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"colour": pd.Categorical(rng.choice(["red", "green", "blue"], 300)),
                          "size": rng.normal(0.0, 1.0, 300)})
    label = ((frame["colour"] == "red") ^ (frame["size"] > 0.5)).astype(int)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=30).fit(frame, label)
    name = unique("hgb")
    version = md.upload(model, name, sample=frame)
    colour = next(f for f in version.input_schema or [] if f["name"] == "colour")
    assert colour["type"] == "category" and colour["categories"] == ["blue", "green", "red"]
    rows = pd.DataFrame({"colour": pd.Categorical(["red", "blue", "green", "red"], categories=["blue", "green", "red"]),
                         "size": [0.1, 0.9, -1.0, 2.0]})
    np.testing.assert_allclose(md.predict(name, rows, method="predict_proba").to_numpy(), model.predict_proba(rows),
                               rtol=0, atol=TOL)
    assert md.predict(name, rows).tolist() == model.predict(rows).tolist()


def test_an_onnx_classifiers_probability_output_is_its_predict_proba(md: ModelDeck, iris: Any, tmp_path: Path) -> None:
    from skl2onnx import to_onnx

    model, X = iris
    path = tmp_path / "iris.onnx"
    path.write_bytes(to_onnx(model, X[:1].astype(np.float32)).SerializeToString())
    name = unique("onnx")
    version = md.upload(str(path), name)
    assert version.methods == ["predict", "predict_proba"] and version.classes == [0, 1, 2]
    proba = md.predict(name, X[:5], method="predict_proba")
    np.testing.assert_allclose(proba, model.predict_proba(X[:5]), rtol=0, atol=1e-5)
    assert md.predict(name, X[:5]).tolist() == model.predict(X[:5]).tolist()


def test_the_python_guide_runs_as_written(api_url: str, admin_key: str, tmp_path: Path) -> None:
    """docs/python.md's example, executed exactly as the page shows it (its only inputs: URL and key)."""
    text = (ROOT / "docs" / "python.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    assert "md.upload(" in code and "predict_proba" in code
    env = {"MODELDECK_URL": api_url, "MODELDECK_API_KEY": admin_key, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "churn" in done.stdout


def test_the_client_scores_a_table_and_a_failed_job_raises_the_servers_message(
        md: ModelDeck, admin: Client, postgres: Any, iris: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import IRIS_FEATURES
    from modeldeck_client import JobFailedError
    from test_batch_jobs import features, rows_sql

    model, X = iris
    table = f"nb_rows_{unique('t').split('-')[1]}"
    postgres.execute(rows_sql(1200, table))
    source = unique("nbwh")
    assert admin.post("/api/v1/datasources", json={"name": source, "kind": "sql", "url": postgres.url,
                                                   "readers": ["operator"], "writers": ["operator"]}).status_code == 201
    name = unique("nb-iris")
    md.upload(model, name, sample=pd.DataFrame(X[:5], columns=IRIS_FEATURES))
    out = f"{table}_scores"
    job = md.score(name, {"datasource": source, "table": table}, {"datasource": source, "table": out}, chunk_rows=500)
    done = job.wait(timeout_s=120, poll_s=0.2)
    assert done["status"] == "succeeded" and done["progress"]["rows_done"] == 1200
    assert "rows" in capsys.readouterr().err  # tqdm's progress bar, on stderr
    ids, predictions = zip(*postgres.execute(f"SELECT id, prediction FROM {out} ORDER BY id"))
    assert list(predictions) == model.predict(features(ids)).tolist()
    # Probabilities: one column per class, named for it.
    proba_out = f"{table}_proba"
    md.score(name, {"datasource": source, "table": table}, {"datasource": source, "table": proba_out},
             method="predict_proba").wait(timeout_s=120, poll_s=0.2, progress=False)
    written = postgres.execute(f"SELECT id, proba_0, proba_1, proba_2 FROM {proba_out} ORDER BY id")
    np.testing.assert_allclose([r[1:] for r in written], model.predict_proba(features([r[0] for r in written])),
                               rtol=0, atol=1e-9)
    postgres.execute(f"UPDATE {table} SET petal_width = NULL WHERE id = 7")
    failing = md.score(name, {"datasource": source, "table": table}, {"datasource": source, "table": out + "_2"})
    with pytest.raises(JobFailedError) as err:
        failing.wait(timeout_s=120, poll_s=0.2, progress=False)
    assert "petal_width" in err.value.message and err.value.message == failing.data["error"]["message"]
