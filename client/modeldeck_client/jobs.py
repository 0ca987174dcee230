"""Jobs run by the server (batch scoring, asynchronous predictions): poll, show progress, raise on failure."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from modeldeck_client.errors import JobFailedError

if TYPE_CHECKING:
    from modeldeck_client.client import ModelDeck

FINISHED = ("succeeded", "failed", "cancelled")


class Job:
    """A server-side job; ``wait()`` follows it to the end."""

    def __init__(self, client: ModelDeck, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    @property
    def id(self) -> str:
        return str(self.data.get("id") or self.data.get("job_id"))

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    def refresh(self) -> Job:
        """Read the job's current state."""
        self.data = self._client.request("GET", f"/api/v1/jobs/{self.id}")
        return self

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.5, progress: bool = True) -> dict[str, Any]:
        """Wait until the job ends (showing its progress with tqdm) and return it; JobFailedError if it failed."""
        bar = None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                self.refresh()
                bar = self._show(bar, progress)
                if self.status in FINISHED:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {self.status} after {timeout_s:g} s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()
        if self.status != "succeeded":
            error = self.data.get("error") or {}
            raise JobFailedError(error.get("message") or f"job {self.id} ended {self.status}",
                                 error.get("code") or self.status, details={"job": self.id})
        return self.data

    def _show(self, bar: Any, progress: bool) -> Any:
        info = self.data.get("progress") or {}
        done, total = info.get("rows_done"), info.get("rows_total")
        if not progress or done is None:
            return bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="rows", desc=f"job {self.id[:12]}")
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        return bar

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r})"
