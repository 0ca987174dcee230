"""The worker's dynamic batcher (runtime/batching.py) on real threads: lanes run side by side, never more than set,
every request gets its own outputs, a lone request does not wait, and a batch's error reaches each of its requests."""

from __future__ import annotations

import threading
import time
from typing import Any, Hashable

import pytest

from runtime.batching import Batcher


class Model:
    """A stand-in forward pass: doubles each input, taking `seconds`, and records how many batches ran at once."""

    def __init__(self, seconds: float, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.active = 0
        self.most_active = 0
        self.batches: list[list[Any]] = []
        self._lock = threading.Lock()

    def __call__(self, key: Hashable, inputs: list[Any]) -> list[Any]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.batches.append(list(inputs))
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("the model broke")
            return [x * 2 for x in inputs]
        finally:
            with self._lock:
                self.active -= 1


def _together(n: int, call: Any) -> list[Any]:
    """Run call(i) on n threads released at once; return each result (or exception) by i."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not any(t.is_alive() for t in threads), "a request was never answered"
    return results


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_batches_run_side_by_side_up_to_the_lanes_and_each_request_gets_its_own_outputs(lanes: int) -> None:
    model = Model(seconds=0.3)
    batcher = Batcher(model, max_batch=4, max_wait_ms=0, lanes=lanes)
    results = _together(12, lambda i: batcher.submit("encode", [i, 100 + i]))
    assert [outputs for outputs, _ in results] == [[2 * i, 2 * (100 + i)] for i in range(12)]
    assert model.most_active == lanes
    assert max(len(b) for b in model.batches) <= 4
    assert batcher.stats.requests == 12 and batcher.stats.inputs == 24


def test_many_rounds_on_two_lanes_answer_every_request() -> None:
    # Leads handed on while other leads are still queued: no request may be lost or answered twice.
    model = Model(seconds=0.001)
    batcher = Batcher(model, max_batch=5, max_wait_ms=1, lanes=2)

    def many(i: int) -> list[Any]:
        return [batcher.submit(("encode", i % 2), [i * 1000 + k])[0] for k in range(40)]

    results = _together(24, many)
    for i, outputs in enumerate(results):
        assert outputs == [[2 * (i * 1000 + k)] for k in range(40)]
    assert batcher.stats.requests == 24 * 40
    assert all(len({type(x) for x in b}) == 1 for b in model.batches)
    assert model.most_active <= 2


def test_lanes_are_all_free_again_after_leaders_finish_together() -> None:
    # Two batches ending at once each hand their lane to a different queued request; a lane handed twice to one
    # request would be lost, and the next burst would run on fewer lanes (or none: every request waiting forever).
    model = Model(seconds=0.2)
    batcher = Batcher(model, max_batch=1, max_wait_ms=0, lanes=2)
    for _ in range(2):
        assert _together(8, lambda i: batcher.submit("encode", [i])[0]) == [[2 * i] for i in range(8)]
    model.most_active = 0
    model.seconds = 0.5
    assert _together(2, lambda i: batcher.submit("encode", [i])[0]) == [[0], [2]]
    assert model.most_active == 2


def test_requests_with_different_keys_never_share_a_batch() -> None:
    model = Model(seconds=0.05)
    batcher = Batcher(model, max_batch=32, max_wait_ms=0, lanes=1)
    results = _together(10, lambda i: batcher.submit(("encode", i % 2 == 0), [i])[0])
    assert results == [[2 * i] for i in range(10)]
    for batch in model.batches:
        assert len({x % 2 for x in batch}) == 1


def test_a_lone_request_does_not_wait_for_a_batch_to_fill() -> None:
    batcher = Batcher(Model(seconds=0), max_batch=32, max_wait_ms=2000, lanes=2)
    started = time.monotonic()
    assert batcher.submit("encode", [3]) == ([6], 1)
    assert time.monotonic() - started < 1.0


def test_a_waiting_leader_runs_as_soon_as_its_batch_is_full() -> None:
    model = Model(seconds=0.2)
    batcher = Batcher(model, max_batch=4, max_wait_ms=3000, lanes=1)
    # Requests that came together: B and C queue while A runs, then share a batch, so the next leader waits.
    _together(3, lambda i: (time.sleep(0.05 * (i > 0)), batcher.submit("encode", [i]))[1])
    assert [len(b) for b in model.batches] == [1, 2]
    out: list[Any] = []
    leader = threading.Thread(target=lambda: out.append((batcher.submit("encode", [10]), time.monotonic())))
    started = time.monotonic()
    leader.start()
    time.sleep(0.1)  # the leader is waiting for its batch to fill
    results = _together(3, lambda i: batcher.submit("encode", [11 + i]))
    leader.join(10)
    (outputs, size), finished = out[0]
    assert (outputs, size) == ([20], 4) and results == [([22 + 2 * i], 4) for i in range(3)]
    # Woken by the fourth input, not by the end of its 3 s wait.
    assert finished - started < 1.5


def test_a_failed_batch_raises_in_each_of_its_requests_and_frees_its_lane() -> None:
    model = Model(seconds=0.1, fail=True)
    batcher = Batcher(model, max_batch=32, max_wait_ms=0, lanes=1)
    results = _together(6, lambda i: batcher.submit("encode", [i]))
    assert all(isinstance(r, RuntimeError) and str(r) == "the model broke" for r in results)
    model.fail = False
    assert batcher.submit("encode", [5]) == ([10], 1)
