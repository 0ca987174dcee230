"""``python -m console``: serve the console with Streamlit (what `modeldeck up` and compose run)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from streamlit.web import cli

from console.settings import ConsoleSettings


def auth_secrets(settings: ConsoleSettings) -> str:
    """Return Streamlit's [auth] section for Keycloak sign-in (st.login("keycloak")), as TOML."""
    cookie = settings.cookie_secret.get_secret_value() or secrets.token_urlsafe(32)
    # A public client has no secret, but Streamlit requires the key; Keycloak ignores it for public clients.
    client_secret = settings.keycloak_client_secret.get_secret_value() or "public-client"
    metadata = settings.keycloak_realm_url.rstrip("/") + "/.well-known/openid-configuration"
    values = [("redirect_uri", settings.redirect_uri), ("cookie_secret", cookie)]
    lines = ["[auth]", *(f"{k} = {json.dumps(v)}" for k, v in values), 'expose_tokens = ["access"]', "",
             "[auth.keycloak]", f"client_id = {json.dumps(settings.keycloak_client_id)}",
             f"client_secret = {json.dumps(client_secret)}", f"server_metadata_url = {json.dumps(metadata)}",
             'client_kwargs = { code_challenge_method = "S256" }', ""]
    return "\n".join(lines)


def main() -> None:
    """Run `streamlit run console/app.py` on MODELDECK_CONSOLE_HOST:MODELDECK_CONSOLE_PORT."""
    settings = ConsoleSettings()
    app = Path(__file__).with_name("app.py")
    sys.argv = ["streamlit", "run", str(app), "--server.headless=true", "--browser.gatherUsageStats=false",
                f"--server.address={settings.host}", f"--server.port={settings.port}",
                "--server.fileWatcherType=none", "--client.toolbarMode=minimal"]
    if not settings.keycloak_realm_url:
        sys.exit(cli.main())
    # The cookie secret lives in a file only this user can read, for this process's lifetime.
    folder = tempfile.mkdtemp(prefix="modeldeck-console-")
    try:
        path = Path(folder) / "secrets.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(auth_secrets(settings))
        sys.argv.append(f"--secrets.files={path}")
        cli.main()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
