"""Batch scoring: score a table or query into a table or a file; watch progress, cancel, download."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, client, get_or_stop, show_error

st.title("Batch jobs")
api = client()

models = [m["name"] for m in api.get("/api/v1/models", limit=500)["models"]]
sources = get_or_stop("/api/v1/datasources", "Data sources")["datasources"]
sql_sources = [s["name"] for s in sources if s["kind"] == "sql"]

with st.expander("Score a table", icon=":material/table_view:", expanded=not models or not sql_sources):
    if not models or not sql_sources:
        st.info("Batch scoring needs a model and a SQL data source you may read.")
    else:
        with st.form("batch"):
            c1, c2 = st.columns(2)
            model = c1.selectbox("Model", models)
            version = c2.text_input("Version or alias (empty: production, else latest)")
            source = st.selectbox("Read from", sql_sources)
            what = st.text_input("Table, or a SELECT", placeholder="customers",
                                 help="a table (its primary or unique key, else its physical order, splits and resumes "
                                      "the job) or a SELECT query")
            key = st.text_input("Unique key column(s) (comma-separated; optional)",
                                help="splits a query across the pool's workers and resumes it; a table finds its own")
            keep = st.text_input("Columns to copy into the output (comma-separated)")
            target = st.radio("Write to", ["a table", "a CSV file", "a Parquet file"], horizontal=True)
            c3, c4 = st.columns(2)
            dest_source = c3.selectbox("Table's data source", sql_sources)
            dest_table = c4.text_input("Output table", placeholder="customer_scores")
            chunk = st.number_input("Rows per chunk", min_value=1, max_value=1_000_000, value=10_000)
            if st.form_submit_button("Start", type="primary"):
                is_query = what.strip().lower().startswith(("select", "with"))
                src = {"datasource": source, ("query" if is_query else "table"): what.strip(),
                       "keep": [c.strip() for c in keep.split(",") if c.strip()]}
                keys = [c.strip() for c in key.split(",") if c.strip()]
                if keys:
                    src["key"] = keys[0] if len(keys) == 1 else keys
                dest = ({"datasource": dest_source, "table": dest_table.strip()} if target == "a table"
                        else {"format": "csv" if "CSV" in target else "parquet"})
                body = {"model": model, "source": src, "destination": dest, "chunk_rows": int(chunk)}
                if version.strip():
                    body["version"] = int(version) if version.strip().isdigit() else version.strip()
                try:
                    made = api.post("/api/v1/jobs", json=body)
                    st.success(f"Started {made['job_id']}")
                except ApiError as exc:
                    show_error(exc)

jobs = api.get("/api/v1/jobs", kind="batch", limit=50)["jobs"]
if not jobs:
    st.info("No batch jobs yet.")
    st.stop()
if st.button("Refresh", icon=":material/refresh:"):
    st.rerun()
for job in jobs:
    progress = job.get("progress") or {}
    done, total = progress.get("rows_done") or 0, progress.get("rows_total")
    where = job["destination"].get("table") or job["destination"].get("format")
    with st.container(border=True):
        st.markdown(f"**{job['id']}** · {job['model']} v{job['version']} · {job['source'].get('datasource') or job['source'].get('filename')}"
                    f" → {where} · `{job['status']}` · {job['owner']}")
        st.progress(min(done / total, 1.0) if total else 0.0,
                    text=f"{done:,} of {total:,} rows" if total is not None else f"{done:,} rows")
        st.caption(f"created {job['created_at'][:19]} · started {(job['started_at'] or '')[:19]} · "
                   f"finished {(job['finished_at'] or '')[:19]} · attempts {job['attempts']}")
        if job["error"]:
            st.error(job["error"]["message"])
        if job["status"] in ("queued", "running"):
            if st.button("Cancel", key=f"cancel-{job['id']}"):
                try:
                    api.post(f"/api/v1/jobs/{job['id']}/cancel")
                    st.rerun()
                except ApiError as exc:
                    show_error(exc)
        result = job["result"] or {}
        if job["status"] == "succeeded" and "artifact" in result:
            # Fetched only when asked for: a page of finished jobs should not download every result.
            if st.button(f"Fetch the {result['format'].upper()} result ({result['size']:,} bytes)", key=f"fetch-{job['id']}"):
                try:
                    st.download_button("Save it", data=api.raw(f"/api/v1/jobs/{job['id']}/result"),
                                       file_name=f"{job['id']}.{result['format']}", key=f"download-{job['id']}")
                except ApiError as exc:
                    show_error(exc)
