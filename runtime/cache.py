"""A bounded, thread-safe cache of loaded models keyed by artifact sha256."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

from runtime.loader import LoadedModel


class ModelCache:
    """Keep the most recently used models loaded; load each one once even under concurrency.

    Bounded three times: at most ``capacity`` models, at most ``max_bytes`` of RAM and at most
    ``max_device_bytes`` of GPU memory. A model's RAM is measured after its load (``LoadedModel.cost``: at least
    its artifact's size); its GPU memory is what its tensors hold on the device. The model just loaded always
    stays, even alone over a bound: it is about to answer. A model known before its load to need more than a
    bound (``refuses``) is not loaded at all.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None, max_device_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_device_bytes = max_device_bytes
        self.bytes = 0
        self.device_bytes = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._models

    def refuses(self, needs_bytes: int, device_bytes: int = 0) -> str:
        """Say why a model needing needs_bytes of RAM (or device_bytes of GPU memory) cannot be held, else ''."""
        if self.max_device_bytes is not None and device_bytes > self.max_device_bytes:
            return (f"its weights need {device_bytes / 2**20:.1f} MiB of GPU memory and this worker's model cache holds "
                    f"at most {self.max_device_bytes / 2**20:.1f} MiB there (MODELDECK_MODEL_CACHE_GPU_MB); serve it "
                    "from a pool whose GPUs have more memory")
        if self.max_bytes is not None and needs_bytes > self.max_bytes and not device_bytes:
            return (f"its weights need {needs_bytes / 2**20:.1f} MiB and this worker's model cache holds at most "
                    f"{self.max_bytes / 2**20:.1f} MiB (MODELDECK_MODEL_CACHE_MB); serve it from a pool whose workers "
                    "have more memory")
        return ""

    def _over(self) -> bool:
        return (len(self._models) > self.capacity
                or (self.max_bytes is not None and self.bytes > self.max_bytes)
                or (self.max_device_bytes is not None and self.device_bytes > self.max_device_bytes))

    def get(self, sha256: str, load: Callable[[], LoadedModel]) -> tuple[LoadedModel, bool]:
        """Return the model and whether it had to be loaded (a cold start)."""
        with self._lock:
            model = self._models.get(sha256)
            if model is not None:
                self._models.move_to_end(sha256)
                self.hits += 1
                return model, False
            loading = self._loading.setdefault(sha256, threading.Lock())
        with loading:
            with self._lock:
                model = self._models.get(sha256)
                if model is not None:
                    self.hits += 1
                    return model, False
            model = load()
            with self._lock:
                self.misses += 1
                self._models[sha256] = model
                self.bytes += model.cost
                self.device_bytes += model.device_memory
                freed_device = False
                while len(self._models) > 1 and self._over():
                    _, evicted = self._models.popitem(last=False)
                    self.bytes -= evicted.cost
                    self.device_bytes -= evicted.device_memory
                    freed_device = freed_device or evicted.device_memory > 0
                self._loading.pop(sha256, None)
            if freed_device:
                _release_device_memory()
            return model, True

    def snapshot(self) -> list[str]:
        """Return the cached artifacts' sha256, most recent last."""
        with self._lock:
            return list(self._models)

    def details(self) -> list[dict[str, Any]]:
        """Return each cached model's memory, most recent last, for the heartbeat."""
        with self._lock:
            return [{"sha256": m.sha256, "format": m.fmt, "device": m.device,
                     "memory_mb": round(m.cost / 2**20, 1), "device_memory_mb": round(m.device_memory / 2**20, 1),
                     **({"runtime": m.text.runtime, "batching": m.text.batcher.stats.as_dict()}
                        if m.text is not None else {})}
                    for m in self._models.values()]


def _release_device_memory() -> None:
    """Hand an evicted model's CUDA blocks back to the device, so NVML and the next load see them free."""
    import gc
    import sys

    torch = sys.modules.get("torch")  # device memory is only ever held through a torch already imported
    gc.collect()
    if torch is not None:
        torch.cuda.empty_cache()
