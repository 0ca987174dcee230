"""WSGI entry point for gunicorn: ``gunicorn server.http.wsgi:app`` (one app per worker process)."""

from __future__ import annotations

import logging

from server.http.app import create_app
from server.core.settings import load_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s")
app = create_app(load_settings())
