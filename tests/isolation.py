"""Stacks of a test's own, for faults and fuzzing: a private nx-27017 and a private RabbitMQ node.

The session's `stack` fixture is shared by every test; a test that kills the repository or the broker, or lets a
fuzzer scale pools and create keys, takes one of these instead, so nothing it does reaches other tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests
from conftest import Client, Proc, Stack, free_port, wait_for

from installer.services import nx_command, repository_answers
from server.core import keys_repo


def ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=8).status_code == 200
    except requests.RequestException:
        return False


class Repository:
    """A private nx-27017 that a test may kill and start again on the same data file."""

    def __init__(self, db_path: Path, run: Path, env: dict[str, str]) -> None:
        self.db_path, self.run, self.env = db_path, run, env
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}"
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc(nx_command(self.db_path, self.port, self.run), self.env, self.run / "nx-proc.log")
        wait_for(lambda: repository_answers(self.url, 200), 30, "nx-27017", self.proc.log)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.popen.pid, signal.SIGKILL)
        self.proc.popen.wait(10)
        self.proc.stop()


@contextmanager
def isolated_stack(base: Stack, tmp: Path, db_dir: Path | None = None, **env: str) -> Iterator[tuple[Stack, Repository]]:
    """A stack of the test's own: nx-27017 (data in db_dir), database, queue prefix; env may name another broker."""
    tag = uuid.uuid4().hex[:8]
    tmp.mkdir(parents=True, exist_ok=True)
    repo = Repository((db_dir or tmp) / "repository.db", tmp, base.env)
    overrides = {"MODELDECK_EMBEDDED_MONGO_PORT": str(repo.port), "MODELDECK_MONGO_DB": f"fault_{tag}",
                 "MODELDECK_QUEUE_PREFIX": f"fault-{tag}.", "MODELDECK_HOME": str(tmp / "home"), **env}
    settings = base.settings.model_copy(update={
        "embedded_mongo_port": repo.port, "mongo_db": f"fault_{tag}", "queue_prefix": f"fault-{tag}.",
        "broker_url": env.get("MODELDECK_BROKER_URL", base.settings.broker_url)})
    repo.start()
    client: pymongo.MongoClient = pymongo.MongoClient(repo.url, serverSelectionTimeoutMS=3000)
    try:
        yield Stack(settings=settings, env={**base.env, **overrides}, tmp=tmp, db=client[settings.mongo_db]), repo
    finally:
        client.close()
        if repo.proc is not None:
            repo.proc.stop()


def admin_of(stack: Stack, url: str) -> Client:
    _, secret = keys_repo.create_key(stack.db, "fault-admin", "admin", None, None, "tests")
    return Client(url, secret)


class PrivateBroker:
    """A RabbitMQ node of this test's own (never the machine's shared one), stopped and started at will."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"modeldeck-fault-{uuid.uuid4().hex[:8]}@localhost"
        home = tmp / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (tmp / "enabled_plugins").write_text("[].")
        self.env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(tmp / "log"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(tmp / "none"), "RABBITMQ_CONF_ENV_FILE": str(tmp / "none-env")}
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            return True
        except OSError:
            return False

    def start(self) -> None:
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(server).exists():
            pytest.fail("the broker-restart test needs Debian's rabbitmq-server (apt-get install rabbitmq-server)")
        self._log = open(self.tmp / "rabbitmq.out", "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen([server], env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.answers, 60, "private RabbitMQ node", self.tmp / "rabbitmq.out")

    def stop(self) -> None:
        """Stop the node (all of its Erlang processes), as a broker crash or restart would."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(15)
        deadline = time.monotonic() + 15
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._log is not None:
            self._log.close()
            self._log = None
