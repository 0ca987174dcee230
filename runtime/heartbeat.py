"""Publish this worker's liveness, resources and cached models to the repository."""

from __future__ import annotations

import logging
import os
import socket
import threading

import psutil

from runtime.state import WorkerState
from server.core import workers_repo
from server.core.clock import now_iso

logger = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that records a heartbeat every interval until stopped."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.worker_id = f"{state.settings.worker_pool}@{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modeldeck-heartbeat", daemon=True)
        self._process = psutil.Process()
        self._started = now_iso()

    def start(self) -> None:
        """Start beating."""
        self._process.cpu_percent(None)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this worker from the live set."""
        self._stop.set()
        try:
            workers_repo.remove_worker(self.state.db, self.worker_id)
        except Exception:  # the repository may already be gone at shutdown
            logger.warning("could not remove worker %s from the repository", self.worker_id)

    def beat(self) -> None:
        """Record one heartbeat."""
        s = self.state
        workers_repo.record_heartbeat(
            s.db,
            self.worker_id,
            {
                "pool": s.settings.worker_pool,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "state": "busy" if s.busy else "idle",
                "concurrency": s.settings.worker_concurrency,
                "busy": s.busy,
                "cpu_percent": self._process.cpu_percent(None),
                "memory_mb": round(self._process.memory_info().rss / 2**20, 1),
                "gpus": [],
                "models": s.cache.snapshot(),
                "cache_hits": s.cache.hits,
                "cache_misses": s.cache.misses,
                "started_at": self._started,
            },
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as exc:  # keep beating through repository outages
                logger.warning("heartbeat failed: %s", exc)
            self._stop.wait(self.state.settings.heartbeat_interval_s)
