"""Container health probe: ``python -m runtime.probe`` exits 0 when this host's worker heartbeat is fresh.

``--controller`` instead checks that this container's main process is the controller and alive.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from server.core import workers_repo
from server.core.db import connect
from server.core.settings import load_settings


def main(argv: list[str]) -> int:
    """Return 0 if healthy, 1 otherwise (printing why)."""
    if "--controller" in argv:
        cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "runtime.controller" in cmdline:
            return 0
        print(f"process 1 is not the controller: {cmdline}")
        return 1
    settings = load_settings()
    host = socket.gethostname()
    try:
        live = workers_repo.live_workers(connect(settings, timeout_ms=3000), settings.worker_lost_after_s, settings.worker_pool)
    except Exception as exc:  # the probe reports any failure as unhealthy
        print(f"cannot read heartbeats: {type(exc).__name__}")
        return 1
    if any(w.get("host") == host for w in live):
        return 0
    print(f"no fresh heartbeat from a {settings.worker_pool} worker on {host}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
