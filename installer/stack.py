"""Bring the local stack up and down: repository, CPU worker, API; the broker is reused or started."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import requests

from installer.processes import Layout, running, start, stop, tail
from installer.secrets import ensure_secret_key
from installer.services import StackError, ensure_broker, ensure_repository, stop_broker_if_ours
from server.core import keys_repo
from server.core.db import connect, ensure_indexes
from server.core.settings import Settings

COMPONENTS = ("repository", "worker-cpu", "controller", "api", "console")
ROOT = Path(__file__).resolve().parent.parent


def child_env(settings: Settings, layout: Layout, **extra: str) -> dict[str, str]:
    """Return the environment of a child process: ours, with MODELDECK_HOME made absolute."""
    env = {**os.environ, "MODELDECK_HOME": str(layout.home), "PYTHONUNBUFFERED": "1", **extra}
    return env


def api_url(settings: Settings) -> str:
    """Return the base URL of the local API."""
    return f"http://{settings.api_host}:{settings.api_port}"


def ensure_admin_key(settings: Settings, layout: Layout) -> str:
    """Return the bootstrap admin key, creating it (and admin.key, mode 600) on first start."""
    db = connect(settings)
    ensure_indexes(db)
    if layout.admin_key.exists():
        secret = layout.admin_key.read_text().strip()
        doc = keys_repo.find_key(db, secret)
        if doc is not None and doc.get("revoked_at") is None:
            return secret
    _, secret = keys_repo.create_key(db, "bootstrap-admin", "admin", None, None, "modeldeck up")
    fd = os.open(layout.admin_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(layout.admin_key, 0o600)
    return secret


def wait_ready(settings: Settings, layout: Layout, timeout_s: float) -> tuple[bool, str]:
    """Wait for /readyz; return (ready, the last answer or error)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        for name in ("api", "worker-cpu"):
            if running(layout, name) is None:
                return False, f"{name} exited"
        try:
            resp = requests.get(api_url(settings) + "/readyz", timeout=2)
            last = resp.text
            if resp.status_code == 200:
                return True, last
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    return False, last


def up(settings: Settings, timeout_s: float = 120) -> str:
    """Start what is not running yet and wait until the API is ready; return the admin key."""
    layout = Layout(settings.home.resolve())
    layout.create()
    # Data-source credentials are encrypted with this key; API and workers refuse to start without it.
    env = child_env(settings, layout, MODELDECK_SECRET_KEY=ensure_secret_key(settings, layout))
    ensure_broker(settings, layout)
    ensure_repository(settings, layout, env)
    secret = ensure_admin_key(settings, layout)
    python = sys.executable
    if running(layout, "worker-cpu") is None:
        start(layout, "worker-cpu", [python, "-m", "runtime.worker"], {**env, "MODELDECK_WORKER_POOL": "cpu"}, ROOT)
    if running(layout, "controller") is None:
        # Scales the pools an operator configured (PUT /api/v1/runtimes/{pool}/scale or /autoscale).
        start(layout, "controller", [python, "-m", "runtime.controller"], env, ROOT)
    if running(layout, "api") is None:
        # prometheus-client's multiprocess files (one set per gunicorn worker); stale ones would double-count.
        prometheus_dir = layout.run / "prometheus"
        shutil.rmtree(prometheus_dir, ignore_errors=True)
        prometheus_dir.mkdir(parents=True)
        start(layout, "api", [
            python, "-m", "gunicorn", "--bind", f"{settings.api_host}:{settings.api_port}",
            "--workers", str(settings.api_workers), "--threads", str(settings.api_threads),
            "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "--timeout", "120", "--graceful-timeout", "10", "server.http.wsgi:app",
        ], {**env, "PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir)}, ROOT)
    if running(layout, "console") is None:
        start(layout, "console", [python, "-m", "console"],
              {**env, "MODELDECK_CONSOLE_API_URL": api_url(settings)}, ROOT)
    ready, answer = wait_ready(settings, layout, timeout_s)
    if not ready:
        culprit = "api" if running(layout, "api") is None or "broker" not in answer else "worker-cpu"
        raise StackError(
            f"the stack did not become ready: {answer[:500]}\n--- last lines of {layout.log(culprit)} ---\n"
            + tail(layout.log(culprit), 30)
        )
    return secret


def down(settings: Settings) -> list[str]:
    """Stop every process `up` recorded, API first; return the names stopped."""
    layout = Layout(settings.home.resolve())
    stopped = [name for name in reversed(COMPONENTS) if stop(layout, name)]
    if stop_broker_if_ours(layout):
        stopped.append("rabbitmq")
    return stopped


def status(settings: Settings) -> dict[str, str]:
    """Return each component's state and the API's readiness."""
    layout = Layout(settings.home.resolve())
    states = {}
    for name in COMPONENTS:
        if name == "repository" and not settings.embedded_mongo:
            states[name] = "external (MODELDECK_MONGO_URL)"
            continue
        proc = running(layout, name)
        states[name] = f"running (pid {proc.pid})" if proc else "stopped"
    try:
        resp = requests.get(api_url(settings) + "/readyz", timeout=2)
        states["readiness"] = "ready" if resp.status_code == 200 else f"not ready: {resp.text[:300]}"
    except requests.RequestException:
        states["readiness"] = "API not answering"
    return states


__all__ = ["StackError", "down", "status", "up", "api_url", "tail"]
