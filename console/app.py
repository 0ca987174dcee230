"""Console entry point: sign in, then offer the pages the caller's role allows (the server enforces them)."""

from __future__ import annotations

import streamlit as st

from console.client import ApiClient, ApiError, settings

RANK = {"service": 0, "analyst": 1, "operator": 2, "admin": 3}

st.set_page_config(page_title="ModelDeck", page_icon=":material/deployed_code:", layout="wide")


def sign_in() -> None:
    st.title("ModelDeck")
    st.caption(f"Service API: {settings().api_url}")
    with st.form("sign-in"):
        key = st.text_input("API key", type="password", help="an mdk_... key from an admin (or admin.key for the first sign-in)")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                me = ApiClient(settings().api_url, key.strip(), 10).get("/api/v1/me")
            except ApiError as exc:
                st.error(exc.message)
                return
            st.session_state.credential = key.strip()
            st.session_state.me = me
            st.rerun()


def sign_out() -> None:
    for k in list(st.session_state):
        del st.session_state[k]
    st.rerun()


if "credential" not in st.session_state:
    st.navigation([st.Page(sign_in, title="Sign in", icon=":material/login:")]).run()
    st.stop()

me = st.session_state.me
rank = RANK.get(me["role"], 0)
pages = [st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True)]
if rank >= RANK["service"]:
    pages.append(st.Page("pages/predict.py", title="Try a model", icon=":material/play_arrow:"))
if rank >= RANK["analyst"]:
    pages.append(st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"))
if rank >= RANK["operator"]:
    pages += [
        st.Page("pages/models.py", title="Models", icon=":material/deployed_code:"),
        st.Page("pages/runtimes.py", title="Runtimes", icon=":material/memory:"),
        st.Page("pages/audit.py", title="Audit trail", icon=":material/fact_check:"),
    ]
if rank >= RANK["admin"]:
    pages.append(st.Page("pages/keys.py", title="API keys", icon=":material/key:"))

with st.sidebar:
    st.markdown(f"**{me['subject']}**  \nrole: `{me['role']}`")
    if st.button("Sign out", icon=":material/logout:"):
        sign_out()

st.navigation(pages).run()
