"""WSGI entry point for gunicorn: ``gunicorn server.http.wsgi:app`` (one app per worker process)."""

from __future__ import annotations

import gc
import logging

from server.http.access_log import API_LOG_FORMAT
from server.http.app import create_app
from server.core.settings import load_settings

logging.basicConfig(level=logging.INFO, format=API_LOG_FORMAT)
app = create_app(load_settings())
# What this API process built at start lives as long as it does: frozen, the collector's full passes walk only
# what requests leave behind. Without it the preloaded upload libraries doubled the heap each pass walks
# (docs/performance.md).
gc.freeze()
