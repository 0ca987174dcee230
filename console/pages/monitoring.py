"""Monitoring: requests, latency percentiles and errors per model and version over time, and drift."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, client, show_error

st.title("Monitoring")
api = client()
try:
    overview = api.get("/api/v1/monitoring/overview")
except ApiError as exc:
    if exc.status in (404, 405):
        st.info("Monitoring is not available on this server yet (it has no /api/v1/monitoring endpoints).")
        st.stop()
    show_error(exc)
    st.stop()
st.json(overview)
