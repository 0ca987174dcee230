"""Run the smoke: images, `up --wait`, the checks through the published ports, then `down -v`; exit 0 only if all held."""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from installer.compose import COMPOSE_FILE, init_env
from installer.smoke import checks
from installer.smoke.engine import (
    Engine,
    SmokeError,
    docker_engine,
    docker_engine_answers,
    run_command,
    start_health_loop,
    start_podman,
    stop_exec_leftovers,
)
from installer.smoke.images import SMOKE_DIR, ensure_base_images

T = TypeVar("T")
PROJECT = "modeldeck-smoke"
OVERRIDE = SMOKE_DIR / "docker-compose.smoke.yml"
BUILT = ["modeldeck:latest", "modeldeck-smoke/stand-ins:latest", "modeldeck-smoke/rabbitmq:latest"]
SYNC_PREDICTIONS = 24
ADMIN_KEY_ATTEMPTS = 3
SECRET_STEP = "admin key (exec api modeldeck admin-key)"  # its result is a secret: never printed whole
CONSOLE_USER = "smoke-admin"  # the stand-in's one user (realm role modeldeck-admin); its password is generated
# Run inside the api container: each gunicorn process's own count, from prometheus-client's files for it.
COUNT_BY_PID = """
import glob, json, os, re, sys
from prometheus_client.mmap_dict import MmapedDict
for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "counter_*.db")):
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(path):
        name, sample, labels, _help = json.loads(key)
        if sample == "modeldeck_predict_requests_total" and labels.get("model") == sys.argv[1] and labels.get("outcome") == "success":
            total += value
    print(re.search(r"counter_(\\d+)", path).group(1), total)
"""


