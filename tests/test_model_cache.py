"""The worker's model cache (runtime/cache.py): bounded by count and by memory, least recently used first."""

from __future__ import annotations

import threading
import time

from runtime.cache import ModelCache
from runtime.loader import LoadedModel
from server.core.model_info import ModelInfo

INFO = ModelInfo(methods=["predict"], classes=None, feature_names=None)


def _model(sha: str, size: int, memory: int = 0, device_memory: int = 0) -> LoadedModel:
    return LoadedModel(sha256=sha, fmt="skops", size=size, run=lambda rows, method, columns: [sha for _ in rows], info=INFO,
                       memory=memory, device_memory=device_memory)


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


def test_memory_measured_after_load_counts_over_the_artifact_size() -> None:
    cache = ModelCache(capacity=100, max_bytes=100)
    cache.get("a", lambda: _model("a", 10, memory=60))  # a small artifact that took 60 bytes once loaded
    cache.get("b", lambda: _model("b", 10, memory=5))  # counted as its artifact's 10 bytes
    assert cache.bytes == 70
    cache.get("c", lambda: _model("c", 10, memory=50))  # 120: "a" leaves
    assert cache.snapshot() == ["b", "c"] and cache.bytes == 60
    assert [m["memory_mb"] for m in cache.details()] == [0.0, 0.0]


def test_gpu_memory_is_a_bound_of_its_own() -> None:
    cache = ModelCache(capacity=100, max_bytes=None, max_device_bytes=100)
    cache.get("a", lambda: _model("a", 1, device_memory=60))
    cache.get("b", lambda: _model("b", 1))
    cache.get("c", lambda: _model("c", 1, device_memory=60))  # 120 on the device: "a" leaves, "b" stays
    assert cache.snapshot() == ["b", "c"] and cache.device_bytes == 60


def test_a_model_known_to_need_more_than_the_bound_is_refused_before_loading() -> None:
    cache = ModelCache(capacity=100, max_bytes=2**20)
    assert cache.refuses(2**20) == ""
    assert cache.refuses(3 * 2**20) == (
        "its weights need 3.0 MiB and this worker's model cache holds at most 1.0 MiB (MODELDECK_MODEL_CACHE_MB); "
        "serve it from a pool whose workers have more memory")


def test_a_model_known_to_need_more_gpu_memory_than_the_bound_is_refused() -> None:
    cache = ModelCache(capacity=100, max_bytes=2**20, max_device_bytes=2**20)
    assert cache.refuses(4 * 2**20, device_bytes=2**20) == ""  # on the device: the RAM bound does not apply
    assert cache.refuses(4 * 2**20, device_bytes=2 * 2**20) == (
        "its weights need 2.0 MiB of GPU memory and this worker's model cache holds at most 1.0 MiB there "
        "(MODELDECK_MODEL_CACHE_GPU_MB); serve it from a pool whose GPUs have more memory")
