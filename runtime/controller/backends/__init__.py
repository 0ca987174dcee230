"""Scaler backends: how the controller runs a pool's workers (local processes or a Kubernetes Deployment)."""

from __future__ import annotations

from typing import Protocol


class Backend(Protocol):
    """What the controller needs from a backend."""

    def replicas(self, pool: str) -> int:
        """Return how many workers the backend runs (or is starting) for a pool."""

    def scale(self, pool: str, replicas: int) -> None:
        """Run exactly this many workers for a pool."""

    def supervise(self) -> list[str]:
        """Check on the workers; return one line per event worth auditing (a crashed worker restarted)."""

    def close(self) -> None:
        """Stop supervising; a local backend stops its workers gracefully."""
