"""Base images for the smoke: pulled where a registry answers, else built from Debian's packages and cached."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from installer.smoke.engine import Engine, SmokeError, run_command

SMOKE_DIR = Path(__file__).resolve().parents[2] / "compose" / "smoke"
DEBIAN_IMAGE = "modeldeck-smoke/debian:bookworm"
PYTHON_IMAGE = "modeldeck-smoke/python"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BaseImages:
    """What the Dockerfiles' PYTHON_IMAGE and DEBIAN_IMAGE build arguments name, and how each was had."""

    debian: str
    python: str
    how: str


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """Return the Debian mirror this machine's apt uses for bookworm (deb822 .sources or sources.list)."""
    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) + [apt_dir / "sources.list"]
    for path in files:
        text = path.read_text() if path.exists() else ""
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, flags=re.MULTILINE)
            if uris and re.search(r"^Suites:.*\bbookworm\b(?!-)", stanza, flags=re.MULTILINE):
                return uris.group(1)
        line = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, flags=re.MULTILINE)
        if line:
            return line.group(1)
    return DEFAULT_MIRROR


def host_ca_bundle() -> Path:
    """Return the CA certificates the host's pip trusts (pip inside a build must trust the same proxy or CA)."""
    candidates = [os.environ.get("PIP_CERT"), _pip_config_cert(), os.environ.get("SSL_CERT_FILE"),
                  "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi  # requests' bundle, which is what pip would use without any setting

    return Path(certifi.where())


def _pip_config_cert() -> str | None:
    try:
        out = subprocess.run(["pip", "config", "get", "global.cert"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def debootstrap_image(engine: Engine, cache: Path) -> None:
    """Build DEBIAN_IMAGE: a minbase bookworm root file system from the apt mirror, imported as an image."""
    mirror = apt_mirror()
    print(f"  debootstrap --variant=minbase bookworm from {mirror} ...", flush=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    try:
        run_command(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], dict(os.environ), 900)
        # Keep the image small and reproducible: no apt lists or caches.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([engine.cli, "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, env=engine.env,
                                  capture_output=True, text=True, timeout=600)
        tar.wait(60)
        if imported.returncode != 0 or tar.returncode != 0:
            raise SmokeError(f"importing the debootstrap root file system failed: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def python_image(engine: Engine, debian: str) -> str:
    """Build (once per Dockerfile and CA bundle) the stand-in for python:3.11-slim-bookworm; return its name."""
    dockerfile = (SMOKE_DIR / "python.Dockerfile").read_bytes()
    ca = host_ca_bundle().read_bytes()
    name = f"{PYTHON_IMAGE}:3.11-{hashlib.sha256(dockerfile + ca + debian.encode()).hexdigest()[:12]}"
    if engine.image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="modeldeck-smoke-python-") as context:
        shutil.copy(SMOKE_DIR / "python.Dockerfile", Path(context) / "Dockerfile")
        (Path(context) / "host-ca.pem").write_bytes(ca)
        engine.run(["build", "-t", name, "--build-arg", f"DEBIAN_IMAGE={debian}", context], 900)
    return name


def ensure_base_images(engine: Engine, cache: Path) -> BaseImages:
    """Return base images for the builds, from the engine's store (cached) or built from Debian's packages."""
    how = "cached"
    if not engine.image_exists(DEBIAN_IMAGE):
        if engine.kind == "docker" and _pulled(engine, "debian:bookworm", DEBIAN_IMAGE):
            how = "pulled debian:bookworm"
        else:
            debootstrap_image(engine, cache)
            how = "built with debootstrap"
    python = python_image(engine, DEBIAN_IMAGE)
    return BaseImages(DEBIAN_IMAGE, python, how)


def _pulled(engine: Engine, remote: str, local: str) -> bool:
    """Pull an image and tag it as ours; tell whether that worked (no registry may be reachable)."""
    if engine.run(["pull", remote], 300, check=False).returncode != 0:
        return False
    return engine.run(["tag", remote, local], 60, check=False).returncode == 0
