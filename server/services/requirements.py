"""Model requirements (pip strings) checked against the Python environments live workers report."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from server.services.context import Context
from server.core import workers_repo
from server.core.errors import InvalidInputError, UnavailableError
from server.core.models_repo import VersionDoc

_CACHE_S = 1.0
# What a format needs in its pool's environment whatever the upload's own requirements say.
IMPLIED = {"huggingface": ["torch", "transformers"]}
IMPLIED_BY_TASK = {"embedding": ["sentence-transformers"]}
_cache: dict[str, tuple[float, list[dict[str, str]]]] = {}
_lock = threading.Lock()


def parse_requirements(strings: list[str]) -> list[Requirement]:
    """Parse pip requirement strings, naming the first one that is not valid."""
    parsed = []
    for index, text in enumerate(strings):
        try:
            parsed.append(Requirement(text))
        except InvalidRequirement as exc:
            raise InvalidInputError(
                f"metadata field 'requirements', item {index}: {text!r} is not a pip requirement "
                f"(expected e.g. 'scikit-learn>=1.5,<1.6'): {exc}",
                {"field": "requirements", "value": text},
            ) from exc
    return parsed


@functools.lru_cache(maxsize=1024)
def _requirement(text: str) -> Requirement:
    """Parse a requirement a stored version already passed at upload (parsed once per API process)."""
    return Requirement(text)


def satisfies(environment: dict[str, str], req: Requirement) -> bool:
    """Tell whether an environment (canonical package name to version, see _canonical) has a version req accepts."""
    installed = environment.get(canonicalize_name(req.name))
    if installed is None:
        return False
    try:
        return req.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        return False


def _canonical(environment: dict[str, str]) -> dict[str, str]:
    """Key a worker's reported environment by canonical package name, so a lookup is one dict access."""
    return {canonicalize_name(name): version for name, version in environment.items()}


def _pool_environments(ctx: Context, pool: str) -> list[dict[str, str]]:
    """Return the environments of the pool's live workers, cached for a second per API process."""
    now = time.monotonic()
    with _lock:
        hit = _cache.get(pool)
        if hit and now - hit[0] < _CACHE_S:
            return hit[1]
    envs = [_canonical(w.get("environment") or {})
            for w in workers_repo.live_workers(ctx.db, ctx.settings.worker_lost_after_s, pool)]
    with _lock:
        _cache[pool] = (now, envs)
    return envs


def describe_pool(envs: list[dict[str, str]], req: Requirement) -> str:
    """Say which versions of req's package a pool's workers have."""
    wanted = canonicalize_name(req.name)
    found = sorted({env[wanted] for env in envs if wanted in env})
    return ", ".join(found) if found else f"no {req.name} installed"


def check_requirements(ctx: Context, doc: VersionDoc) -> None:
    """Refuse a model none of whose pool's live workers satisfies all its requirements, naming what is missing."""
    strings: list[str] = list(doc.get("requirements") or [])
    strings += IMPLIED.get(doc.get("format", ""), []) + IMPLIED_BY_TASK.get(doc.get("task", ""), [])
    if not strings:
        return
    reqs = [_requirement(s) for s in strings]
    pool = doc["pool"]
    envs = _pool_environments(ctx, pool)
    if not envs or any(all(satisfies(env, r) for r in reqs) for env in envs):
        # No live worker at all is check_pool's error, not ours.
        return
    # Name a requirement no worker meets; if each is met somewhere but never all on one worker, the first worker's gap.
    unmet = next((r for r in reqs if not any(satisfies(env, r) for env in envs)),
                 next(r for r in reqs if not satisfies(envs[0], r)))
    details: dict[str, Any] = {"pool": pool, "requirement": str(unmet), "requirements": strings}
    raise UnavailableError(
        f"model '{doc['name']}' version {doc['version']} needs {unmet}; pool {pool} has {describe_pool(envs, unmet)}. "
        f"Serve the pool from an environment that has it (see docs/runtime.md) or upload the model to a pool that does",
        details,
    )
