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


def predict(rows: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": rows}
    if ref is not None:
        body["version"] = ref
    return api.post(f"/api/v1/models/{name}/predict", json=body)


def show(inputs: pd.DataFrame, answers: list[Any], version: int) -> None:
    result = inputs.copy()
    result["prediction"] = [a if not isinstance(a, list) else str(a) for a in answers]
    st.success(f"Answered by {name} version {version}")
    if len(answers) == 1:
        st.metric("Prediction", str(answers[0]))
    st.dataframe(result, width="stretch")
    counts = result["prediction"].value_counts().reset_index()
    counts.columns = ["prediction", "rows"]
    st.plotly_chart(px.bar(counts, x="prediction", y="rows", title="Predictions"), width="stretch")
    st.download_button("Download results as CSV", result.to_csv(index=False), file_name=f"{name}-predictions.csv",
                       mime="text/csv")


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
                if field["type"] == "number":
                    row[field["name"]] = col.number_input(field["name"], value=float(s.get("mean", 0.0)),
                                                          help=f"reference range {s.get('min')} to {s.get('max')}" if s else None)
                elif field["type"] == "integer":
                    row[field["name"]] = int(col.number_input(field["name"], value=int(round(s.get("mean", 0))), step=1))
                elif field["type"] == "boolean":
                    row[field["name"]] = col.checkbox(field["name"])
                elif s.get("counts"):
                    row[field["name"]] = col.selectbox(field["name"], list(s["counts"]))
                else:
                    row[field["name"]] = col.text_input(field["name"])
            submitted = st.form_submit_button("Predict", type="primary")
        if submitted:
            try:
                answer = predict([row])
                show(pd.DataFrame([row]), answer["predictions"], answer["version"])
            except ApiError as exc:
                show_error(exc)

with csv_tab:
    upload = st.file_uploader("CSV with a header row of feature names", type=["csv"])
    if upload is not None and st.button("Predict all rows", type="primary"):
        frame = pd.read_csv(io.BytesIO(upload.getvalue()))
        rows = frame.to_dict(orient="records") if schema else frame.values.tolist()
        answers: list[Any] = []
        progress = st.progress(0.0, text=f"0 of {len(rows)} rows")
        try:
            for start in range(0, len(rows), CHUNK):
                answer = predict(rows[start:start + CHUNK])
                answers += answer["predictions"]
                progress.progress(len(answers) / len(rows), text=f"{len(answers)} of {len(rows)} rows")
            show(frame, answers, answer["version"])
        except ApiError as exc:
            show_error(exc)
