"""Models: upload versions, see them, promote and roll back aliases, archive."""

from __future__ import annotations

import json

import streamlit as st

from console.client import ApiError, client, show_error

st.title("Models")
api = client()

with st.expander("Upload a new version", icon=":material/upload:"):
    with st.form("upload", clear_on_submit=False):
        file = st.file_uploader("Model file (.skops, .onnx, ...)")
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("Name", help="letters, digits, '.', '_' and '-'")
        fmt = c2.selectbox("Format", ["skops", "onnx", "torchscript", "joblib", "pickle"])
        pool = c3.text_input("Pool", value="cpu")
        reference = st.file_uploader("Reference sample (CSV with a header row): gives the input schema", type=["csv"])
        description = st.text_input("Description")
        if st.form_submit_button("Upload", type="primary"):
            if file is None:
                st.error("choose a model file first")
            else:
                files = {"file": (file.name, file.getvalue()),
                         "metadata": (None, json.dumps({"name": name, "format": fmt, "pool": pool, "description": description}))}
                if reference is not None:
                    files["reference"] = (reference.name, reference.getvalue())
                try:
                    with st.spinner(f"uploading {file.size / 2**20:.1f} MB ..."):
                        made = api.post("/api/v1/models", files=files)
                    st.success(f"Uploaded {made['name']} version {made['version']} (sha256 {made['sha256'][:12]}…)")
                except ApiError as exc:
                    show_error(exc)

prefix = st.text_input("Filter by name prefix", key="prefix")
try:
    listing = api.get("/api/v1/models", prefix=prefix, limit=500)
except ApiError as exc:
    show_error(exc)
    st.stop()
st.dataframe([{"name": m["name"], "latest version": m["latest_version"],
               "aliases": ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items()), "created": m["created_at"][:19]}
              for m in listing["models"]], hide_index=True, width="stretch")
names = [m["name"] for m in listing["models"]]
if not names:
    st.stop()

selected = st.selectbox("Model", names)
model = api.get(f"/api/v1/models/{selected}")
st.subheader(f"{selected}: versions")
st.dataframe([{"version": v["version"], "status": v["status"], "format": v["format"], "pool": v["pool"],
               "size (MB)": round(v["size"] / 2**20, 2), "sha256": v["sha256"][:12], "by": v["created_by"],
               "created": v["created_at"][:19],
               "aliases": ", ".join(a for a, n in model["aliases"].items() if n == v["version"])}
              for v in model["versions"]], hide_index=True, width="stretch")
live = [v["version"] for v in model["versions"] if v["status"] == "active"]

left, right = st.columns(2)
with left.form("alias"):
    st.markdown("**Promote or roll back**")
    alias = st.text_input("Alias", value="production")
    target = st.selectbox("Point it at version", list(reversed(live)))
    st.caption("Now: " + (", ".join(f"{a} → v{v}" for a, v in model["aliases"].items()) or "no aliases"))
    confirm = st.checkbox("Yes, move the alias (clients calling it switch at once)")
    if st.form_submit_button("Move alias"):
        if not confirm:
            st.warning("tick the confirmation first")
        else:
            try:
                api.put(f"/api/v1/models/{selected}/aliases/{alias}", {"version": target})
                st.success(f"'{alias}' now points at version {target}")
            except ApiError as exc:
                show_error(exc)
with right.form("archive"):
    st.markdown("**Archive a version** (admins; refused while an alias points at it)")
    victim = st.selectbox("Version", live)
    sure = st.checkbox(f"Yes, archive version {victim}")
    if st.form_submit_button("Archive"):
        if not sure:
            st.warning("tick the confirmation first")
        else:
            try:
                api.delete(f"/api/v1/models/{selected}/versions/{victim}")
                st.success(f"version {victim} archived")
            except ApiError as exc:
                show_error(exc)

with st.form("monitoring"):
    st.markdown("**Monitoring policy**: prediction logging and alert thresholds (empty = server default or off)")
    by_version = {v["version"]: v for v in model["versions"]}
    which = st.selectbox("Version", list(reversed(live)), key="policy_version")
    current = (by_version[which].get("monitoring") if which in by_version else None) or {}
    c1, c2, c3 = st.columns(3)
    rate = c1.slider("Log this share of predictions", 0.0, 1.0, float(current.get("log_sample_rate") or 0.0), 0.01)
    outputs = c1.checkbox("Log outputs too", value=bool(current.get("log_outputs")))
    error_rate = c2.number_input("Alert: error rate above", 0.0, 1.0, current.get("error_rate_alert"), 0.01)
    p99 = c2.number_input("Alert: p99 above (ms)", 0.001, None, current.get("p99_alert_ms"))
    min_requests = c2.number_input("... with at least this many requests", 1, None, current.get("alert_min_requests"))
    psi_warn = c3.number_input("Drift PSI: warn at", 0.0001, None, current.get("drift_psi_warn"), format="%.4f")
    psi_alert = c3.number_input("Drift PSI: alert at", 0.0001, None, current.get("drift_psi_alert"), format="%.4f")
    if st.form_submit_button("Save policy"):
        policy = {"log_sample_rate": rate, "log_outputs": outputs, "error_rate_alert": error_rate, "p99_alert_ms": p99,
                  "alert_min_requests": min_requests, "drift_psi_warn": psi_warn, "drift_psi_alert": psi_alert}
        try:
            api.put(f"/api/v1/models/{selected}/versions/{which}/monitoring", policy)
            st.success(f"monitoring policy of version {which} saved")
        except ApiError as exc:
            show_error(exc)
