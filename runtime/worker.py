"""Entry point of a worker process: ``python -m runtime.worker`` serves the pool in MODELDECK_WORKER_POOL."""

from __future__ import annotations

import logging
import os
import sys
import threading

from celery import signals
from pymongo.errors import PyMongoError

from runtime.celery_app import create_celery
from runtime.environment import detect_gpus
from runtime.heartbeat import Heartbeat
from runtime.loader import preload_libraries
from runtime.state import init_state
from server.core.crypto import check_key_present
from server.core.datasources_repo import count_datasources
from server.core.settings import SettingsError, settings_or_exit

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Start a Celery worker for one pool, with heartbeats."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Celery logs each task's return value at INFO; predictions must never reach the logs.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # "Task received" lines cost ~8% of a warm prediction's worker time and say nothing useful per request.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    settings = settings_or_exit()
    if settings.worker_pool in settings.gpu_pools and not detect_gpus():
        print(f"pool '{settings.worker_pool}' needs an NVIDIA GPU and NVML finds none on this machine; "
              "refusing to start, so GPU models never run on CPU. Run this worker on a GPU host (with the NVIDIA "
              "driver and nvidia-ml-py), or serve a CPU pool with MODELDECK_WORKER_POOL=cpu", file=sys.stderr)
        return 3
    app = create_celery(settings)
    try:
        state = init_state(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        check_key_present(settings, count_datasources(state.db))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except PyMongoError as exc:
        # The repository may come up after the worker; a job then fails with the key error if there is none.
        logger.warning("could not check for data sources at start (%s)", type(exc).__name__)
    heartbeat = Heartbeat(state)
    heartbeat.announce()

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        # Import the model libraries after the worker consumes: a new worker takes work seconds sooner
        # (what scale-up waits for), and a model that needs them waits on the import only once.
        threading.Thread(target=preload_libraries, name="modeldeck-preload", daemon=True).start()
        heartbeat.start()
        logger.info("worker %s serving pool %s", heartbeat.worker_id, settings.worker_pool)

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_: object) -> None:
        heartbeat.stopping()

    @signals.worker_shutdown.connect(weak=False)
    def _stopped(**_: object) -> None:
        heartbeat.stop()

    pool = settings.worker_pool
    args = [
        "worker",
        "--queues", settings.queue_name(pool),
        "--pool", "threads",
        "--concurrency", str(settings.worker_concurrency),
        "--hostname", f"{pool}@%h-{os.getpid()}",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]
    app.worker_main(args + list(argv or []))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
