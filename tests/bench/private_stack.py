"""A private ModelDeck stack for a benchmark: its own home, queue prefix and ports, on this machine's loopback.

Shared by compare_servers.py and hold_stack.py. Imports of ModelDeck's own code happen inside
``private_settings``, after the caller has put the checkout it measures on ``sys.path``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a port nobody listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_settings(home: Path, queue_prefix: str) -> Any:
    """Point this process, and the stack processes it starts (child_env passes our environment on), at a private
    stack: home, queue prefix, free ports, the embedded repository with its own generated key. Return its
    settings; refuse an API address that is not loopback."""
    os.environ.update({
        "MODELDECK_HOME": str(home), "MODELDECK_QUEUE_PREFIX": queue_prefix,
        "MODELDECK_EMBEDDED_MONGO_PORT": str(free_port()), "MODELDECK_API_HOST": "127.0.0.1",
        "MODELDECK_API_PORT": str(free_port()), "MODELDECK_CONSOLE_HOST": "127.0.0.1",
        "MODELDECK_CONSOLE_PORT": str(free_port()),
    })
    for var in ("MODELDECK_MONGO_URL", "MODELDECK_SECRET_KEY", "MODELDECK_CONSOLE_KEYCLOAK_REALM_URL"):
        os.environ.pop(var, None)
    from installer.stack import api_url
    from server.core.settings import load_settings

    settings = load_settings()
    os.environ["MODELDECK_CONSOLE_API_URL"] = api_url(settings)
    if not api_url(settings).startswith("http://127."):
        raise SystemExit("benchmarks only run against a loopback address")
    return settings
