"""A bounded, thread-safe cache of loaded models keyed by artifact sha256."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from runtime.loader import LoadedModel


class ModelCache:
    """Keep the most recently used models loaded; load each one once even under concurrency.

    Bounded twice: at most ``capacity`` models and at most ``max_bytes`` of their artifacts (the measure
    of a model's memory that is known before it is used). The model just loaded always stays, even alone
    over the byte bound: it is about to answer.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

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
                self.bytes += model.size
                while len(self._models) > 1 and (len(self._models) > self.capacity or
                                                 (self.max_bytes is not None and self.bytes > self.max_bytes)):
                    _, evicted = self._models.popitem(last=False)
                    self.bytes -= evicted.size
                self._loading.pop(sha256, None)
            return model, True

    def snapshot(self) -> list[str]:
        """Return the cached artifacts' sha256, most recent last."""
        with self._lock:
            return list(self._models)
