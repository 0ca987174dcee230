"""Try a model: a form generated from its input schema, or a CSV of rows; results as a table and a chart."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import plotly.express as px
import streamlit as st

from console.client import ApiError, client, show_error

CHUNK = 1000

st.title("Try a model")
api = client()

if st.session_state.me["role"] == "service":
    name = st.text_input("Model name")
else:
    try:
        names = [m["name"] for m in api.get("/api/v1/models", limit=500)["models"]]
    except ApiError as exc:
        show_error(exc)
        st.stop()
    name = st.selectbox("Model", names, index=0 if names else None, placeholder="no models yet")
if not name:
    st.stop()
try:
    model = api.get(f"/api/v1/models/{name}")
except ApiError as exc:
    show_error(exc)
    st.stop()

live = [v for v in model["versions"] if v["status"] == "active"]
choices = [f"alias: {a} (v{v})" for a, v in model["aliases"].items()] + [f"version {v['version']}" for v in reversed(live)]
picked = st.selectbox("Version", ["default (production, else latest)"] + choices)
ref: Any = None
if picked.startswith("alias: "):
    ref = picked.split(" ")[1]
elif picked.startswith("version "):
    ref = int(picked.split(" ")[1])
version_doc = next((v for v in live if v["version"] == (ref if isinstance(ref, int) else model["aliases"].get(ref, -1))),
                   live[-1] if live else None)
schema = (version_doc or {}).get("input_schema")
stats = ((version_doc or {}).get("reference") or {}).get("features", {})


methods = (version_doc or {}).get("methods") or []
classes = (version_doc or {}).get("classes")
example = (version_doc or {}).get("example") or {}
# A classifier's probabilities are shown beside its label when it offers them.
with_proba = bool(classes) and "predict_proba" in methods


def predict(rows: list[Any], method: str = "predict") -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": rows, "method": method}
    if ref is not None:
        body["version"] = ref
    return api.post(f"/api/v1/models/{name}/predict", json=body)


def show(inputs: pd.DataFrame, answers: list[Any], version: int, proba: dict[str, Any] | None = None) -> None:
    result = inputs.copy()
    result["prediction"] = [a if not isinstance(a, list) else str(a) for a in answers]
    if proba is not None:
        for k, label in enumerate(proba["classes"]):
            result[f"P({label})"] = [p[k] for p in proba["predictions"]]
    st.success(f"Answered by {name} version {version}")
    if len(answers) == 1:
        st.metric("Prediction", str(answers[0]))
        if proba is not None:
            chart = pd.DataFrame({"class": [str(c) for c in proba["classes"]], "probability": proba["predictions"][0]})
            st.plotly_chart(px.bar(chart, x="class", y="probability", range_y=[0, 1], title="Probability of each class"),
                            width="stretch")
    st.dataframe(result, width="stretch")
    if len(answers) > 1:
        counts = result["prediction"].value_counts().reset_index()
        counts.columns = ["prediction", "rows"]
        st.plotly_chart(px.bar(counts, x="prediction", y="rows", title="Predictions"), width="stretch")
    st.download_button("Download results as CSV", result.to_csv(index=False), file_name=f"{name}-predictions.csv",
                       mime="text/csv")


def choices(field: dict[str, Any], seen: dict[str, Any]) -> list[Any]:
    """The values a text or category field offers: its categories, else those in the reference, most frequent first."""
    if field.get("categories"):
        return list(field["categories"])
    counts = seen.get("counts") or {}
    return sorted(counts, key=lambda v: -counts[v])


def start_value(field: dict[str, Any], seen: dict[str, Any]) -> Any:
    """Where a field starts: the reference's median or most frequent value, else the example row's, else nothing."""
    if field["type"] in ("number", "integer") and seen.get("median", seen.get("mean")) is not None:
        return seen.get("median", seen.get("mean"))
    if seen.get("counts"):
        top = max(seen["counts"], key=lambda v: seen["counts"][v])
        return top.lower() == "true" if field["type"] == "boolean" else top
    return example.get(field["name"])


def try_text_model(doc: dict[str, Any]) -> None:
    """A Hugging Face model: texts in; a vector's length and first values, or the generated text, out."""
    embedding = doc.get("task") == "embedding"
    st.caption(f"{doc.get('task')} model · {doc.get('parameters', 0):,} parameters · "
               f"served on {(doc.get('serving') or {}).get('device', '?')}")
    with st.form("text-form"):
        text = st.text_area("Texts, one per line" if embedding else "Prompt", key="text-input")
        if embedding:
            parameters: dict[str, Any] = {"normalize": st.checkbox("Normalize to unit length", value=True)}
        else:
            cols = st.columns(3)
            parameters = {"max_new_tokens": int(cols[0].number_input("Max new tokens", 1, 4096, 32)),
                          "temperature": float(cols[1].number_input("Temperature (0: greedy)", 0.0, 5.0, 0.0)),
                          "seed": int(cols[2].number_input("Seed", 0, 2**31 - 1, 0))}
        submitted = st.form_submit_button("Encode" if embedding else "Generate", type="primary")
    if not submitted:
        return
    inputs = [line for line in text.splitlines() if line.strip()] if embedding else [text]
    body: dict[str, Any] = {"inputs": inputs, "method": "encode" if embedding else "generate", "parameters": parameters}
    if ref is not None:
        body["version"] = ref
    try:
        answer = api.post(f"/api/v1/models/{name}/predict", json=body)
    except ApiError as exc:
        show_error(exc)
        return
    st.success(f"Answered by {name} version {answer['version']}")
    if embedding:
        vectors = answer["predictions"]
        st.metric("Vector length", len(vectors[0]) if vectors else 0)
        st.dataframe(pd.DataFrame({"text": inputs, "first values": [", ".join(f"{v:.4f}" for v in vec[:8])
                                                                     for vec in vectors]}), width="stretch")
    else:
        st.text_area("Generated text", answer["predictions"][0], key="text-output", disabled=True)


