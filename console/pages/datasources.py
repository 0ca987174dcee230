"""Data sources: admins register them (credentials go in, never come back); readers preview them."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, client, get_or_stop, show_error

ROLES = ["operator", "analyst", "admin"]

st.title("Data sources")
api = client()
me = st.session_state.me

if me["role"] == "admin":
    with st.expander("Register a data source", icon=":material/add:"):
        with st.form("register"):
            c1, c2 = st.columns(2)
            name = c1.text_input("Name", placeholder="warehouse")
            kind = c2.selectbox("Kind", ["sql", "file"])
            url = st.text_input("SQLAlchemy URL (SQL)", type="password",
                                help="e.g. postgresql://user:password@host:5432/db; stored encrypted, never shown again")
            path = st.text_input("Directory (files)", help="an absolute directory inside MODELDECK_DATA_ROOTS")
            c3, c4 = st.columns(2)
            readers = c3.multiselect("Readers (roles, and those above)", ROLES, default=["operator"])
            writers = c4.multiselect("Writers (may receive scoring output)", ROLES, default=[])
            description = st.text_input("Description")
            if st.form_submit_button("Register", type="primary"):
                body = {"name": name, "kind": kind, "readers": readers, "writers": writers, "description": description}
                body |= {"url": url} if kind == "sql" else {"path": path}
                try:
                    made = api.post("/api/v1/datasources", json=body)
                    st.success(f"Registered {made['name']}" + (f" ({made['url']})" if made["url"] else ""))
                except ApiError as exc:
                    show_error(exc)

sources = get_or_stop("/api/v1/datasources", "Data sources")["datasources"]
st.dataframe([{"name": s["name"], "kind": s["kind"], "where": s["url"] or s["path"], "readers": ", ".join(s["readers"]),
               "writers": ", ".join(s["writers"]) or "admin only", "description": s["description"]} for s in sources],
             hide_index=True, width="stretch")
if not sources:
    st.info("No data source you may read yet." + (" Register one above." if me["role"] == "admin" else ""))
    st.stop()

st.subheader("Preview")
by_name = {s["name"]: s for s in sources}
with st.form("preview"):
    chosen = st.selectbox("Data source", list(by_name))
    query = st.text_area("Query (SQL) or file path (file sources)", placeholder="SELECT * FROM customers ORDER BY id",
                         help="runs read-only, bounded by a row limit and a statement timeout; use :name parameters")
    limit = st.number_input("Rows", min_value=1, max_value=1000, value=50)
    if st.form_submit_button("Preview", type="primary"):
        field = "file" if by_name[chosen]["kind"] == "file" else "query"
        try:
            shown = api.post(f"/api/v1/datasources/{chosen}/preview", json={field: query.strip(), "limit": int(limit)})
        except ApiError as exc:
            show_error(exc)
        else:
            st.caption("Columns: " + ", ".join(f"{c['name']} ({c['db_type'] or c['type']})" for c in shown["columns"]))
            names = [c["name"] for c in shown["columns"]]
            st.dataframe([dict(zip(names, row)) for row in shown["rows"]], hide_index=True, width="stretch")
            if shown["truncated"]:
                st.caption(f"first {len(shown['rows'])} rows shown; the query returns more")
