"""Bring the local stack up and down: repository, CPU worker, API; the broker is reused or started."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests

from console.settings import ConsoleSettings

from installer.processes import Layout, running, start, stop, tail
from installer.secrets import ensure_secret_key
from installer.services import StackError, ensure_broker, ensure_repository, redact, stop_broker_if_ours
from server.core import keys_repo, workers_repo
from server.core.db import connect, ensure_indexes
from server.core.settings import Settings

COMPONENTS = ("repository", "worker-cpu", "controller", "api", "console")
ROOT = Path(__file__).resolve().parent.parent
Progress = Callable[[str], None]


def child_env(settings: Settings, layout: Layout, **extra: str) -> dict[str, str]:
    """Return the environment of a child process: ours, with MODELDECK_HOME made absolute and caches under it."""
    env = {**os.environ, "MODELDECK_HOME": str(layout.home), "PYTHONUNBUFFERED": "1", **extra}
    # Libraries' caches (onnxruntime writes one as it loads) stay with the stack unless the user shares one on purpose.
    env.setdefault("XDG_CACHE_HOME", str(layout.home / "cache"))
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


def progress_line(name: str, state: str, seconds: float, detail: str = "") -> str:
    """Format one line of `up`'s progress: component, what happened, how long it took, where it is."""
    return f"  {name:<11} {state:<16} {seconds:5.1f} s  {detail}".rstrip()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _api_warm(url: str) -> bool:
    """Tell whether the API answers and has imported its upload checks' libraries (readiness's uploads check)."""
    try:
        return bool(requests.get(url + "/readyz", timeout=2).json()["checks"]["uploads"]["ok"])
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False


def _serving(settings: Settings, layout: Layout, db: Any) -> dict[str, Callable[[], bool]]:
    """Return, per background component, a check that it is serving (not merely running)."""

    def worker() -> bool:
        proc = running(layout, "worker-cpu")
        live = workers_repo.live_workers(db, settings.worker_lost_after_s, settings.worker_pool)
        return proc is not None and any(w.get("pid") == proc.pid for w in live)

    console = ConsoleSettings()
    return {
        "worker-cpu": worker,
        "controller": lambda: running(layout, "controller") is not None,  # it has no endpoint to ask
        "api": lambda: _api_warm(api_url(settings)),
        "console": lambda: _answers(f"http://{console.host}:{console.port}/_stcore/health"),
    }


def _details(settings: Settings) -> dict[str, str]:
    console = ConsoleSettings()
    return {"worker-cpu": f"pool {settings.worker_pool}", "controller": "autoscaler", "api": api_url(settings),
            "console": f"http://{console.host}:{console.port}"}


def _wait_serving(settings: Settings, layout: Layout, db: Any, launched: dict[str, float], deadline: float,
                  progress: Progress) -> None:
    """Report each component once it serves, in start order, with the seconds it took; raise if one exits."""
    checks, details = _serving(settings, layout, db), _details(settings)
    ready_at: dict[str, float] = {}
    order = list(checks)
    shown = 0
    while shown < len(order):
        for name in order:
            if name in ready_at:
                continue
            if name in launched and running(layout, name) is None:
                raise StackError(f"{name} exited while starting\n--- last lines of {layout.log(name)} ---\n"
                                 + tail(layout.log(name), 30))
            if checks[name]():
                ready_at[name] = time.monotonic()
        # Print in a fixed order, so the output reads the same on every run (and matches the README's sample).
        while shown < len(order) and order[shown] in ready_at:
            name = order[shown]
            state, seconds = ("started", ready_at[name] - launched[name]) if name in launched else ("already running", 0.0)
            progress(progress_line(name, state, seconds, details[name]))
            shown += 1
        if shown < len(order):
            if time.monotonic() > deadline:
                waiting = ", ".join(n for n in order if n not in ready_at)
                raise StackError(f"{waiting} did not start serving in time; see {layout.logs}")
            time.sleep(0.2)


def gunicorn_control(layout: Layout) -> list[str]:
    """Return gunicorn's control-socket option: under MODELDECK_HOME (one per stack), or off where the path is too long.

    gunicorn's default, ~/.gunicorn/gunicorn.ctl, is one file per user: a second stack took it over from the first.
    """
    path = layout.run / "gunicorn.ctl"
    # A Unix socket's path is limited to 107 bytes (sun_path).
    return ["--control-socket", str(path)] if len(os.fsencode(path)) < 100 else ["--no-control-socket"]


