"""The worker's model cache (runtime/cache.py): bounded by count and by artifact bytes, least recently used first."""

from __future__ import annotations

import threading
import time

from runtime.cache import ModelCache
from runtime.loader import LoadedModel
from server.core.model_info import ModelInfo


def _model(sha: str, size: int) -> LoadedModel:
    return LoadedModel(sha256=sha, fmt="skops", size=size, run=lambda rows, method, columns: [sha for _ in rows],
                       info=ModelInfo(methods=["predict"], classes=None, feature_names=None))


def test_the_byte_bound_evicts_least_recently_used_and_keeps_the_model_just_loaded() -> None:
    cache = ModelCache(capacity=100, max_bytes=100)
    for sha in ("a", "b"):
        model, cold = cache.get(sha, lambda sha=sha: _model(sha, 40))
        assert cold and model.sha256 == sha
    assert cache.snapshot() == ["a", "b"] and cache.bytes == 80
    cache.get("a", lambda: _model("never", 1))  # a hit makes "a" the most recent
    model, cold = cache.get("c", lambda: _model("c", 40))  # 120 bytes: the least recently used ("b") leaves
    assert cold and model.run([[0]], "predict", None) == ["c"]
    assert cache.snapshot() == ["a", "c"] and cache.bytes == 80
    model, cold = cache.get("big", lambda: _model("big", 500))  # alone over the bound: it stays, the rest leave
    assert cold and cache.snapshot() == ["big"] and cache.bytes == 500
    cache.get("d", lambda: _model("d", 10))
    assert cache.snapshot() == ["d"] and cache.bytes == 10


def test_the_count_bound_and_the_hit_and_miss_counts() -> None:
    cache = ModelCache(capacity=2, max_bytes=None)
    for sha in ("a", "b", "a", "c", "a", "b"):
        cache.get(sha, lambda sha=sha: _model(sha, 1_000_000))
    # a miss, b miss, a hit, c miss (b leaves), a hit, b miss (c leaves)
    assert (cache.hits, cache.misses) == (2, 4)
    assert cache.snapshot() == ["a", "b"] and cache.bytes == 2_000_000


def test_concurrent_first_requests_load_a_model_once() -> None:
    cache = ModelCache(capacity=4, max_bytes=10**9)
    loads: list[str] = []

    def load() -> LoadedModel:
        loads.append("m")
        time.sleep(0.2)
        return _model("m", 10)

    threads = [threading.Thread(target=cache.get, args=("m", load)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["m"] and (cache.hits, cache.misses) == (7, 1)
