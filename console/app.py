"""Console entry point: sign in, then offer the pages the caller's role allows (the server enforces them)."""

from __future__ import annotations

import base64
import json
import time

import streamlit as st

from console.client import ApiClient, ApiError, settings

RANK = {"service": 0, "analyst": 1, "operator": 2, "admin": 3}

st.set_page_config(page_title="ModelDeck", page_icon=":material/deployed_code:", layout="wide")


def keycloak_configured() -> bool:
    return bool(settings().keycloak_realm_url)


def token_expiry(token: str) -> float:
    """Read a JWT's exp claim (the API verifies the signature; the console only needs to know when to renew)."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


def keycloak_session() -> None:
    """Use the access token of a Keycloak sign-in (st.login) as the console's credential while it is valid."""
    token = st.user.tokens.get("access") if st.user.is_logged_in else None
    if not token:
        return
    if token_expiry(token) <= time.time() + 5:
        st.session_state.pop("credential", None)
        st.title("ModelDeck")
        st.warning("Your Keycloak sign-in has expired. Sign in again to go on.")
        st.button("Sign in with Keycloak", type="primary", on_click=st.login, args=("keycloak",))
        st.stop()
    if st.session_state.get("credential") == token:
        return
    try:
        me = ApiClient(settings().api_url, token, 10).get("/api/v1/me")
    except ApiError as exc:
        st.title("ModelDeck")
        st.error(exc.message)
        st.button("Sign out of Keycloak", on_click=st.logout)
        st.stop()
    st.session_state.credential = token
    st.session_state.me = me
    st.session_state.via_keycloak = True


def sign_in() -> None:
    st.title("ModelDeck")
    st.caption(f"Service API: {settings().api_url}")
    if keycloak_configured():
        st.button("Sign in with Keycloak", type="primary", icon=":material/login:", on_click=st.login,
                  args=("keycloak",))
        st.caption("or with an API key:")
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
    via_keycloak = st.session_state.get("via_keycloak", False)
    for k in list(st.session_state):
        del st.session_state[k]
    if via_keycloak:
        st.logout()
    st.rerun()


if keycloak_configured():
    keycloak_session()
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
    pages.append(st.Page("pages/datasources.py", title="Data sources", icon=":material/database:"))
# A key limited to some models ("models" in /me) may not use what spans every model (the API refuses it:
# x-model-scope "unscoped"), so those pages are not offered; the others list only its models.
scoped = bool(me.get("models"))
if rank >= RANK["operator"]:
    pages += [
        st.Page("pages/models.py", title="Models", icon=":material/deployed_code:"),
        *([] if scoped else [st.Page("pages/runtimes.py", title="Runtimes", icon=":material/memory:")]),
        st.Page("pages/jobs.py", title="Batch jobs", icon=":material/batch_prediction:"),
        *([] if scoped else [st.Page("pages/audit.py", title="Audit trail", icon=":material/fact_check:")]),
    ]
if rank >= RANK["admin"] and not scoped:
    pages.append(st.Page("pages/keys.py", title="API keys", icon=":material/key:"))

with st.sidebar:
    st.markdown(f"**{me['subject']}**  \nrole: `{me['role']}`")
    if scoped:
        st.caption("models: " + ", ".join(me["models"]))
    if st.button("Sign out", icon=":material/logout:"):
        sign_out()

st.navigation(pages).run()
