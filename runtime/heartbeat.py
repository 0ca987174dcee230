"""Publish this worker's liveness, resources and cached models to the repository."""

from __future__ import annotations

import logging
import os
import socket
import threading

import psutil

from runtime.environment import detect_gpus, python_environment
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
        self._environment = python_environment()
        self._lock = threading.Lock()
        self._phase = "starting"

    def announce(self) -> None:
        """Record a first heartbeat in state "starting", before the worker consumes."""
        self._process.cpu_percent(None)
        try:
            self.beat()
        except Exception as exc:  # the worker can still start; the loop will retry
            logger.warning("heartbeat failed: %s", exc)

    def start(self) -> None:
        """Start beating: the worker is consuming."""
        self._phase = "running"
        self._thread.start()

    def stopping(self) -> None:
        """Report a warm shutdown: running tasks finish, nothing new is taken; beats go on until stop."""
        with self._lock:
            self._phase = "stopping"
            try:
                self.beat()
            except Exception as exc:  # shutdown goes on without the report
                logger.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        """Stop beating and remove this worker from the repository."""
        self._stop.set()
        with self._lock:
            pass  # let a beat in progress finish, so it cannot re-create the document below
        try:
            workers_repo.remove_worker(self.state.db, self.worker_id)
        except Exception:  # the repository may already be gone at shutdown
            logger.warning("could not remove worker %s from the repository", self.worker_id)

    def beat(self) -> None:
        """Record one heartbeat."""
        s = self.state
        state = self._phase if self._phase != "running" else ("busy" if s.busy else "idle")
        workers_repo.record_heartbeat(
            s.db,
            self.worker_id,
            {
                "pool": s.settings.worker_pool,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "state": state,
                "concurrency": s.settings.worker_concurrency,
                "busy": s.busy,
                "cpu_percent": self._process.cpu_percent(None),
                "memory_mb": round(self._process.memory_info().rss / 2**20, 1),
                "gpus": detect_gpus(),
                "environment": self._environment,
                "models": s.cache.snapshot(),
                # Each cached model's memory (RAM measured after its load, GPU memory of its tensors) and, for
                # text models, its batching counters.
                "cached_models": s.cache.details(),
                "cache_hits": s.cache.hits,
                "cache_misses": s.cache.misses,
                "started_at": self._started,
            },
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self.beat()
            except Exception as exc:  # keep beating through repository outages
                logger.warning("heartbeat failed: %s", exc)
            self._stop.wait(self.state.settings.heartbeat_interval_s)
