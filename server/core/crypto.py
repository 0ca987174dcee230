"""Encrypt data-source credentials at rest with Fernet; the key comes from MODELDECK_SECRET_KEY."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from server.core.errors import UnavailableError
from server.core.settings import Settings

NO_KEY = ("data sources need MODELDECK_SECRET_KEY (a Fernet key) to encrypt their credentials; `modeldeck up` "
          "generates one into MODELDECK_HOME/secret.key, or set it yourself (see docs/datasources.md)")


class SecretKeyError(UnavailableError):
    """No key is configured, or a stored secret does not open with the configured one."""

    code = "secret_key"


def generate_key() -> str:
    """Return a new random Fernet key."""
    return Fernet.generate_key().decode()


def check_key(key: str) -> None:
    """Refuse a malformed key without echoing it."""
    try:
        Fernet(key.encode())
    except ValueError:
        raise SecretKeyError("the new key is not a Fernet key (32 url-safe base64-encoded bytes)") from None


def cipher(settings: Settings) -> Fernet:
    """Return the Fernet of the configured key, or raise SecretKeyError when none is set."""
    key = settings.secret_key.get_secret_value()
    if not key:
        raise SecretKeyError(NO_KEY)
    return Fernet(key.encode())


def encrypt(settings: Settings, plaintext: str) -> str:
    """Encrypt a secret; the token is what the repository stores."""
    return cipher(settings).encrypt(plaintext.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    """Decrypt a stored token with the configured key."""
    try:
        return cipher(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretKeyError(
            "a stored data-source secret does not open with MODELDECK_SECRET_KEY; was the key rotated without "
            "restarting this process, or replaced without `modeldeck rotate-secret-key`?") from exc


def rotate_token(token: str, new_key: str, old_keys: list[str]) -> str:
    """Re-encrypt a token under new_key; it must open with one of old_keys (or new_key, when rerun)."""
    keys = MultiFernet([Fernet(k.encode()) for k in [new_key, *old_keys]])
    return keys.rotate(token.encode()).decode()


def check_key_present(settings: Settings, datasources: int) -> None:
    """Refuse to start a process while data sources exist and no key is configured to open their secrets."""
    from server.core.settings import SettingsError

    if datasources and not settings.secret_key.get_secret_value():
        raise SettingsError(f"invalid configuration: MODELDECK_SECRET_KEY is not set, but {datasources} data source(s) "
                            "are registered and their credentials are encrypted with it; set the key they were "
                            "stored with (see docs/datasources.md)")
