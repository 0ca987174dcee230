"""Limit failed authentications per client address (per API process)."""

from __future__ import annotations

import threading
import time
from collections import deque

from server.core.errors import TooManyRequestsError


class FailureLimiter:
    """Refuse an address with 429 once it failed authentication `limit` times within `window_s`."""

    def __init__(self, limit: int, window_s: float, max_addresses: int = 100000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(address, None)
        return times

    def check(self, address: str) -> None:
        """Raise 429 if the address is over its failure budget."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(address, now)
            if len(times) >= self.limit:
                retry = max(1, int(self.window_s - (now - times[0])) + 1)
                raise TooManyRequestsError(
                    f"too many failed sign-ins from {address}; retry in {retry} s", {"retry_after_s": retry})

    def fail(self, address: str) -> None:
        """Count one failed authentication."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_addresses:
                self._failures.clear()
            self._recent(address, now)
            self._failures.setdefault(address, deque()).append(now)
