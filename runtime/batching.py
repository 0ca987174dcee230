"""Dynamic batching: concurrent requests to one model merged into one forward pass.

Each request's thread queues its inputs. While fewer than ``lanes`` batches run, that thread leads at once: a lone
request never waits. Otherwise later requests queue up and the next leader takes as many as fit (``max_batch``
inputs) when a lane is free again. Several lanes let batches run side by side, each on its own core, where one
forward pass of a small batch cannot use them all. Only while requests came together in the last second does a
leader wait up to ``max_wait_ms`` for its batch to fill, the bound on what batching may add to a request's latency.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

RECENT_S = 1.0  # a batch of several requests within this long means callers are concurrent: worth waiting for


@dataclass
class _Item:
    key: Hashable  # requests merge only with those of the same key (same method and parameters)
    inputs: list[Any]
    ready: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this item's thread runs a batch: its own inputs and those queued with the same key
    outputs: list[Any] | None = None
    error: BaseException | None = None
    batch_size: int = 0


@dataclass
class BatchStats:
    """What the worker reports: batches run, requests and inputs in them, the largest batch."""

    batches: int = 0
    requests: int = 0
    inputs: int = 0
    max_batch: int = 0
    last_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "requests": self.requests, "inputs": self.inputs,
                "max_batch": self.max_batch, "last_batch": self.last_batch}


class Batcher:
    """Run ``run(key, inputs) -> outputs`` (one output per input) over merged batches of concurrent requests, at
    most ``lanes`` batches at a time (``run`` must then be safe to call from that many threads at once)."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], max_batch: int, max_wait_ms: float,
                 lanes: int = 1) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.lanes = max(1, lanes)
        self._lock = threading.Condition()
        self._queue: list[_Item] = []
        self._running = 0  # leaders chosen: batches running or about to
        self._last_shared = -RECENT_S  # when a batch last merged several requests
        self.stats = BatchStats()

    def submit(self, key: Hashable, inputs: list[Any]) -> tuple[list[Any], int]:
        """Return this request's outputs and the number of inputs in the batch it ran in."""
        item = _Item(key, inputs)
        with self._lock:
            self._queue.append(item)
            if self._running < self.lanes:
                self._running += 1
                item.lead = True
            elif sum(len(i.inputs) for i in self._queue) >= self.max_batch:
                self._lock.notify_all()  # a leader waiting for its batch to fill may now have enough
        # An item's event is set once: when its batch is done, or when it is handed the lead (still queued: no other
        # leader takes an item that leads).
        if not item.lead:
            item.ready.wait()
        if item.outputs is None and item.error is None:
            self._lead(item)
        if item.error is not None:
            raise item.error
        assert item.outputs is not None
        return item.outputs, item.batch_size

    def _joining(self, leader: _Item) -> list[_Item]:
        """The leader and the queued requests that may join its batch, oldest first (no size bound)."""
        return [i for i in self._queue if i is leader or (not i.lead and i.key == leader.key)]

    def _take(self, leader: _Item) -> list[_Item]:
        """Take the leader's batch under the lock: its own request, then the oldest that share its key, up to
        max_batch inputs."""
        batch, size = [leader], len(leader.inputs)
        for item in self._joining(leader):
            if item is leader:
                continue
            if size + len(item.inputs) > self.max_batch:
                break
            batch.append(item)
            size += len(item.inputs)
        for item in batch:
            self._queue.remove(item)
        return batch

    def _lead(self, leader: _Item) -> None:
        """Run one batch as its leader, then hand the lane to the oldest request not leading (or free it)."""
        with self._lock:
            if self.max_wait_s > 0 and time.monotonic() - self._last_shared < RECENT_S:
                deadline = time.monotonic() + self.max_wait_s
                while sum(len(i.inputs) for i in self._joining(leader)) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            batch = self._take(leader)
        size = sum(len(i.inputs) for i in batch)
        try:
            outputs = self._run(batch[0].key, [x for i in batch for x in i.inputs])
            error: BaseException | None = None
        except BaseException as exc:  # every request of the batch gets the model's error
            outputs, error = [], exc
        with self._lock:
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.inputs += size
            self.stats.max_batch = max(self.stats.max_batch, size)
            self.stats.last_batch = size
            if len(batch) > 1:
                self._last_shared = time.monotonic()
            successor = next((i for i in self._queue if not i.lead), None)
            if successor is None:
                self._running -= 1
            else:
                successor.lead = True
        start = 0
        for item in batch:
            item.batch_size = size
            if error is not None:
                item.error = error
            else:
                item.outputs = outputs[start:start + len(item.inputs)]
            start += len(item.inputs)
            item.ready.set()
        if successor is not None:
            successor.ready.set()
