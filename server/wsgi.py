"""WSGI entry point for gunicorn: ``gunicorn server.wsgi:app`` (one app per worker process)."""

from __future__ import annotations

import logging

from server.app import create_app
from server.core.settings import load_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s")
# pika notes every channel it opens and closes at INFO: the queue-depth samples alone wrote 24 lines a minute.
logging.getLogger("pika").setLevel(logging.WARNING)
app = create_app(load_settings())