class Smoke:
    """One run: the engine, the compose command line, and the timings of each step."""

    def __init__(self, engine: Engine, env_file: Path, ports: dict[str, int], logs: Path) -> None:
        self.engine = engine
        self.logs = logs
        self.ports = ports
        self.env_file = env_file
        self.compose = [*engine.compose, "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE),
                        "--env-file", str(env_file)]
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []
        self.container_ids: set[str] = set()

    def step(self, name: str, action: Callable[[], T]) -> T:
        """Run one step, print its outcome and duration; a failure names the step."""
        began = time.monotonic()
        print(f"[{began - self.started:6.1f} s] {name} ...", flush=True)
        try:
            result = action()
        except SmokeError as exc:
            raise SmokeError(f"{name}: {exc}") from exc
        took = time.monotonic() - began
        self.timings.append((name, took))
        detail = f": {result}" if isinstance(result, str) and result and name != SECRET_STEP else ""
        print(f"[{time.monotonic() - self.started:6.1f} s]   ok in {took:.1f} s{detail}", flush=True)
        return result

    def run_compose(self, args: list[str], timeout_s: float = 600, log: Path | None = None) -> str:
        """Run `compose ARGS` on the stack and return its output."""
        label = "compose " + " ".join(a if len(a) < 80 else a[:40] + "..." for a in args)
        return run_command([*self.compose, *args], self.engine.env, timeout_s, log=log, label=label).stdout or ""

    def build(self) -> str:
        """Build every image of the stack with compose; check that each exists (a failed pull still exits 0)."""
        before = {name: self.engine.image_id(name) for name in BUILT}
        self.run_compose(["build"], 1800, log=self.logs / "build.log")
        missing = [name for name in BUILT if not self.engine.image_exists(name)]
        if missing:
            raise SmokeError(f"compose build exited 0 but left no image {', '.join(missing)}")
        # The images this build replaced would stay behind untagged, 1.4 GB a run; the build cache is kept.
        for name, old in before.items():
            if old and old != self.engine.image_id(name):
                self.engine.run(["rmi", old], 120, check=False)
        return ", ".join(BUILT)

    def up(self) -> str:
        """Start the stack and wait for every health check."""
        self.run_compose(["up", "-d", "--wait", "--wait-timeout", "420"], 480)
        states = self.run_compose(["ps", "--format", "{{.Service}} {{.Health}}"], 60).strip().splitlines()
        return ", ".join(sorted(states))

    def admin_key(self) -> str:
        """Create an admin key the documented way: `compose exec api modeldeck admin-key`."""
        for attempt in range(1, ADMIN_KEY_ATTEMPTS + 1):
            try:
                out = self.run_compose(["exec", "-T", "api", "modeldeck", "admin-key", "--name", "smoke-admin"], 120)
                break
            except SmokeError as exc:
                # Seen once under load: the exec'd process's first repository lookup timed out (5 s) while the
                # api's own processes were fine. Say so, and try again as an operator would.
                if attempt == ADMIN_KEY_ATTEMPTS:
                    raise
                print(f"  attempt {attempt} failed, trying again: {str(exc).splitlines()[-1][:300]}", flush=True)
                time.sleep(3)
        key = out.strip().splitlines()[-1] if out.strip() else ""
        if not re.fullmatch(r"\S{20,}", key):
            raise SmokeError(f"`exec api modeldeck admin-key` printed no key: {out[-500:]}")
        return key

    def predictions_by_pid(self) -> dict[str, float]:
        """Return, per API process, the successful predictions its multiprocess counter file holds (read in the container)."""
        out = self.run_compose(["exec", "-T", "api", "python", "-c", COUNT_BY_PID, checks.MODEL], 60)
        return {pid: float(n) for pid, n in re.findall(r"^(\d+) (\S+)$", out, flags=re.MULTILINE) if float(n) > 0}

    def scale_workers(self, api: checks.Api) -> str:
        """Scale worker-cpu to 2 and see both in GET /api/v1/runtimes."""
        self.run_compose(["up", "-d", "--no-recreate", "--wait", "--wait-timeout", "300", "--scale", "worker-cpu=2"], 360)
        workers = checks.wait_for("2 cpu workers in GET /api/v1/runtimes",
                                  lambda: (w if len(w := checks.cpu_workers(api)) >= 2 else None), 90)
        return f"{len(workers)} cpu workers: {checks.describe_workers(workers)}"

    def restart_broker(self, api: checks.Api) -> str:
        """Restart the rabbitmq container and see predictions recover."""
        began = time.monotonic()
        self.run_compose(["restart", "rabbitmq"], 180)
        checks.wait_for("predictions after the broker restart", lambda: checks.predict(api), 180, 1.0)
        recovered = time.monotonic() - began
        for _ in range(5):
            checks.predict(api)
        return f"predictions answered {recovered:.1f} s after `restart rabbitmq`, then 5 of 5 more"

    def print_logs(self) -> None:
        """Print each of the stack's containers' last log lines."""
        names = self.engine.run(["ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                                 "--format", "{{.Names}}"], 60, check=False).stdout.split()
        for name in sorted(names):
            logs = self.engine.run(["logs", "--tail", "40", name], 60, check=False).stdout
            print(f"----- last lines of {name} -----\n{logs.rstrip()}", flush=True)

    def down(self) -> str:
        """Remove the stack's containers, networks and volumes; the images stay as the next build's cache."""
        self.container_ids |= set(self.engine.run(["ps", "-a", "-q", "--no-trunc", "--filter",
                                                   f"label=com.docker.compose.project={PROJECT}"], 60).stdout.split())
        self.run_compose(["down", "-v", "--remove-orphans", "--timeout", "10"], 300)
        left = self.engine.run(["ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], 60).stdout.split()
        volumes = self.engine.run(["volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], 60).stdout.split()
        if left or volumes:
            raise SmokeError(f"`down -v` left containers {left} and volumes {volumes}")
        return "containers, networks and volumes removed"


def checks_through_ports(smoke: Smoke) -> None:
    """The checks a user of the stack would make, in order."""
    smoke.step("GET /readyz (broker, repository, workers)", lambda: checks.ready(f"http://127.0.0.1:{smoke.ports['api']}"))
    key = smoke.step(SECRET_STEP, smoke.admin_key)
    print(f"  {key[:8]}... ({len(key)} characters; the rest is not printed)", flush=True)
    api = checks.Api(f"http://127.0.0.1:{smoke.ports['api']}", key)
    smoke.step("upload a skops iris LogisticRegression", lambda: checks.upload_model(api))
    smoke.step(f"{SYNC_PREDICTIONS} synchronous predictions, 6 at a time", lambda: checks.predict_many(api, SYNC_PREDICTIONS, 6))
    smoke.step("/metrics counts them across both API workers",
               lambda: checks.metrics_sum_workers(api, SYNC_PREDICTIONS, smoke.predictions_by_pid))
    smoke.step("asynchronous prediction (?async=true job)", lambda: f"job {checks.predict_async(api)} succeeded")
    smoke.step("scale worker-cpu to 2", lambda: smoke.scale_workers(api))
    smoke.step("console page", lambda: checks.console_page(f"http://127.0.0.1:{smoke.ports['console']}"))
    smoke.step("console sign-in", lambda: checks.console_sign_in(sign_in(smoke)))
    smoke.step("restart rabbitmq, predictions recover", lambda: smoke.restart_broker(api))


def sign_in(smoke: Smoke) -> checks.SignIn:
    """Describe the console sign-in from the .env the stack runs with: public URLs, the user, the cookie secret."""
    env = read_env(smoke.env_file)
    return checks.SignIn(console=env["MODELDECK_CONSOLE_PUBLIC_URL"], keycloak=env["KEYCLOAK_PUBLIC_URL"],
                         api=f"http://127.0.0.1:{smoke.ports['api']}", username=env["SMOKE_CONSOLE_USER"],
                         password=env["SMOKE_CONSOLE_PASSWORD"], cookie_secret=env["MODELDECK_CONSOLE_COOKIE_SECRET"])


def read_env(path: Path) -> dict[str, str]:
    """Read the NAME=value lines of a .env (as written here: no quotes, no expansion)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def free_port() -> int:
    """Return a TCP port nothing listens on now (other stacks and tests share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_env(path: Path, ports: dict[str, int], debian: str, python: str) -> None:
    """Write fresh secrets (as `modeldeck compose init` does), the published ports and the base images."""
    init_env(path)
    with path.open("a") as f:
        f.write(f"MODELDECK_API_PORT={ports['api']}\nMODELDECK_CONSOLE_PORT={ports['console']}\n"
                f"KEYCLOAK_PORT={ports['keycloak']}\nKEYCLOAK_PUBLIC_URL=http://localhost:{ports['keycloak']}\n"
                f"MODELDECK_CONSOLE_PUBLIC_URL=http://localhost:{ports['console']}\n"
                f"SMOKE_CONSOLE_USER={CONSOLE_USER}\nSMOKE_CONSOLE_PASSWORD={secrets.token_urlsafe(24)}\n"
                f"SMOKE_DEBIAN_IMAGE={debian}\nSMOKE_PYTHON_IMAGE={python}\n")


def default_cache() -> Path:
    """Return where the smoke keeps its engine settings, socket and logs."""
    return Path("/var/cache/modeldeck-smoke") if os.geteuid() == 0 else Path.home() / ".cache" / "modeldeck-smoke"


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop what was started


def main(argv: list[str]) -> int:
    """Run the whole smoke; return its exit status."""
    keep = "--keep" in argv  # leave the stack up for debugging (background processes still stop)
    signal.signal(signal.SIGTERM, _terminate)
    cache = default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    # One smoke at a time per machine: they would share the project name, the podman socket and the logs.
    lock = (cache / "smoke.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"error: another `modeldeck compose smoke` is running on this machine ({cache / 'smoke.lock'})", file=sys.stderr)
        return 2
    began = time.monotonic()
    try:
        engine = docker_engine() if docker_engine_answers() else start_podman(cache, cache / "podman-service.log")
    except SmokeError as exc:
        print(f"error: no container engine: {exc}", file=sys.stderr)
        return 2
    print(f"engine: {engine.kind} ({engine.env.get('DOCKER_HOST', 'default socket')}), ready in {time.monotonic() - began:.1f} s; "
          f"compose: {engine.compose[0]}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="modeldeck-smoke-"))
    ok = False
    smoke: Smoke | None = None
    try:
        ports = {"api": free_port(), "console": free_port(), "keycloak": free_port()}
        env_file = workdir / ".env"
        write_env(env_file, ports, "pending", "pending")  # until the base images are known
        smoke = Smoke(engine, env_file, ports, cache)
        smoke.run_compose(["down", "-v", "--remove-orphans"], 300)  # what an interrupted run left
        base = smoke.step("base images", lambda: ensure_base_images(engine, cache))
        env_file.unlink()
        write_env(env_file, ports, base.debian, base.python)
        print(f"  {base.how}: {base.debian}, {base.python}", flush=True)
        if engine.kind == "podman":
            start_health_loop(engine, PROJECT, cache / "healthloop.log")
        smoke.step("compose build", smoke.build)
        smoke.step("compose up --wait (every health check)", smoke.up)
        checks_through_ports(smoke)
        ok = True
    except Exception as exc:  # the CLI's edge: whatever broke, report it, show the logs and clean up
        detail = str(exc) if isinstance(exc, SmokeError) else f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {detail}", file=sys.stderr, flush=True)
        if smoke is not None:
            smoke.print_logs()
    finally:
        try:
            if smoke is not None and not keep:
                smoke.step("compose down -v", smoke.down)
        except SmokeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            ok = False
        for stopped in engine.stop_background():
            print(f"stopped {stopped}", flush=True)
        if engine.kind == "podman" and smoke is not None:
            leftovers = stop_exec_leftovers(smoke.container_ids)
            if leftovers:
                print(f"stopped podman's leftover exec conmon processes, pids {', '.join(map(str, leftovers))}", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if smoke is not None:
        print("timings: " + ", ".join(f"{name} {took:.1f} s" for name, took in smoke.timings))
    print(f"compose smoke {'passed' if ok else 'FAILED'} in {time.monotonic() - began:.1f} s", flush=True)
    return 0 if ok else 1
