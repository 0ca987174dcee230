"""Record prediction metrics in memory on the hot path; a background thread flushes them to MongoDB.

Each API process adds into per-minute buckets (requests, errors by status and code, latency sums,
rows, cold starts and a fixed log-scale latency histogram) and `$inc`s them into the repository every
MODELDECK_METRICS_FLUSH_INTERVAL_S, so percentiles can be computed across processes. The same call
updates the Prometheus metrics and samples prediction logs for models that opted in.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

import orjson
from prometheus_client import Counter, Histogram

from server.core import metrics_repo, models_repo
from server.core.errors import ModelDeckError
from server.core.settings import Settings
from server.core.wire import PredictOutcome

logger = logging.getLogger(__name__)

# Latency histogram: bucket i holds values up to BOUNDS_MS[i] (0.25 ms growing by 25% to about 2 minutes);
# the last bucket (index len(BOUNDS_MS)) holds anything slower.
BOUNDS_MS: list[float] = [0.25 * 1.25 ** i for i in range(60)]
PROM_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LABELS = ("model", "version", "pool", "outcome")
REQUESTS = Counter("modeldeck_predict_requests", "Predict requests by outcome (success or error code)", _LABELS)
LATENCY = Histogram("modeldeck_predict_latency_seconds", "Predict latency in the API, end to end", _LABELS,
                    buckets=PROM_BUCKETS_S)
MODEL_TIME = Histogram("modeldeck_predict_model_seconds", "Time the model itself ran on the worker",
                       ("model", "version", "pool"), buckets=PROM_BUCKETS_S)
ROWS = Counter("modeldeck_predict_rows", "Rows predicted", ("model", "version", "pool"))
COLD = Counter("modeldeck_predict_cold_starts", "Predictions that had to load the model first", ("model", "version", "pool"))
UNRESOLVED = "-"


def histogram_index(ms: float) -> int:
    """Return the latency histogram bucket of a duration in milliseconds."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def percentile(hist: dict[int, float], q: float) -> float | None:
    """Estimate a quantile (0..1) in milliseconds from histogram counts, interpolating inside a bucket."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i in sorted(hist):
        n = hist[i]
        if n <= 0:
            continue
        if seen + n >= rank:
            lower = BOUNDS_MS[i - 1] if i > 0 else 0.0
            upper = BOUNDS_MS[i] if i < len(BOUNDS_MS) else lower * 1.25
            return round(lower + (upper - lower) * max(0.0, rank - seen) / n, 3)
        seen += n
    return BOUNDS_MS[-1]


@dataclass(frozen=True)
class _Series:
    """One version's Prometheus children for successful predictions, looked up once per process
    (each labels() call converts and checks the values and takes the metric's lock)."""

    requests: Any
    latency: Any
    model_time: Any
    rows: Any
    cold: Any


@dataclass
class _Pending:
    counts: dict[tuple[str, int, str, int], dict[str, float]] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)


