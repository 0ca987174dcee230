"""API keys for service accounts (admins): create, see, revoke."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from console.client import ApiError, client, show_error

st.title("API keys")
api = client()

with st.form("create-key"):
    c1, c2 = st.columns(2)
    name = c1.text_input("Name", placeholder="crm-integration")
    role = c2.selectbox("Role", ["service", "analyst", "operator", "admin"])
    models = st.text_input("Limit to models (comma-separated, empty: all)")
    expires = st.date_input("Expires on (optional)", value=None, min_value=dt.date.today() + dt.timedelta(days=1))
    if st.form_submit_button("Create key", type="primary"):
        body = {"name": name, "role": role,
                "models": [m.strip() for m in models.split(",") if m.strip()] or None}
        if expires:
            body["expires_at"] = dt.datetime.combine(expires, dt.time(0, 0), dt.timezone.utc).isoformat()
        try:
            made = api.post("/api/v1/apikeys", json=body)
            st.success("Key created. Copy it now: it is shown only once.")
            st.code(made["key"], language=None)
        except ApiError as exc:
            show_error(exc)

keys = api.get("/api/v1/apikeys")["keys"]
st.dataframe([{"id": k["id"], "name": k["name"], "role": k["role"], "models": ", ".join(k["models"] or []) or "all",
               "prefix": k["prefix"], "expires": (k["expires_at"] or "")[:19], "revoked": (k["revoked_at"] or "")[:19],
               "last used": (k["last_used_at"] or "")[:19], "created by": k["created_by"]} for k in keys],
             hide_index=True, width="stretch")
active = [k for k in keys if not k["revoked_at"]]
if active:
    with st.form("revoke"):
        victim = st.selectbox("Revoke", [f"{k['id']} ({k['name']}, {k['role']})" for k in active])
        sure = st.checkbox("Yes, revoke it now (every request with it will be refused)")
        if st.form_submit_button("Revoke"):
            if not sure:
                st.warning("tick the confirmation first")
            else:
                try:
                    api.delete(f"/api/v1/apikeys/{victim.split(' ')[0]}")
                    st.success("revoked")
                except ApiError as exc:
                    show_error(exc)
