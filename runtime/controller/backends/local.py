"""Run a pool's workers as `python -m runtime.worker` processes on this host, supervised with psutil."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
FIRST_BACKOFF_S = 1.0


@dataclass
class WorkerProcess:
    """One worker process and its restart history."""

    pool: str
    slot: int
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None  # set while a crashed worker waits for its restart


class LocalBackend:
    """Start, stop and restart worker processes per pool."""

    def __init__(self, env: dict[str, str], log_dir: Path, stop_timeout_s: float = 60.0, backoff_max_s: float = 30.0) -> None:
        self.env = env
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.backoff_max_s = backoff_max_s
        self._workers: dict[str, list[WorkerProcess]] = {}
        self._stopping: list[tuple[WorkerProcess, float]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, pool: str, slot: int) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{pool}-{slot}.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            # Its own session: a signal meant for the controller's group never reaches the workers.
            return subprocess.Popen([sys.executable, "-m", "runtime.worker"], env={**self.env, "MODELDECK_WORKER_POOL": pool},
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()

    def replicas(self, pool: str) -> int:
        """Return the workers running or waiting for a restart in a pool (not those stopping)."""
        return len(self._workers.get(pool, []))

    def pids(self, pool: str) -> list[int]:
        """Return the pids of a pool's running workers."""
        return [w.popen.pid for w in self._workers.get(pool, []) if w.popen.poll() is None]

    def scale(self, pool: str, replicas: int) -> None:
        """Start or gracefully stop workers until the pool runs `replicas`."""
        workers = self._workers.setdefault(pool, [])
        while len(workers) < replicas:
            slot = max((w.slot for w in workers), default=-1) + 1
            workers.append(WorkerProcess(pool, slot, self._spawn(pool, slot)))
            logger.info("pool %s: started worker %d (pid %d)", pool, slot, workers[-1].popen.pid)
        while len(workers) > replicas:
            # The newest worker goes first: the older ones have warm model caches.
            worker = workers.pop()
            self._terminate(worker)

    def _terminate(self, worker: WorkerProcess) -> None:
        if worker.popen.poll() is None:
            # SIGTERM is Celery's warm shutdown: the running tasks finish, unstarted ones go back to the queue.
            worker.popen.send_signal(signal.SIGTERM)
            self._stopping.append((worker, time.monotonic() + self.stop_timeout_s))
            logger.info("pool %s: stopping worker %d (pid %d)", worker.pool, worker.slot, worker.popen.pid)

    def supervise(self) -> list[str]:
        """Restart crashed workers with exponential backoff; kill stopping ones past their timeout."""
        events = []
        now = time.monotonic()
        for pool, workers in self._workers.items():
            for worker in workers:
                code = worker.popen.poll()
                if code is None:
                    if now - worker.started > 60:
                        worker.backoff_s = FIRST_BACKOFF_S  # a minute up: forget earlier crashes
                    continue
                if worker.restart_at is None:
                    worker.restart_at = now + worker.backoff_s
                    events.append(f"pool {pool}: worker {worker.slot} (pid {worker.popen.pid}) exited with code {code}; "
                                  f"restarting in {worker.backoff_s:.0f} s")
                    logger.warning(events[-1])
                elif now >= worker.restart_at:
                    worker.popen = self._spawn(pool, worker.slot)
                    worker.started, worker.restart_at = now, None
                    worker.restarts += 1
                    worker.backoff_s = min(self.backoff_max_s, worker.backoff_s * 2)
                    logger.info("pool %s: restarted worker %d (pid %d)", pool, worker.slot, worker.popen.pid)
        still = []
        for worker, deadline in self._stopping:
            if worker.popen.poll() is not None:
                continue
            if now > deadline:
                logger.warning("pool %s: worker pid %d ignored SIGTERM for %.0f s; killing it",
                               worker.pool, worker.popen.pid, self.stop_timeout_s)
                self._kill_tree(worker.popen.pid)
                continue
            still.append((worker, deadline))
        self._stopping = still
        return events

    def restarts(self, pool: str) -> int:
        """Return how many times a pool's workers were restarted after crashing."""
        return sum(w.restarts for w in self._workers.get(pool, []))

    @staticmethod
    def _kill_tree(pid: int) -> None:
        try:
            for proc in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                proc.kill()
        except psutil.Error:
            pass

    def close(self) -> None:
        """Stop every worker gracefully, waiting up to the stop timeout."""
        for pool in list(self._workers):
            self.scale(pool, 0)
        deadline = time.monotonic() + self.stop_timeout_s
        while self._stopping and time.monotonic() < deadline:
            self.supervise()
            time.sleep(0.1)
        for worker, _ in self._stopping:
            self._kill_tree(worker.popen.pid)
        for worker, _ in self._stopping:
            try:
                worker.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._stopping = []
