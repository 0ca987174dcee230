"""What a worker can offer models: installed package versions and NVIDIA GPUs."""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

logger = logging.getLogger(__name__)

# Packages models commonly pin; a model's requirements are checked against these (and any it names).
REPORTED_PACKAGES = (
    "scikit-learn", "numpy", "scipy", "pandas", "onnxruntime", "onnx", "skops", "joblib",
    "torch", "xgboost", "lightgbm", "transformers", "sentence-transformers", "tokenizers", "safetensors",
)


def python_environment(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Return the installed versions of the reported packages (absent ones are left out) and Python's."""
    env = {"python": platform.python_version()}
    for name in (*REPORTED_PACKAGES, *extra):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            continue
    return env


def detect_gpus() -> list[dict[str, Any]]:
    """Return the NVIDIA GPUs NVML sees, with memory and utilisation; [] without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_total_mb": round(memory.total / 2**20, 1),
                "memory_used_mb": round(memory.used / 2**20, 1),
                "utilization_percent": float(util.gpu),
            })
        return gpus
    except pynvml.NVMLError as exc:
        logger.warning("could not read GPUs through NVML: %s", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def apply_memory_limit(limit_mb: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at limit_mb; 0 leaves it unlimited.

    A model that allocates without bound then meets a MemoryError in its own thread, which is answered as
    that model's error, instead of the kernel's OOM killer taking the whole worker (or the host).
    """
    if limit_mb <= 0:
        return
    import resource

    limit = limit_mb * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    logger.info("address space limited to %d MB (MODELDECK_WORKER_MEMORY_LIMIT_MB)", limit // (1024 * 1024))
