"""Import skops without torch: processes load only what they serve.

``import skops.io`` builds its trusted types from scikit-learn's ``all_estimators()``, which walks every sklearn
package with ``pkgutil.walk_packages``; walking imports each package, among them
``sklearn.externals.array_api_compat.torch``, whose ``__init__`` runs ``from torch import *``. So wherever torch
is installed (a pool with the genai extra, or an API sharing that environment), reading a skops file costs torch's
import: about 530 MiB more RSS and seconds of start-up (docs/runtime.md). While skops.io is imported, torch is
made unimportable: the walk skips that package as it skips any that fails to import (its ``onerror``), and
``all_estimators`` never looked inside ``externals`` anyway, so skops trusts exactly the same types.
tests/test_lean_imports.py fails if the walk stops pulling torch in (drop this then) or this stops keeping it out.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Any, Sequence

HEAVY = ("torch",)
_lock = threading.Lock()


class _Refuse(importlib.abc.MetaPathFinder):
    """A finder that makes the named top-level packages (and their submodules) fail to import."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in self.names:
            raise ImportError(f"{fullname} is kept out of this import (server/core/lean_imports.py)")
        return None


def import_skops_io() -> ModuleType:
    """Return skops.io, imported without importing torch (unless torch was already loaded)."""
    if "skops.io" in sys.modules:
        # Through the import system, not sys.modules: another thread may still be initialising it (the API's
        # preload), and import_module waits for that to finish.
        return importlib.import_module("skops.io")
    with _lock:
        if "torch" in sys.modules:  # already paid for by this process (a genai worker): nothing to save
            return importlib.import_module("skops.io")
        finder = _Refuse(HEAVY)
        sys.meta_path.insert(0, finder)
        try:
            return importlib.import_module("skops.io")
        finally:
            sys.meta_path.remove(finder)
