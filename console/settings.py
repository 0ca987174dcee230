"""The console's own settings (it shares no code with the server: REST only)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


FIELD_DOCS: dict[str, str] = {
    'api_url': "The Service API the console talks to (REST only).",
    'host': "Address the console binds.",
    'port': "Port of the console.",
    'timeout_s': "How long the console waits for one API call (large uploads).",
    'keycloak_realm_url': "Keycloak realm URL as the console's server reaches it (e.g. `http://127.0.0.1:8180/realms/modeldeck`; in compose `http://keycloak:8080/realms/modeldeck`): its discovery document gives the sign-in page browsers go to. Set: the sign-in page offers \"Sign in with Keycloak\" (Streamlit's `st.login`); empty: API-key sign-in only.",
    'keycloak_client_id': "The console's client in that realm (public, authorization code with PKCE S256).",
    'keycloak_client_secret': "Its secret, for a confidential client only (the shipped realm's console client is public).",
    'public_url': "The console's URL as browsers reach it; Keycloak redirects to `<public_url>/oauth2callback`, which the client must allow. Default: `http://<host>:<port>`.",
    'cookie_secret': "Signs Streamlit's sign-in cookie. Empty: a random one per console start (everyone signs in again after a restart).",
}


class ConsoleSettings(BaseSettings):
    """Where the API is; read once per console process from MODELDECK_CONSOLE_* variables."""

    model_config = SettingsConfigDict(env_prefix="MODELDECK_CONSOLE_", frozen=True, extra="ignore")

    api_url: str = "http://127.0.0.1:8600"
    host: str = "127.0.0.1"
    port: int = 8501
    timeout_s: float = 120.0
    keycloak_realm_url: str = ""
    keycloak_client_id: str = "modeldeck-console"
    keycloak_client_secret: SecretStr = SecretStr("")
    public_url: str = ""
    cookie_secret: SecretStr = SecretStr("")

    @property
    def redirect_uri(self) -> str:
        """Where Keycloak sends the browser back after sign-in."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/") + "/oauth2callback"
