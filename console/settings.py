"""The console's own settings (it shares no code with the server: REST only)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


FIELD_DOCS: dict[str, str] = {
    'api_url': "The Service API the console talks to (REST only).",
    'host': "Address the console binds.",
    'port': "Port of the console.",
    'timeout_s': "How long the console waits for one API call (large uploads).",
}


class ConsoleSettings(BaseSettings):
    """Where the API is; read once per console process from MODELDECK_CONSOLE_* variables."""

    model_config = SettingsConfigDict(env_prefix="MODELDECK_CONSOLE_", frozen=True, extra="ignore")

    api_url: str = "http://127.0.0.1:8600"
    host: str = "127.0.0.1"
    port: int = 8501
    timeout_s: float = 120.0
