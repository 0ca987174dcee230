"""The console's only way to the platform: one HTTP session to the Service API per signed-in credential."""

from __future__ import annotations

from typing import Any

import requests
import streamlit as st

from console.settings import ConsoleSettings


class ApiError(Exception):
    """The API refused or failed a request; `message` is the server's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiClient:
    """Call the Service API with one credential."""

    def __init__(self, base_url: str, credential: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {credential}"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """Send a request; raise ApiError with the server's message on any error status."""
        kw.setdefault("timeout", self.timeout_s)
        try:
            resp = self.session.request(method, self.base_url + path, **kw)
        except requests.RequestException as exc:
            raise ApiError(0, f"cannot reach the API at {self.base_url}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                message = err["message"] if isinstance(err, dict) else str(err)
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {resp.status_code} from {path}"
            raise ApiError(resp.status_code, message)
        return resp

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v not in (None, "")}).json()

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw).json()

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", path, json=body).json()

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).json()

    def raw(self, path: str, **params: Any) -> bytes:
        return self.request("GET", path, params=params).content

    def available(self, path: str) -> bool:
        """Tell whether this server has an endpoint (older servers lack some pages' APIs)."""
        try:
            self.request("GET", path)
            return True
        except ApiError as exc:
            return exc.status not in (404, 405)


@st.cache_resource(show_spinner=False)
def settings() -> ConsoleSettings:
    """Read the console's settings once."""
    return ConsoleSettings()


@st.cache_resource(show_spinner=False, max_entries=100)
def _client(base_url: str, credential: str, timeout_s: float) -> ApiClient:
    return ApiClient(base_url, credential, timeout_s)


def client() -> ApiClient:
    """Return the signed-in user's client (the entry point guarantees a credential)."""
    s = settings()
    return _client(s.api_url, st.session_state["credential"], s.timeout_s)


def show_error(exc: ApiError) -> None:
    """Show the server's message word for word."""
    st.error(exc.message)


def get_or_stop(path: str, feature: str, **params: Any) -> Any:
    """GET a page's data; when this server lacks the endpoint say so honestly, on other errors show them; then stop."""
    try:
        return client().get(path, **params)
    except ApiError as exc:
        if exc.status in (404, 405):
            st.info(f"{feature} are not available on this server yet (it has no {path}).")
        else:
            show_error(exc)
        st.stop()
