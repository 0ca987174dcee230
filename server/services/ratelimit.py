"""Limit failed authentications per client address, across every API process (the repository is the shared store)."""

from __future__ import annotations

import logging
import math
import threading
import time

from pymongo.database import Database
from pymongo.errors import PyMongoError

from server.core import authfail_repo
from server.core.errors import TooManyRequestsError

logger = logging.getLogger(__name__)

REFRESH_S = 1.0  # how stale this process's copy of the blocked addresses may be (another process's block)
PURGE_EVERY_S = 30.0
_BUCKETS_PER_WINDOW = 6  # failures are counted in buckets of window/6: the window slides in those steps


class FailureLimiter:
    """Refuse an address with 429 once it failed authentication `limit` times within `window_s`, in any process.

    Only failed authentications count (each one is recorded in the repository). The address that crosses the
    limit is blocked for one window from its last failure: at once in the process that saw it, and in every
    other API process within REFRESH_S, when it next reads the blocks. Each address expires on its own.
    """

    def __init__(self, db: Database, limit: int, window_s: float) -> None:
        self.db = db
        self.limit = limit
        self.window_s = window_s
        self._blocked: dict[str, float] = {}
        self._read_at = -math.inf
        self._purged_at = time.time()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise 429 if the address is blocked (as this process last read the blocks, at most REFRESH_S ago)."""
        now = time.time()
        if now - self._read_at > REFRESH_S:
            self._refresh(now)
        until = self._blocked.get(address)
        if until is not None and until > now:
            retry = max(1, math.ceil(until - now))
            raise TooManyRequestsError(
                f"too many failed sign-ins from {address}; retry in {retry} s", {"retry_after_s": retry})

    def _refresh(self, now: float) -> None:
        with self._lock:
            if now - self._read_at <= REFRESH_S:
                return  # another thread of this process just read them
            self._read_at = now
        try:
            blocked = authfail_repo.active_blocks(self.db, now)
            if now - self._purged_at > PURGE_EVERY_S:
                self._purged_at = now
                authfail_repo.purge(self.db, now, self.window_s)
        except PyMongoError:  # the repository is away: keep the last copy; the request itself will say so
            logger.warning("could not read the failed sign-in blocks; using the copy from %.0f s ago", now - self._read_at)
            return
        self._blocked = blocked

    def fail(self, address: str) -> None:
        """Count one failed authentication; block the address once it reaches the limit."""
        now = time.time()
        count = authfail_repo.record_failure(self.db, address, now, self.window_s / _BUCKETS_PER_WINDOW, self.window_s)
        if count >= self.limit:
            until = now + self.window_s
            authfail_repo.block(self.db, address, until)
            with self._lock:
                self._blocked = {**self._blocked, address: until}
