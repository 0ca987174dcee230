"""A per-process read cache of API keys and version resolutions, kept honest by broadcast events.

Every API process subscribes to a fanout exchange; a process that changes a key, an alias
or a model's versions broadcasts what changed and every process drops those entries.
The cache is used only while the event stream is connected: a process that lost the
broker reads through to the repository and starts empty when it reconnects, because it
may have missed events. A generation counter keeps a load that raced an invalidation
from storing a stale value.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable

_MISSING = object()


class RepoCache:
    """Cache entries by (kind, name, detail) for at most ttl_s, while `live()` says events flow."""

    def __init__(self, live: Callable[[], bool], ttl_s: float = 30.0, max_entries: int = 10000) -> None:
        self._live = live
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[tuple[str, str], dict[Hashable, tuple[float, Any]]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, kind: str, name: str, detail: Hashable, load: Callable[[], Any]) -> Any:
        """Return the cached value or load it (a load that raises is not cached)."""
        if not self._live():
            return load()
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get((kind, name), {}).get(detail, _MISSING)
            generation = self._generation
        if hit is not _MISSING:
            stamp, value = hit  # type: ignore[misc]
            if now - stamp < self._ttl:
                return value
        value = load()
        with self._lock:
            if generation == self._generation and self._live():
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries.setdefault((kind, name), {})[detail] = (now, value)
        return value

    def invalidate(self, kind: str, name: str) -> None:
        """Drop every entry of one (kind, name)."""
        with self._lock:
            self._generation += 1
            self._entries.pop((kind, name), None)

    def clear(self) -> None:
        """Drop everything (after a reconnect, when events may have been missed)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def on_event(self, event: dict[str, Any]) -> None:
        """Apply a broadcast change event."""
        kind, name = event.get("kind"), event.get("name")
        if isinstance(kind, str) and isinstance(name, str):
            self.invalidate(kind, name)
