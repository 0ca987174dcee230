"""Entry point of a worker process: ``python -m runtime.worker`` serves the pool in MODELDECK_WORKER_POOL."""

from __future__ import annotations

import logging
import os
import sys

from celery import signals

from runtime.celery_app import create_celery
from runtime.heartbeat import Heartbeat
from runtime.loader import preload_libraries
from runtime.state import init_state
from server.core.settings import SettingsError, load_settings

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Start a Celery worker for one pool, with heartbeats."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Celery logs each task's return value at INFO; predictions must never reach the logs.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # "Task received" lines cost ~8% of a warm prediction's worker time and say nothing useful per request.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    app = create_celery(settings)
    preload_libraries()
    state = init_state(settings)
    heartbeat = Heartbeat(state)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        heartbeat.start()
        logger.info("worker %s serving pool %s", heartbeat.worker_id, settings.worker_pool)

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_: object) -> None:
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
