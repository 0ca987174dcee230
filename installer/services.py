"""The services the stack stands on: RabbitMQ (reuse, start or install) and the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import amqp
import pymongo

from installer.processes import Layout, running, start
from server.core.broker import close_quietly, connect, parse_broker_url
from server.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


class StackError(Exception):
    """A component could not be brought up; the message says what to do."""


def broker_answers(url: str) -> bool:
    """Tell whether an AMQP broker accepts a connection at url."""
    try:
        close_quietly(connect(parse_broker_url(url), timeout_s=2, name="modeldeck-installer"))
        return True
    except (amqp.exceptions.AMQPError, OSError):
        return False


def ensure_broker(settings: Settings, layout: Layout | None = None, wait_s: float = 90) -> bool:
    """Use a broker that answers; else start (and, as root, install) a local RabbitMQ. Return whether we started it."""
    if broker_answers(settings.broker_url):
        return False
    host = urlparse(settings.broker_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise StackError(f"no AMQP broker answers at {redact(settings.broker_url)}; check MODELDECK_BROKER_URL and that it is reachable")
    if shutil.which("rabbitmq-server") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("RabbitMQ is not installed; installing Debian's rabbitmq-server with apt-get ...", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], check=True, env=env, stdout=subprocess.DEVNULL)
        else:
            raise StackError(
                "no RabbitMQ answers at " + redact(settings.broker_url) + " and rabbitmq-server is not installed; "
                "install it with `sudo apt-get install rabbitmq-server` (or point MODELDECK_BROKER_URL at a broker)"
            )
    if not broker_answers(settings.broker_url):
        print("starting a local RabbitMQ (rabbitmq-server -detached) ...", flush=True)
        subprocess.run(["rabbitmq-server", "-detached"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait_s
        while not broker_answers(settings.broker_url):
            if time.monotonic() > deadline:
                raise StackError(f"RabbitMQ did not answer within {wait_s:.0f} s; see /var/log/rabbitmq/")
            time.sleep(1)
        if layout is not None:
            layout.record("rabbitmq").write_text(json.dumps({"started_by_modeldeck": True}))
        return True
    return False


def stop_broker_if_ours(layout: Layout) -> bool:
    """Stop RabbitMQ only if `up` started it."""
    record = layout.record("rabbitmq")
    if not record.exists():
        return False
    subprocess.run(["rabbitmqctl", "stop"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record.unlink(missing_ok=True)
    return True


def redact(url: str) -> str:
    """Return url with its password replaced by ***."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def repository_answers(url: str, timeout_ms: int = 1000) -> bool:
    """Tell whether a MongoDB-wire server answers a ping at url."""
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def nx_command(db_path: Path, port: int, layout_run: Path, log_level: str = "WARNING") -> list[str]:
    """Return the command line of the embedded nx-27017 server (through our wrapper, which sets its log level)."""
    return [sys.executable, "-m", "installer.repository_server", "--log-level", log_level,
            "--db", str(db_path), "--host", "127.0.0.1", "--port", str(port),
            "--log-file", str(layout_run / "nx-27017.log"), "--pid-file", str(layout_run / "nx-27017.pid")]


def ensure_repository(settings: Settings, layout: Layout, env: dict[str, str], wait_s: float = 30) -> bool:
    """Use the configured MongoDB, else run the embedded nx-27017 server. Return whether we started it."""
    url = settings.effective_mongo_url
    if not settings.embedded_mongo:
        if not repository_answers(url, 3000):
            raise StackError("MongoDB does not answer at the configured MODELDECK_MONGO_URL; check the URL and credentials")
        return False
    if running(layout, "repository") is not None:
        return False
    if repository_answers(url, 300):
        raise StackError(
            f"port {settings.embedded_mongo_port} is taken by another server; stop it or set MODELDECK_EMBEDDED_MONGO_PORT"
        )
    start(layout, "repository", nx_command(layout.data / "repository.db", settings.embedded_mongo_port, layout.run,
                                           settings.embedded_mongo_log_level), env, ROOT)
    deadline = time.monotonic() + wait_s
    while not repository_answers(url, 300):
        if running(layout, "repository") is None or time.monotonic() > deadline:
            raise StackError("the embedded repository (nx-27017) did not start")
        time.sleep(0.2)
    return True


def postgres_answers(url: str) -> bool:
    """Tell whether a PostgreSQL server accepts a connection at url (a libpq URL)."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


def _install_postgres() -> None:
    """Install Debian's PostgreSQL for the tests; its loopback connections are trusted (a test machine's own server)."""
    print("PostgreSQL is not installed; installing Debian's postgresql with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, stdout=subprocess.DEVNULL)
    for hba in Path("/etc/postgresql").glob("*/main/pg_hba.conf"):
        hba.write_text("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n" + hba.read_text())


def ensure_postgres(url: str, wait_s: float = 60) -> bool:
    """Make sure PostgreSQL answers at url (tests of SQL data sources); start a local Debian cluster if one is down.

    Return whether we started it.
    """
    if postgres_answers(url):
        return False
    host = urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise StackError(f"no PostgreSQL answers at {redact(url)}; check that the server is reachable")
    if shutil.which("pg_lsclusters") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError(f"no PostgreSQL answers at {redact(url)} and it is not installed; install Debian's "
                             "postgresql (sudo apt-get install postgresql) and allow the URL's user on 127.0.0.1")
        _install_postgres()
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        version, cluster, *_ = line.split()
        for action in ("start", "reload"):  # reload: a fresh install's trust lines take effect
            subprocess.run(["pg_ctlcluster", version, cluster, action], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while not postgres_answers(url):
        if time.monotonic() > deadline:
            raise StackError(f"PostgreSQL did not answer at {redact(url)} within {wait_s:.0f} s; see /var/log/postgresql/")
        time.sleep(1)
    return True


if __name__ == "__main__":
    # `python -m installer.services` makes sure a broker answers (used by the test command).
    from server.core.settings import load_settings

    try:
        started = ensure_broker(load_settings())
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print("RabbitMQ started" if started else "RabbitMQ answers")
