"""Per-process worker state: settings, repository handle, model cache, busy counter."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pymongo.database import Database

from runtime.cache import ModelCache
from runtime.environment import apply_memory_limit
from server.core.audit_repo import AuditKeys, audit_keys
from server.core.db import connect
from server.core.settings import Settings


@dataclass
class WorkerState:
    settings: Settings
    db: Database
    cache: ModelCache
    audit_keys: AuditKeys
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_state: WorkerState | None = None


def init_state(settings: Settings) -> WorkerState:
    """Create this process's state once."""
    global _state
    if _state is None:
        # Before the model cache fills: a model that allocates without bound must hit this process's limit.
        apply_memory_limit(settings.worker_memory_limit_mb)
        cache = ModelCache(settings.model_cache_size, settings.model_cache_mb * 2**20, _device_bytes(settings))
        # Jobs' audit entries are signed here too; without a key the worker refuses to start (SettingsError).
        _state = WorkerState(settings=settings, db=connect(settings), cache=cache, audit_keys=audit_keys(settings))
    return _state


def _device_bytes(settings: Settings) -> int | None:
    """Return the GPU memory cached models may hold: the setting, else 90% of the first GPU's; None off CUDA."""
    if not settings.device_for(settings.worker_pool).startswith("cuda"):
        return None
    if settings.model_cache_gpu_mb:
        return settings.model_cache_gpu_mb * 2**20
    from runtime.environment import detect_gpus

    gpus = detect_gpus()
    return int(gpus[0]["memory_total_mb"] * 0.9 * 2**20) if gpus else None


def get_state() -> WorkerState:
    """Return this process's state; init_state must have run."""
    if _state is None:
        raise RuntimeError("worker state used before init_state")
    return _state