class MetricsRecorder:
    """Aggregates prediction metrics per model, version and minute, and flushes them periodically."""

    def __init__(self, db: Any, settings: Settings, housekeeping: Callable[[MetricsRecorder], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self._pending = _Pending()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._housekeeping = housekeeping
        # Versions this process served, with their monitoring policy and when it last served them: the alert
        # check looks at every one served within its window, since other processes' counts arrive later.
        self.seen: dict[tuple[str, int], tuple[dict[str, Any], float]] = {}
        self._series: dict[tuple[str, int, str], _Series] = {}
        self._thread = threading.Thread(target=self._loop, name="modeldeck-metrics", daemon=True)

    def start(self) -> None:
        """Start the flush thread; what is pending at interpreter exit is flushed then."""
        self._thread.start()
        atexit.register(self.flush)

    def stop(self) -> None:
        """Stop the flush thread and flush what is left."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def record_success(self, doc: Any, rows: list[list[Any]], outcome: PredictOutcome, timings: dict[str, float]) -> None:
        """Count one successful prediction; sample its payload when the model opted in to logging."""
        name, version, pool = doc["name"], doc["version"], doc["pool"]
        cold = outcome.cold
        total_ms = timings["total_ms"]
        self._add(name, version, pool, {
            "requests": 1, "rows": len(rows), "cold": 1 if cold else 0, "total_ms": total_ms,
            "route_ms": timings["route_ms"], "model_ms": timings["model_ms"], "load_ms": timings["load_ms"],
            "code_200_ok": 1, f"h{histogram_index(total_ms)}": 1,
        }, doc.get("monitoring"))
        series = self._success_series(name, version, pool)
        series.requests.inc()
        series.latency.observe(total_ms / 1000)
        series.model_time.observe(timings["model_ms"] / 1000)
        series.rows.inc(len(rows))
        if cold:
            series.cold.inc()
        policy = doc.get("monitoring") or {}
        rate = policy.get("log_sample_rate") or 0.0
        if rate and random.random() < rate:
            self._log(name, version, rows, outcome.predictions if policy.get("log_outputs") else None)

    def _success_series(self, name: str, version: int, pool: str) -> _Series:
        key = (name, version, pool)
        series = self._series.get(key)
        if series is None:
            labels = (name, str(version), pool)
            series = _Series(REQUESTS.labels(*labels, "success"), LATENCY.labels(*labels, "success"),
                             MODEL_TIME.labels(*labels), ROWS.labels(*labels), COLD.labels(*labels))
            self._series[key] = series  # a race only looks the same children up twice
        return series

    def record_error(self, name: str, doc: Any, exc: ModelDeckError | None, total_ms: float) -> None:
        """Count one failed prediction under its status and error code."""
        status, code = (exc.status, exc.code) if exc is not None else (500, "internal")
        version = doc["version"] if doc else 0
        pool = doc["pool"] if doc else UNRESOLVED
        model = name if doc else UNRESOLVED
        self._add(model, version, pool, {
            "requests": 1, "errors": 1, "total_ms": total_ms, f"code_{status}_{code}": 1,
            f"h{histogram_index(total_ms)}": 1,
        }, doc.get("monitoring") if doc else None)
        labels = (model, str(version), pool, code)
        REQUESTS.labels(*labels).inc()
        LATENCY.labels(*labels).observe(total_ms / 1000)

    def _add(self, name: str, version: int, pool: str, values: dict[str, float], policy: dict[str, Any] | None) -> None:
        now = time.time()
        key = (name, version, pool, int(now) // 60 * 60)
        with self._lock:
            bucket = self._pending.counts.get(key)
            if bucket is None:
                self._pending.counts[key] = values
                self.seen[(name, version)] = (policy or {}, now)
                return
            for k, v in values.items():
                bucket[k] = bucket.get(k, 0) + v

    def _log(self, name: str, version: int, rows: list[list[Any]], outputs: list[Any] | None) -> None:
        limit = self.settings.prediction_log_max_bytes
        kept, size = [], 0
        # Keep whole rows up to the size limit; the entry says how many rows the request had.
        for i, row in enumerate(rows):
            size += len(orjson.dumps(row)) + (len(orjson.dumps(outputs[i])) if outputs is not None else 0)
            if size > limit:
                break
            kept.append(row)
        entry = {"model": name, "version": version, "t": time.time(), "inputs": kept, "rows": len(rows),
                 "truncated": len(kept) < len(rows)}
        if outputs is not None:
            entry["outputs"] = outputs[:len(kept)]
        with self._lock:
            self._pending.logs.append(entry)

    def flush(self) -> None:
        """Write the pending buckets and logs to the repository; keep them for the next try if it fails."""
        with self._lock:
            pending, self._pending = self._pending, _Pending()
        failed = _Pending()
        for (name, version, pool, t), counts in pending.counts.items():
            try:
                metrics_repo.add_to_bucket(self.db, metrics_repo.MINUTE, {"model": name, "version": version, "pool": pool, "t": t}, counts)
            except Exception as exc:  # the repository is away: keep the counts for the next flush
                logger.warning("could not flush metrics for %s version %s: %s", name, version, exc)
                failed.counts[(name, version, pool, t)] = counts
        try:
            metrics_repo.insert_logs(self.db, pending.logs)
        except Exception as exc:
            logger.warning("could not store %d prediction log entries: %s", len(pending.logs), exc)
            failed.logs = pending.logs[:1000]
        if failed.counts or failed.logs:
            with self._lock:
                for key, counts in failed.counts.items():
                    bucket = self._pending.counts.setdefault(key, {})
                    for k, v in counts.items():
                        bucket[k] = bucket.get(k, 0) + v
                self._pending.logs[:0] = failed.logs

    def recently_seen(self, window_s: float) -> dict[tuple[str, int], dict[str, Any]]:
        """Return the versions this process served within the last window_s seconds, with their monitoring policy.

        A version stays in the answer for the whole window, not just until the next call: the counts of the
        other API processes reach the repository a flush later, and a check made before they arrive must be
        made again.
        """
        cutoff = time.time() - window_s
        with self._lock:
            self.seen = {k: v for k, v in self.seen.items() if v[1] >= cutoff}
            return {k: policy for k, (policy, _) in self.seen.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.metrics_flush_interval_s):
            try:
                self.flush()
                if self._housekeeping is not None:
                    self._housekeeping(self)
            except Exception:  # keep the thread alive; the next round retries
                logger.exception("metrics flush or housekeeping failed")


F = TypeVar("F", bound=Callable[..., Any])


def observed(fn: F) -> F:
    """Count a predict call's failures (successes are counted inside it, where timings are known)."""

    @wraps(fn)
    def wrapper(ctx: Any, principal: Any, name: str, inputs: Any, ref: Any, request_id: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(ctx, principal, name, inputs, ref, request_id, *args)
        except Exception as exc:
            if ctx.metrics is not None:
                ctx.metrics.record_error(name, _lookup(ctx, name, ref), exc if isinstance(exc, ModelDeckError) else None,
                                         (time.perf_counter() - started) * 1000)
            raise

    return wrapper  # type: ignore[return-value]


def _lookup(ctx: Any, name: str, ref: Any) -> Any:
    """Return the version a failed request was for, or None when it does not resolve."""
    try:
        return ctx.cache.get("model", name, ref, lambda: models_repo.resolve_version(ctx.db, name, ref))
    except Exception:  # an unknown model or version is counted under "-", so names cannot grow the label set
        return None
