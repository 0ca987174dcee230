"""Platform health at a glance."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, client, show_error

st.title("Overview")
api = client()
try:
    ready = api.session.get(api.base_url + "/readyz", timeout=5).json()
except Exception:  # the API itself is down: say so plainly
    st.error(f"The API at {api.base_url} does not answer.")
    st.stop()

checks = ready["checks"]
cols = st.columns(3)
cols[0].metric("Platform", "ready" if ready["ready"] else "not ready")
cols[1].metric("Broker", "up" if checks["broker"]["ok"] else "down")
cols[2].metric("Repository", "up" if checks["repository"]["ok"] else "down")
st.subheader("Worker pools")
st.dataframe([{"pool": name, "live workers": p["workers"], "ok": p["ok"]} for name, p in checks["pools"].items()],
             hide_index=True, width="stretch")

if st.session_state.me["role"] != "service":
    try:
        models = api.get("/api/v1/models", limit=10)
        st.subheader(f"Models ({models['total']})")
        st.dataframe([{"name": m["name"], "latest version": m["latest_version"],
                       "aliases": ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items())} for m in models["models"]],
                     hide_index=True, width="stretch")
    except ApiError as exc:
        show_error(exc)
