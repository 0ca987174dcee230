"""Import the upload checks' libraries in the background as an API process starts, so its first upload is fast."""

from __future__ import annotations

import gc
import importlib
import logging
import threading
import time
from typing import TypedDict

from server.core.formats import CHECK_MODULES
from server.core.lean_imports import import_skops_io

logger = logging.getLogger(__name__)

_done = threading.Event()
_started = threading.Lock()
_error: str | None = None


class PreloadState(TypedDict, total=False):
    ok: bool
    error: str


def _import_all() -> None:
    global _error
    began = time.perf_counter()
    try:
        for name in CHECK_MODULES:
            # skops.io through lean_imports: a plain import pulls torch in where torch is installed.
            import_skops_io() if name == "skops.io" else importlib.import_module(name)
        logger.info("upload check libraries imported in %.1f s", time.perf_counter() - began)
    except Exception as exc:  # a broken library must not keep the API unready; its upload will say what is wrong
        _error = f"{type(exc).__name__}: {exc}"
        logger.warning("importing the upload check libraries failed (%s); uploads will import them again", _error)
    finally:
        # The libraries stay for the process's life: out of the collector's sight (see server/http/wsgi.py).
        gc.freeze()
        _done.set()


def start(enabled: bool) -> None:
    """Start importing the upload checks' libraries in a background thread, once per process."""
    if not _started.acquire(blocking=False):
        return
    if not enabled:
        _done.set()
        return
    threading.Thread(target=_import_all, name="modeldeck-preload", daemon=True).start()


def state() -> PreloadState:
    """Tell whether the import is over (ok), with its error if it failed."""
    result: PreloadState = {"ok": _done.is_set()}
    if _error is not None:
        result["error"] = _error
    return result