if (version_doc or {}).get("format") == "huggingface":
    try_text_model(version_doc or {})
    st.stop()

form_tab, csv_tab = st.tabs(["Form", "CSV file"])
with form_tab:
    if not schema:
        st.info("This model has no input schema; use a CSV file with one row per prediction.")
    else:
        with st.form("predict-form"):
            row: dict[str, Any] = {}
            cols = st.columns(min(4, len(schema)))
            for i, field in enumerate(schema):
                s = stats.get(field["name"], {})
                col = cols[i % len(cols)]
                start = start_value(field, s)
                label = field["name"]
                hint = f"reference range {s.get('min')} to {s.get('max')}" if "min" in s else None
                if field["type"] == "number":
                    row[label] = col.number_input(label, value=float(start if start is not None else 0.0), help=hint)
                elif field["type"] == "integer":
                    row[label] = int(col.number_input(label, value=int(round(start if start is not None else 0)),
                                                      step=1, help=hint))
                elif field["type"] == "boolean":
                    row[label] = col.checkbox(label, value=bool(start))
                elif options := choices(field, s):
                    if start is not None and start not in options:
                        options = [start, *options]
                    row[label] = col.selectbox(label, options, index=options.index(start) if start in options else 0)
                else:
                    row[label] = col.text_input(label, value=str(start or ""))
            submitted = st.form_submit_button("Predict", type="primary")
        if submitted:
            try:
                answer = predict([row])
                proba = predict([row], "predict_proba") if with_proba else None
                show(pd.DataFrame([row]), answer["predictions"], answer["version"], proba)
            except ApiError as exc:
                show_error(exc)

with csv_tab:
    upload = st.file_uploader("CSV with a header row of feature names", type=["csv"])
    if upload is not None and st.button("Predict all rows", type="primary"):
        frame = pd.read_csv(io.BytesIO(upload.getvalue()))
        # Blank cells are nulls (NaN is not JSON); the API says which fields may hold them.
        cells = frame.astype(object).where(frame.notna(), None)
        rows = cells.to_dict(orient="records") if schema else cells.values.tolist()
        answers: list[Any] = []
        proba: dict[str, Any] | None = {"classes": classes, "predictions": []} if with_proba else None
        progress = st.progress(0.0, text=f"0 of {len(rows)} rows")
        try:
            for first in range(0, len(rows), CHUNK):
                answer = predict(rows[first:first + CHUNK])
                answers += answer["predictions"]
                if proba is not None:
                    proba["predictions"] += predict(rows[first:first + CHUNK], "predict_proba")["predictions"]
                progress.progress(len(answers) / len(rows), text=f"{len(answers)} of {len(rows)} rows")
            show(frame, answers, answer["version"], proba)
        except ApiError as exc:
            show_error(exc)