def up(settings: Settings, timeout_s: float = 120, progress: Progress = lambda line: None) -> str:
    """Start what is not running yet, reporting each component as it serves, and wait until the API is ready.

    Return the admin key.
    """
    began = time.monotonic()
    deadline = began + timeout_s
    layout = Layout(settings.home.resolve())
    layout.create()
    # Data-source credentials are encrypted with this key; API and workers refuse to start without it.
    env = child_env(settings, layout, MODELDECK_SECRET_KEY=ensure_secret_key(settings, layout))
    t = time.monotonic()
    started = ensure_broker(settings, layout)
    progress(progress_line("broker", "started" if started else "reused", time.monotonic() - t,
                           f"RabbitMQ at {redact(settings.broker_url)}"))
    t = time.monotonic()
    if settings.embedded_mongo:
        started = ensure_repository(settings, layout, env)
        progress(progress_line("repository", "started" if started else "already running", time.monotonic() - t,
                               f"nx-27017 at {settings.effective_mongo_url}, data in {layout.data}"))
    else:
        ensure_repository(settings, layout, env)
        progress(progress_line("repository", "reused", time.monotonic() - t, "MongoDB at MODELDECK_MONGO_URL"))
    secret = ensure_admin_key(settings, layout)
    python = sys.executable
    launched: dict[str, float] = {}
    if running(layout, "worker-cpu") is None:
        launched["worker-cpu"] = time.monotonic()
        start(layout, "worker-cpu", [python, "-m", "runtime.worker"], {**env, "MODELDECK_WORKER_POOL": "cpu"}, ROOT)
    if running(layout, "controller") is None:
        # Scales the pools an operator configured (PUT /api/v1/runtimes/{pool}/scale or /autoscale).
        launched["controller"] = time.monotonic()
        start(layout, "controller", [python, "-m", "runtime.controller"], env, ROOT)
    if running(layout, "api") is None:
        # prometheus-client's multiprocess files (one set per gunicorn worker); stale ones would double-count.
        prometheus_dir = layout.run / "prometheus"
        shutil.rmtree(prometheus_dir, ignore_errors=True)
        prometheus_dir.mkdir(parents=True)
        launched["api"] = time.monotonic()
        start(layout, "api", [
            python, "-m", "gunicorn", "--bind", f"{settings.api_host}:{settings.api_port}",
            "--workers", str(settings.api_workers), "--threads", str(settings.api_threads), *gunicorn_control(layout),
            "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "--timeout", "120", "--graceful-timeout", "10", "server.http.wsgi:app",
        ], {**env, "PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir)}, ROOT)
    if running(layout, "console") is None:
        launched["console"] = time.monotonic()
        # The console's sign-in secrets file (Keycloak) is a temporary file: keep it with the stack too.
        console_tmp = layout.run / "console-tmp"
        console_tmp.mkdir(mode=0o700, exist_ok=True)
        start(layout, "console", [python, "-m", "console"],
              {**env, "MODELDECK_CONSOLE_API_URL": api_url(settings), "TMPDIR": str(console_tmp)}, ROOT)
    _wait_serving(settings, layout, connect(settings), launched, deadline, progress)
    ready, answer = wait_ready(settings, layout, max(1.0, deadline - time.monotonic()))
    if not ready:
        culprit = "api" if running(layout, "api") is None or "broker" not in answer else "worker-cpu"
        raise StackError(
            f"the stack did not become ready: {answer[:500]}\n--- last lines of {layout.log(culprit)} ---\n"
            + tail(layout.log(culprit), 30)
        )
    progress(progress_line("readiness", "ready", time.monotonic() - began, api_url(settings) + "/readyz"))
    return secret


def down(settings: Settings, progress: Progress = lambda line: None) -> list[str]:
    """Stop every process `up` recorded, console and API first, reporting each; return the names stopped."""
    layout = Layout(settings.home.resolve())
    stopped = []
    for name in reversed(COMPONENTS):
        t = time.monotonic()
        if stop(layout, name):
            progress(progress_line(name, "stopped", time.monotonic() - t))
            stopped.append(name)
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
