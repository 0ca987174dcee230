"""Real services for the tests: RabbitMQ (reused or started), nx-27017, Celery workers, the API under gunicorn.

Everything runs on loopback. Each session gets its own repository database, its own queue
prefix and ephemeral ports, so a developer's running stack is never touched.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymongo
import pytest
import requests
import skops.io as sio
from cryptography.fernet import Fernet
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from installer.services import StackError, ensure_broker, ensure_postgres, nx_command, repository_answers
from server.core import keys_repo
from server.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = Fernet.generate_key().decode()
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # maintenance database; each session makes its own
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} did not come up within {timeout_s:.0f} s\n{tail}")


class Proc:
    """A child process started by the tests, with its log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, 15)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait(5)
        self._log_file.close()


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    tmp: Path
    db: Any

    def settings_with(self, **changes: Any) -> Settings:
        return self.settings.model_copy(update=changes)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A broker that answers, a fresh nx-27017 server, and the settings every process shares."""
    tmp = tmp_path_factory.mktemp("stack")
    tag = uuid.uuid4().hex[:8]
    mongo_port = free_port()
    env = {
        **os.environ,
        "MODELDECK_HOME": str(tmp / "home"),
        "MODELDECK_EMBEDDED_MONGO_PORT": str(mongo_port),
        "MODELDECK_MONGO_URL": "",
        "MODELDECK_MONGO_DB": f"test_{tag}",
        "MODELDECK_QUEUE_PREFIX": f"test-{tag}.",
        "MODELDECK_HEARTBEAT_INTERVAL_S": "0.5",
        # Generous: on 2 busy cores a heartbeat thread can be starved for seconds while a worker imports libraries.
        "MODELDECK_WORKER_LOST_AFTER_S": "8",
        # The suite fails authentication on purpose many times from 127.0.0.1; test_security tests the limit.
        "MODELDECK_AUTH_FAILURE_LIMIT": "100000",
        # Data sources: credentials encrypted with a per-session key; file sources under the session's data root.
        "MODELDECK_SECRET_KEY": SECRET_KEY,
        "MODELDECK_DATA_ROOTS": json.dumps([str(tmp / "data")]),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        "PYTHONUNBUFFERED": "1",
    }
    settings = Settings(
        home=tmp / "home", embedded_mongo_port=mongo_port, mongo_url="", mongo_db=f"test_{tag}",
        queue_prefix=f"test-{tag}.", heartbeat_interval_s=0.5, worker_lost_after_s=8,
        secret_key=SECRET_KEY, data_roots=(tmp / "data",),
    )
    (tmp / "data").mkdir()
    try:
        ensure_broker(settings)
    except StackError as exc:
        pytest.fail(f"RabbitMQ is needed for the tests: {exc}")
    nx = Proc(nx_command(tmp / "repository.db", mongo_port, tmp), env, tmp / "nx.log")
    wait_for(lambda: repository_answers(settings.effective_mongo_url, 200), 30, "nx-27017", tmp / "nx.log")
    client: pymongo.MongoClient = pymongo.MongoClient(settings.effective_mongo_url)
    yield Stack(settings=settings, env=env, tmp=tmp, db=client[settings.mongo_db])
    client.close()
    nx.stop()


def start_worker(stack: Stack, pool: str = "cpu", **env: str) -> Proc:
    """Start a real Celery worker process for a pool and wait for its first heartbeat."""
    log = stack.tmp / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log"
    before = {w["_id"] for w in stack.db.workers.find({"pool": pool})}
    proc = Proc([sys.executable, "-m", "runtime.worker"], {**stack.env, "MODELDECK_WORKER_POOL": pool, **env}, log)
    # A worker announces itself as "starting" before it consumes; wait until it serves.
    serving = {"pool": pool, "state": {"$in": ["idle", "busy"]}}
    wait_for(lambda: not proc.alive() or bool({w["_id"] for w in stack.db.workers.find(serving)} - before),
             60, f"worker for pool {pool}", log)
    if not proc.alive():
        pytest.fail(f"worker for pool {pool} exited:\n{log.read_text()[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[Proc]:
    proc = start_worker(stack, "cpu")
    yield proc
    proc.stop()


def start_api(stack: Stack, **env: str) -> tuple[Proc, str]:
    """Serve the API with gunicorn on an ephemeral port, as `modeldeck up` does."""
    port = free_port()
    log = stack.tmp / f"api-{port}.log"
    # No control socket: gunicorn's default (~/.gunicorn/gunicorn.ctl) is one per user, shared by every test API.
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "16",
           "--no-control-socket",
           "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "server.http.wsgi:app"]
    proc = Proc(cmd, {**stack.env, **env}, log)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if not proc.alive():
            pytest.fail(f"API exited:\n{log.read_text()[-3000:]}")
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, 60, "API", log)
    return proc, url


@pytest.fixture(scope="session")
def api_url(stack: Stack, worker: Proc) -> Iterator[str]:
    proc, url = start_api(stack)
    wait_for(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, 30, "API readiness", proc.log)
    yield url
    proc.stop()


class Client:
    """A requests session bound to the API's base URL and one credential."""

    def __init__(self, base: str, key: str | None) -> None:
        self.base = base
        self.key = key
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 60)
        return self.session.request(method, self.base + path, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def upload(self, name: str, data: bytes, fmt: str = "skops", filename: str = "model.skops",
               reference: bytes | None = None, **meta: Any) -> requests.Response:
        metadata = {"name": name, "format": fmt, "pool": "cpu", **meta}
        files: dict[str, Any] = {"file": (filename, io.BytesIO(data)), "metadata": (None, json.dumps(metadata))}
        if reference is not None:
            files["reference"] = ("reference.csv", io.BytesIO(reference))
        return self.post("/api/v1/models", files=files)


@pytest.fixture(scope="session")
def admin_key(stack: Stack) -> str:
    """The bootstrap admin key, created the way `modeldeck up` creates it."""
    _, secret = keys_repo.create_key(stack.db, "test-admin", "admin", None, None, "tests")
    return secret


@pytest.fixture(scope="session")
def admin(api_url: str, admin_key: str) -> Client:
    return Client(api_url, admin_key)


@pytest.fixture(scope="session")
def make_client(api_url: str, admin: Client) -> Any:
    """Mint a key for a role through the API and return a client that uses it."""

    def make(role: str, models: list[str] | None = None) -> Client:
        resp = admin.post("/api/v1/apikeys", json={"name": f"{role}-{uuid.uuid4().hex[:6]}", "role": role, "models": models})
        assert resp.status_code == 201, resp.text
        return Client(api_url, resp.json()["key"])

    return make


@pytest.fixture(scope="session")
def operator(make_client: Any) -> Client:
    return make_client("operator")


@pytest.fixture(scope="session")
def iris() -> tuple[LogisticRegression, Any]:
    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(X, y), X


@pytest.fixture(scope="session")
def iris_skops(iris: tuple[LogisticRegression, Any]) -> bytes:
    return sio.dumps(iris[0])


IRIS_SCHEMA = [{"name": n, "type": "number"} for n in IRIS_FEATURES]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def repository_counts(db: Any) -> dict[str, int]:
    """Count what an upload or job could leave behind."""
    return {c: db[c].count_documents({}) for c in ("models", "versions", "artifacts", "artifact_chunks", "jobs")}


@pytest.fixture(scope="session")
def tight_api(stack: Stack, worker: Proc, admin_key: str) -> Iterator[Client]:
    """A second API process with small limits, a short predict timeout and pickles enabled."""
    proc, url = start_api(stack, MODELDECK_ALLOW_PICKLE="true", MODELDECK_MAX_UPLOAD_MB="1",
                          MODELDECK_MAX_BODY_KB="16", MODELDECK_PREDICT_TIMEOUT_S="2")
    yield Client(url, admin_key)
    proc.stop()


# --------------------------------------------------------------------------------------------------------------
# A real OIDC server (tests/oidc_server.py: keycloak-mockup wrapped to act like Keycloak for the ModelDeck realm)
# --------------------------------------------------------------------------------------------------------------

REALM_FILE = ROOT / "compose" / "keycloak" / "modeldeck-realm.json"
# What Keycloak gives every user through the realm's default roles; tokens then carry aud ["modeldeck-api", "account"].
_KC_DEFAULT_REALM_ROLES = ["default-roles-modeldeck", "offline_access", "uma_authorization"]
_KC_DEFAULT_CLIENT_ROLES = {"account": ["manage-account", "manage-account-links", "view-profile"]}
OIDC_USER_ROLES = {
    "alice": ["modeldeck-admin"],
    "olga": ["modeldeck-operator"],
    "anna": ["modeldeck-analyst"],
    "sam": ["modeldeck-service"],
    "nora": [],  # only Keycloak's default roles: none that ModelDeck maps
}


@dataclass
class Oidc:
    """Handle on the session's OIDC server; tokens come from its real endpoints, signed with its published key."""

    url: str  # base URL, e.g. http://127.0.0.1:PORT (what the API's keycloak_url should be)
    realm: str
    issuer: str  # url + "/realms/modeldeck"
    passwords: dict[str, str]  # username -> password
    client_secrets: dict[str, str]  # client id -> secret (confidential clients)
    proc: Proc

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    def password_token(self, username: str, client_id: str = "modeldeck-console") -> str:
        """An access token from the password grant (allowed for modeldeck-console in the test server only)."""
        data = {"grant_type": "password", "client_id": client_id, "username": username,
                "password": self.passwords[username]}
        if client_id in self.client_secrets:
            data["client_secret"] = self.client_secrets[client_id]
        resp = requests.post(self.token_url, data=data, timeout=10)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def client_token(self) -> str:
        """An access token for modeldeck-integration's service account (client-credentials grant)."""
        resp = requests.post(self.token_url, data={"grant_type": "client_credentials"}, timeout=10,
                             auth=("modeldeck-integration", self.client_secrets["modeldeck-integration"]))
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def mint(self, username: str | None, *, client: str = "modeldeck-console", roles: list[str] | None = None,
             drop: tuple[str, ...] | list[str] = (), **overrides: Any) -> str:
        """A genuine token (the server's current key) with claims changed: mint("alice", exp=time.time() - 600).

        username None mints for the client's service account; roles replaces realm_access.roles; drop removes
        claims; every other keyword is a claim (use **{"allowed-origins": ...} for names that are not identifiers).
        Float exp / nbf / iat are rounded down, as JWT wants integer times.
        """
        claims = {k: int(v) if k in ("exp", "nbf", "iat") and isinstance(v, float) else v
                  for k, v in overrides.items()}
        resp = requests.post(self.url + "/_test/token", timeout=10, json={
            "username": username, "client_id": client, "roles": roles, "overrides": claims, "remove": list(drop)})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def rotate_key(self, keep_old: bool = True) -> str:
        """Switch to a new signing key with a new kid (certs lists it first, and the old one if keep_old); return the kid."""
        resp = requests.post(self.url + "/_test/rotate-key", json={"keep_old": keep_old}, timeout=30)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["kid"])

    def certs(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.issuer}/protocol/openid-connect/certs", timeout=10).json())


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oidc]:
    """Serve the ModelDeck realm from compose/keycloak/modeldeck-realm.json on an ephemeral port."""
    tmp = tmp_path_factory.mktemp("oidc")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    placeholders = {"MODELDECK_API_CLIENT_SECRET": uuid.uuid4().hex,
                    "MODELDECK_INTEGRATION_CLIENT_SECRET": uuid.uuid4().hex}
    passwords = {name: f"{name}-{uuid.uuid4().hex[:12]}" for name in OIDC_USER_ROLES}
    users = [{"username": name, "password": passwords[name], "realm_roles": roles + _KC_DEFAULT_REALM_ROLES,
              # sam has no account-client roles, so its tokens carry aud as the single string "modeldeck-api"
              "client_roles": {} if name == "sam" else _KC_DEFAULT_CLIENT_ROLES}
             for name, roles in OIDC_USER_ROLES.items()]
    cmd = [sys.executable, str(ROOT / "tests" / "oidc_server.py"), "--realm-file", str(REALM_FILE),
           "--port", str(port), "--base-url", url, "--secrets-json", json.dumps(placeholders),
           "--users-json", json.dumps(users), "--direct-grant", "modeldeck-console",
           # consoles under test listen on ephemeral loopback ports
           "--redirect-uri", "modeldeck-console=http://127.0.0.1:*"]
    log = tmp / "oidc.log"
    proc = Proc(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"}, log)

    def answers() -> bool:
        if not proc.alive():
            pytest.fail(f"OIDC server exited:\n{log.read_text()[-3000:]}")
        try:
            return requests.get(f"{url}/realms/modeldeck/.well-known/openid-configuration", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, 30, "OIDC server", log)
    yield Oidc(url=url, realm="modeldeck", issuer=f"{url}/realms/modeldeck", passwords=passwords,
               client_secrets={"modeldeck-api": placeholders["MODELDECK_API_CLIENT_SECRET"],
                               "modeldeck-integration": placeholders["MODELDECK_INTEGRATION_CLIENT_SECRET"]},
               proc=proc)
    proc.stop()


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL for SQL data sources: a database of the session's own, dropped at the end
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Postgres:
    url: str  # SQLAlchemy/libpq URL of the session's database
    name: str

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Create a database of this session's own on the local PostgreSQL (started if a local cluster is down)."""
    try:
        ensure_postgres(POSTGRES_URL)
    except StackError as exc:
        pytest.fail(f"PostgreSQL is needed for the data-source tests: {exc}")
    name = f"modeldeck_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield Postgres(url=POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, name=name)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
