"""Start, find and stop the stack's background processes by recorded pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Layout:
    """Where the local stack keeps its state under MODELDECK_HOME."""

    home: Path

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def admin_key(self) -> Path:
        return self.home / "admin.key"

    def create(self) -> None:
        """Create the folders."""
        for path in (self.run, self.logs, self.data):
            path.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def record(self, name: str) -> Path:
        return self.run / f"{name}.json"


def running(layout: Layout, name: str) -> psutil.Process | None:
    """Return the recorded process if it is still the one we started, else None."""
    path = layout.record(name)
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        proc = psutil.Process(rec["pid"])
        # A recycled pid belongs to another process: compare start times.
        if abs(proc.create_time() - rec["create_time"]) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, ValueError, KeyError, OSError):
        return None


def start(layout: Layout, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> psutil.Process:
    """Start a process in its own session, logging to logs/<name>.log, and record its pid."""
    log = open(layout.log(name), "ab")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=cwd, start_new_session=True)
    log.close()
    ps = psutil.Process(proc.pid)
    layout.record(name).write_text(json.dumps({"pid": proc.pid, "create_time": ps.create_time(), "cmd": cmd}))
    return ps


def stop(layout: Layout, name: str, timeout_s: float = 15.0) -> bool:
    """Stop a recorded process and its children; return whether one was running."""
    proc = running(layout, name)
    layout_record = layout.record(name)
    if proc is None:
        layout_record.unlink(missing_ok=True)
        return False
    try:
        # Children in their own sessions (the controller's workers) are not in the process group: remember them.
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.1)
    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for child in left:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=timeout_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    layout_record.unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int) -> str:
    """Return the last lines of a log file."""
    if not path.exists():
        return f"(no log at {path})"
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 200 * lines))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
