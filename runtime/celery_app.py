"""Build the Celery application for one worker pool."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from server.core.settings import Settings


def create_celery(settings: Settings) -> Celery:
    """Create and configure the Celery app: JSON only, one queue per pool, replies over rpc://."""
    app = Celery("modeldeck", broker=settings.broker_url, backend="rpc://", set_as_current=True)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[Queue(settings.queue_name(settings.worker_pool), routing_key=settings.queue_name(settings.worker_pool))],
        task_default_queue=settings.queue_name(settings.worker_pool),
        worker_prefetch_multiplier=1,
        # Reconnect quickly after a broker outage instead of backing off to 30 s.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=10,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        result_expires=settings.job_result_ttl_s,
    )
    app.conf.modeldeck_settings = settings
    app.autodiscover_tasks(["runtime"], related_name="tasks", force=True)
    return app
