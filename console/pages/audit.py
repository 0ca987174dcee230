"""The audit trail: filter, page, see a timeline, export (admins) and verify the chain (admins)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import plotly.express as px
import streamlit as st

from console.client import ApiError, client, show_error

st.title("Audit trail")
api = client()
admin = st.session_state.me["role"] == "admin"

c = st.columns(4)
filters = {
    "actor": c[0].text_input("Actor", placeholder="apikey:ci-bot"),
    "action": c[1].text_input("Action", placeholder="model.upload"),
    "target_prefix": c[2].text_input("Target starts with"),
    "outcome": c[3].selectbox("Outcome", ["", "success", "denied", "failed"]),
}
d = st.columns(3)
since = d[0].date_input("From", value=None)
until = d[1].date_input("Until (exclusive)", value=None)
limit = d[2].number_input("Entries per page", min_value=10, max_value=1000, value=200, step=50)
if since:
    filters["since"] = dt.datetime.combine(since, dt.time()).isoformat()
if until:
    filters["until"] = dt.datetime.combine(until, dt.time()).isoformat()

pages = st.session_state.setdefault("audit_pages", [None])
try:
    page = api.get("/api/v1/audit", limit=int(limit), before=pages[-1], **filters)
except ApiError as exc:
    show_error(exc)
    st.stop()

entries = page["entries"]
if entries:
    frame = pd.DataFrame([{**{k: e[k] for k in ("seq", "time", "actor", "role", "action", "target", "outcome", "status",
                                                 "request_id", "client")}, "details": str(e["details"])} for e in entries])
    frame["time"] = pd.to_datetime(frame["time"])
    st.plotly_chart(px.histogram(frame, x="time", color="outcome", nbins=40, title="Entries over time"),
                    width="stretch")
    st.dataframe(frame, hide_index=True, width="stretch")
else:
    st.info("No entries match.")
nav = st.columns(3)
if nav[0].button("Newest", disabled=len(pages) == 1):
    st.session_state.audit_pages = [None]
    st.rerun()
if nav[1].button("Older", disabled=page["next_before"] is None):
    pages.append(page["next_before"])
    st.rerun()

if admin:
    st.divider()
    a, b = st.columns(2)
    if a.button("Prepare CSV export"):
        try:
            data = api.raw("/api/v1/audit/export", **{k: v for k, v in filters.items() if v})
            a.download_button("Download audit.csv", data, file_name="modeldeck-audit.csv", mime="text/csv")
        except ApiError as exc:
            show_error(exc)
    if b.button("Verify the hash chain"):
        report = api.get("/api/v1/audit/verify")
        if report["valid"]:
            b.success(f"Chain intact: {report['entries']} entries")
        else:
            b.error(f"Chain broken at entry {report['first_broken']['seq']}: {report['first_broken']['reason']}")
