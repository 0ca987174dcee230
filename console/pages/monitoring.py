"""Monitoring: requests, latency percentiles and errors per model and version over time, drift, alerts."""

from __future__ import annotations

import time

import pandas as pd
import plotly.express as px
import streamlit as st

from console.client import ApiError, client, get_or_stop

st.title("Monitoring")
api = client()
window = st.selectbox("Window", ["1h", "6h", "24h", "7d"], index=1)
overview = get_or_stop("/api/v1/monitoring/overview", "Monitoring charts", window=window)

c = st.columns(5)
c[0].metric("Requests", overview["requests"])
c[1].metric("Error rate", f"{overview['error_rate'] * 100:.2f} %")
for i, p in enumerate(("p50", "p95", "p99")):
    value = overview["latency_ms"][p]
    c[2 + i].metric(f"Latency {p}", "–" if value is None else f"{value:.1f} ms")
if overview["busiest_models"]:
    st.subheader("Busiest models")
    st.dataframe([{"model": m["model"], "requests": m["requests"], "errors": m["errors"],
                   "p50 ms": m["latency_ms"]["p50"], "p99 ms": m["latency_ms"]["p99"]} for m in overview["busiest_models"]],
                 hide_index=True, width="stretch")
if overview.get("pools"):
    st.subheader("Pools")
    st.dataframe(overview["pools"], hide_index=True, width="stretch")
seconds = {"1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}[window]
pool_series = api.get("/api/v1/monitoring/pools", since=int(time.time()) - seconds, until=int(time.time()) + 60)
samples = [{"time": p["time"], "pool": pool["name"], "workers": p["workers"], "busy": p["busy"],
            "queue depth": p["queue_depth"]} for pool in pool_series["pools"] for p in pool["points"]]
if samples:
    frame = pd.DataFrame(samples)
    frame["time"] = pd.to_datetime(frame["time"])
    left, right = st.columns(2)
    left.plotly_chart(px.line(frame, x="time", y="queue depth", color="pool", markers=True,
                              title="Queue depth over time"),
                      width="stretch")
    right.plotly_chart(px.line(frame, x="time", y="workers", color="pool", markers=True,
                               title="Live workers over time"),
                       width="stretch")
if overview.get("recent_alerts"):
    st.subheader("Recent alerts")
    st.dataframe(overview["recent_alerts"], hide_index=True, width="stretch")

names = [m["model"] for m in overview["busiest_models"]]
if not names:
    st.info("No predictions in this window yet.")
    st.stop()
name = st.selectbox("Model", names)
versions = [v["version"] for v in api.get(f"/api/v1/models/{name}")["versions"]]
version = st.selectbox("Version", ["all versions", *reversed(versions)], key="series_version")
label = name if version == "all versions" else f"{name} v{version}"
series = api.get(f"/api/v1/monitoring/models/{name}", since=int(time.time()) - seconds, until=int(time.time()) + 60,
                 version=None if version == "all versions" else version)
points = series["points"]
if points:
    frame = pd.DataFrame([{"time": p["time"], "requests": p["requests"], "errors": p["errors"],
                           "p50": p["latency_ms"]["p50"], "p95": p["latency_ms"]["p95"], "p99": p["latency_ms"]["p99"]}
                          for p in points])
    frame["time"] = pd.to_datetime(frame["time"])
    st.plotly_chart(px.line(frame, x="time", y=["p50", "p95", "p99"], title=f"{label}: latency (ms)"), width="stretch")
    st.plotly_chart(px.bar(frame, x="time", y=["requests", "errors"], barmode="group", title=f"{label}: throughput and errors"),
                    width="stretch")
try:
    drift = api.get(f"/api/v1/monitoring/models/{name}/drift", window=window)
    st.subheader(f"Drift: {drift['status']}")
    if drift["features"]:
        frame = pd.DataFrame(drift["features"])
        st.plotly_chart(px.bar(frame, x="feature", y="psi", color="status", title="PSI per feature"), width="stretch")
except ApiError as exc:
    st.caption(exc.message)
