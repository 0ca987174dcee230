"""`modeldeck up|status|logs|down` on a fresh MODELDECK_HOME: one stack, started once, stopped by pid."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

from pathlib import Path

import psutil
import requests

from conftest import ROOT, Proc, Stack, free_port
from test_readme import readme_sample_shapes, real_shapes


def modeldeck(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "installer.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def stack_env(stack: Stack, home: Path) -> dict[str, str]:
    """The environment of a stack of its own: its MODELDECK_HOME, free ports, its own queues, one small API worker."""
    api_port = free_port()
    return {**stack.env, "MODELDECK_HOME": str(home), "MODELDECK_API_PORT": str(api_port),
            "MODELDECK_EMBEDDED_MONGO_PORT": str(free_port()), "MODELDECK_QUEUE_PREFIX": f"cli{api_port}.",
            "MODELDECK_API_WORKERS": "1", "MODELDECK_API_THREADS": "4", "MODELDECK_CONSOLE_PORT": str(free_port()),
            "MODELDECK_SECRET_KEY": ""}  # up generates the data-source key


def recorded_pids(home: Path) -> dict[str, int]:
    return {name: json.loads((home / "run" / f"{name}.json").read_text())["pid"]
            for name in ("repository", "worker-cpu", "controller", "api", "console")}


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_up_twice_status_logs_and_down(stack: Stack, worker: Proc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    env = stack_env(stack, home)
    api_port = int(env["MODELDECK_API_PORT"])
    try:
        first = modeldeck(env, "up")
        assert first.returncode == 0, first.stdout + first.stderr
        # What it printed has the shape of the README's sample: the same lines, labels and order.
        assert real_shapes(first.stdout) == readme_sample_shapes()
        key = (home / "admin.key").read_text().strip()
        assert key.startswith("mdk_") and key in first.stdout
        assert f"http://127.0.0.1:{api_port}/api/v1" in first.stdout
        assert f"Console:   http://127.0.0.1:{env['MODELDECK_CONSOLE_PORT']}" in first.stdout
        assert stat.S_IMODE(os.stat(home / "admin.key").st_mode) == 0o600
        secret_key = (home / "secret.key").read_text().strip()
        assert len(secret_key) == 44 and stat.S_IMODE(os.stat(home / "secret.key").st_mode) == 0o600
        assert secret_key not in first.stdout + first.stderr
        pids = {name: json.loads((home / "run" / f"{name}.json").read_text())["pid"]
                for name in ("repository", "worker-cpu", "controller", "api", "console")}
        assert all(psutil.pid_exists(p) for p in pids.values())

        me = requests.get(f"http://127.0.0.1:{api_port}/api/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert me.json()["role"] == "admin"
        # The API got the generated key: a data source's URL is encrypted and used.
        auth = {"Authorization": f"Bearer {key}"}
        made = requests.post(f"http://127.0.0.1:{api_port}/api/v1/datasources", headers=auth, timeout=10,
                             json={"name": "local", "kind": "sql", "url": "sqlite://"})
        assert made.status_code == 201, made.text
        preview = requests.post(f"http://127.0.0.1:{api_port}/api/v1/datasources/local/preview", headers=auth, timeout=10,
                                json={"query": "SELECT 1 AS one"})
        assert preview.json()["rows"] == [[1]]

        # A second `up` finds the running stack: same processes, same key, nothing new started.
        second = modeldeck(env, "up")
        assert second.returncode == 0, second.stderr
        assert key in second.stdout
        again = {name: json.loads((home / "run" / f"{name}.json").read_text())["pid"] for name in pids}
        assert again == pids
        assert (home / "secret.key").read_text().strip() == secret_key

        status = modeldeck(env, "status")
        assert status.returncode == 0 and "readiness    ready" in status.stdout
        logs = modeldeck(env, "logs", "worker-cpu", "-n", "5")
        assert logs.returncode == 0 and "worker-cpu.log" in logs.stdout
    finally:
        down = modeldeck(env, "down")
    assert down.returncode == 0
    assert "api" in down.stdout and "worker-cpu" in down.stdout and "controller" in down.stdout and "repository" in down.stdout
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids.values())
    # Nothing else was stopped: the test session's own worker still runs.
    assert worker.alive()
    after = modeldeck(env, "status")
    assert after.returncode == 3 and "api          stopped" in after.stdout


def test_up_says_what_is_wrong_with_a_bad_setting(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = modeldeck({**stack.env, "MODELDECK_HOME": str(tmp_path), "MODELDECK_API_PORT": "eighty"}, "up")
    assert result.returncode == 2
    assert "MODELDECK_API_PORT: Input should be a valid integer" in result.stderr


def test_two_stacks_side_by_side_keep_their_files_apart_and_stop_alone(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A HOME of its own shows whether a stack writes anywhere but its MODELDECK_HOME (gunicorn's control socket did).
    user_home = tmp_path / "user"
    user_home.mkdir()
    homes = {"a": tmp_path / "a", "b": tmp_path / "b"}
    # Upload libraries are not imported at start here: the test is about files and processes, and the 2 cores are busy.
    envs = {k: {**stack_env(stack, home), "HOME": str(user_home), "MODELDECK_PRELOAD_UPLOAD_LIBRARIES": "false"}
            for k, home in homes.items()}
    envs["b"]["MODELDECK_EMBEDDED_MONGO_LOG_LEVEL"] = "INFO"  # the level is a setting; INFO logs every command
    try:
        # Both come up at once, as two users' stacks would.
        ups = {k: subprocess.Popen([sys.executable, "-m", "installer.cli", "up"], env=envs[k], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in homes}
        for proc in ups.values():
            output, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, output
        pids = {k: recorded_pids(home) for k, home in homes.items()}
        for home in homes.values():
            assert (home / "run" / "gunicorn.ctl").is_socket()
        assert list(user_home.iterdir()) == []

        stopped = modeldeck(envs["a"], "down")
        assert [" ".join(line.split()[:2]) for line in stopped.stdout.splitlines()] == [
            "console stopped", "api stopped", "controller stopped", "worker-cpu stopped", "repository stopped",
            "stopped: console,"]
        assert stopped.stdout.endswith("\nstopped: console, api, controller, worker-cpu, repository\n")
        assert not any(alive(p) for p in pids["a"].values())
        assert all(alive(p) for p in pids["b"].values())
        assert (homes["b"] / "run" / "gunicorn.ctl").is_socket()
        status = modeldeck(envs["b"], "status")
        assert status.returncode == 0 and "readiness    ready" in status.stdout
        key = (homes["b"] / "admin.key").read_text().strip()
        me = requests.get(f"http://127.0.0.1:{envs['b']['MODELDECK_API_PORT']}/api/v1/me",
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert me.status_code == 200 and me.json()["subject"] == "apikey:bootstrap-admin"
        # The repository logs at WARNING by default: no per-command INFO lines, unless asked for them.
        assert " - INFO - " not in (homes["a"] / "logs" / "repository.log").read_text()
        assert " - INFO - " in (homes["b"] / "logs" / "repository.log").read_text()
    finally:
        for k in ("b", "a"):
            modeldeck(envs[k], "down")
    assert not any(alive(p) for p in pids["b"].values())
    assert list(user_home.iterdir()) == []


def test_up_names_the_component_that_exits_while_starting_and_shows_its_log(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    env = stack_env(stack, home)
    with socket.socket() as taken:  # something else listens on the API's port: gunicorn cannot bind and exits
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", int(env["MODELDECK_API_PORT"])))
        taken.listen()
        result = modeldeck(env, "up")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: api exited while starting\n--- last lines of {home / 'logs' / 'api.log'} ---\n")
    assert "Connection in use" in result.stderr
    # up stopped what it had started.
    assert not any((home / "run" / f"{name}.json").exists() for name in ("repository", "worker-cpu", "controller", "console"))
