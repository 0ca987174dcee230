"""``python -m installer.smoke.healthloop PROJECT``: run podman's health checks for a compose project's containers.

Podman schedules health checks with systemd timers; without systemd no check runs, so `depends_on:
condition: service_healthy` and `up --wait` would wait forever. This loop runs `podman healthcheck run` the
way Docker would: every 2 s while a container starts (its start period) or before it was ever healthy, then at
the container's own interval, each container on its own thread so a slow check does not hold up the others.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime

POLL_S = 2.0


def containers(project: str) -> list[dict]:  # type: ignore[type-arg]
    """Return `podman inspect` of the project's running containers."""
    try:
        ids = subprocess.run(["podman", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, timeout=60).stdout.split()
        if not ids:
            return []
        out = subprocess.run(["podman", "inspect", *ids], capture_output=True, text=True, timeout=60).stdout
        return list(json.loads(out or "[]"))
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return []  # podman busy (a build, a start) or a container gone between ps and inspect: next round


def started_at(state: dict) -> float:  # type: ignore[type-arg]
    """Return when the container (re)started, as a Unix time (0 when podman's timestamp cannot be read)."""
    # Podman writes nanoseconds and an offset ("2026-12-06T17:20:01.123456789+00:00" or "...Z"); seconds suffice.
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)[.\d]*(Z|[+-]\d\d:\d\d)?", str(state.get("StartedAt", "")))
    if not match:
        return 0.0
    offset = "+00:00" if match.group(2) in (None, "Z") else match.group(2)
    return datetime.fromisoformat(match.group(1) + offset).timestamp()


def due(info: dict, last_run: float, now: float) -> bool:  # type: ignore[type-arg]
    """Decide whether a container's health check should run now."""
    check = info.get("Config", {}).get("Healthcheck") or {}
    if not check.get("Test"):
        return False
    state = info.get("State", {})
    interval_s = (check.get("Interval") or 30e9) / 1e9
    start_period_s = (check.get("StartPeriod") or 0) / 1e9
    health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "starting")
    starting = health != "healthy" and now - started_at(state) < start_period_s + 5
    return now - last_run >= (POLL_S if starting or health == "starting" else interval_s)


def main(argv: list[str]) -> int:
    """Loop until terminated."""
    project = argv[0]
    last: dict[str, float] = {}
    busy: set[str] = set()
    lock = threading.Lock()

    def check(cid: str) -> None:
        try:
            subprocess.run(["podman", "healthcheck", "run", cid], capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with lock:
                busy.discard(cid)

    while True:
        now = time.time()
        for info in containers(project):
            cid = info["Id"]
            with lock:
                if cid in busy or not due(info, last.get(cid, 0.0), now):
                    continue
                busy.add(cid)
                last[cid] = now
            threading.Thread(target=check, args=(cid,), daemon=True).start()
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
