"""What every view needs, built once per API process by create_app."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pymongo.database import Database

from server.services.auth import Authenticator
from server.services.cache import RepoCache
from server.services.ratelimit import FailureLimiter
from server.core import workers_repo
from server.core.audit_repo import AuditKeys
from server.core.settings import Settings
from server.services.metrics import MetricsRecorder
from server.transport.router import Router


logger = logging.getLogger(__name__)

CACHE_TTL_S = 10.0


class PoolLiveness:
    """Which pools have live workers, from heartbeats, refreshed at most once a second."""

    def __init__(self, db: Database, lost_after_s: float) -> None:
        self.db = db
        self.lost_after_s = lost_after_s
        self._cache: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()

    def live_counts(self, fresh: bool = False) -> dict[str, int]:
        """Return the number of live workers per pool (at most a second old unless fresh)."""
        now = time.monotonic()
        with self._lock:
            stamp, counts = self._cache
            if now - stamp < 1.0 and not fresh:
                return counts
        counts = {}
        for worker in workers_repo.live_workers(self.db, self.lost_after_s):
            counts[worker["pool"]] = counts.get(worker["pool"], 0) + 1
        with self._lock:
            self._cache = (now, counts)
        return counts


@dataclass
class Context:
    settings: Settings
    db: Database
    router: Router
    auth: Authenticator
    liveness: PoolLiveness
    cache: RepoCache
    limiter: FailureLimiter
    audit_keys: AuditKeys
    metrics: MetricsRecorder | None = None

    def changed(self, kind: str, name: str) -> None:
        """Tell every API process (this one at once) that a key or a model's versions changed."""
        self.cache.invalidate(kind, name)
        if not self.router.broadcast({"kind": kind, "name": name}):
            logger.warning("could not broadcast a change of %s %s; other API processes may serve it for up to %s s",
                           kind, name, CACHE_TTL_S)
