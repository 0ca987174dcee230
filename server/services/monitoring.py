"""Read metric buckets back as time series and summaries; roll them up and expire them."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, TypedDict

from server.core import metrics_repo
from server.core.clock import to_iso
from server.core.errors import InvalidInputError
from server.core.settings import Settings
from server.services.metrics import percentile

_SUMS = ("requests", "errors", "rows", "cold", "total_ms", "route_ms", "model_ms", "load_ms")


class Summary(TypedDict):
    requests: int
    errors: int
    error_rate: float
    errors_by_kind: dict[str, int]
    rows: int
    cold_starts: int
    latency_ms: dict[str, float | None]


def parse_time(value: str | None, default: float, field: str) -> int:
    """Read a query time given as ISO-8601 or epoch seconds; return epoch seconds."""
    if value in (None, ""):
        return int(default)
    try:
        return int(float(value))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(f"query parameter '{field}': expected ISO-8601 or epoch seconds, got {value!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Add buckets together: sums, error kinds and histogram counts."""
    out: dict[str, Any] = {k: 0.0 for k in _SUMS}
    codes: dict[str, int] = {}
    hist: dict[int, float] = {}
    for doc in docs:
        for k, v in doc.items():
            if k in _SUMS:
                out[k] += v
            elif k.startswith("code_"):
                codes[k[5:]] = codes.get(k[5:], 0) + int(v)
            elif k[0] == "h" and k[1:].isdigit():
                hist[int(k[1:])] = hist.get(int(k[1:]), 0) + v
    out["codes"] = codes
    out["hist"] = hist
    return out


def summarize(merged: dict[str, Any]) -> Summary:
    """Turn merged buckets into counts, error rate and latency percentiles."""
    n, ok = int(merged["requests"]), int(merged["requests"] - merged["errors"])
    errors = {k: v for k, v in merged["codes"].items() if not k.startswith("200_")}
    return {
        "requests": n, "errors": int(merged["errors"]), "error_rate": round(merged["errors"] / n, 6) if n else 0.0,
        "errors_by_kind": errors, "rows": int(merged["rows"]), "cold_starts": int(merged["cold"]),
        # Every answered request found its model loaded unless it was a cold start.
        "cache_hits": max(0, ok - int(merged["cold"])),
        "cache_hit_rate": round((ok - int(merged["cold"])) / ok, 6) if ok else None,
        "latency_ms": {
            "p50": percentile(merged["hist"], 0.5), "p95": percentile(merged["hist"], 0.95),
            "p99": percentile(merged["hist"], 0.99), "mean": round(merged["total_ms"] / n, 3) if n else None,
            # Parts of the time, over successful requests only: in the queue and worker, and in the model.
            "route_mean": round(merged["route_ms"] / ok, 3) if ok else None,
            "model_mean": round(merged["model_ms"] / ok, 3) if ok else None,
            "load_mean": round(merged["load_ms"] / ok, 3) if ok else None,
        },
    }


def _buckets(db: Any, since: int, until: int, step: int, model: str | None, version: int | None) -> list[dict[str, Any]]:
    """Return buckets in a range: minute buckets, plus hourly roll-ups when the step is an hour or more."""
    docs = metrics_repo.find_buckets(db, metrics_repo.MINUTE, since, until, model, version)
    if step >= 3600:
        docs += metrics_repo.find_buckets(db, metrics_repo.HOUR, since - since % 3600, until, model, version)
    return docs


def model_series(db: Any, name: str, since: int, until: int, version: int | None, step: int | None) -> dict[str, Any]:
    """Return a model's metrics per step (minute or hour) between two times, and their total."""
    if until <= since:
        raise InvalidInputError(f"query parameter 'until' ({until}) must be after 'since' ({since})")
    step = step or (60 if until - since <= 6 * 3600 else 3600)
    docs = _buckets(db, since, until, step, name, version)
    groups: dict[int, list[dict[str, Any]]] = {}
    for doc in docs:
        groups.setdefault(doc["t"] - doc["t"] % step, []).append(doc)
    points = [{"time": to_iso(dt.datetime.fromtimestamp(t, dt.timezone.utc)), "t": t, **summarize(merge(groups[t]))}
              for t in sorted(groups)]
    versions = sorted({doc["version"] for doc in docs})
    return {"model": name, "version": version, "since": since, "until": until, "step_s": step, "versions": versions,
            "total": summarize(merge(docs)), "points": points}


def overview(db: Any, window_s: int, pools: list[dict[str, Any]], now: float | None = None,
             models: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Return the platform summary over a window: totals, percentiles, busiest models, pools, recent alerts;
    of these models only, when given (a scoped credential's)."""
    until = int(now if now is not None else time.time()) + 60
    since = until - 60 - window_s
    docs = _buckets(db, since, until, 3600 if window_s > 6 * 3600 else 60, None, None)
    if models is not None:
        docs = [d for d in docs if d["model"] in models]
    per_model: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        per_model.setdefault(doc["model"], []).append(doc)
    busiest = sorted(({"model": m, **summarize(merge(d))} for m, d in per_model.items() if m != "-"),
                     key=lambda s: -s["requests"])[:10]
    alerts = metrics_repo.find_alerts(db, since, None, 20, models)
    return {"window_s": window_s, **summarize(merge(docs)), "busiest_models": busiest, "pools": pools,
            "recent_alerts": [alert_view(a) for a in alerts]}


def alert_view(alert: dict[str, Any]) -> dict[str, Any]:
    """Return an alert as the API shows it."""
    return {"id": alert["_id"], **{k: v for k, v in alert.items() if k != "_id"}}


def rollup(db: Any, settings: Settings, now: float | None = None) -> dict[str, int]:
    """Fold minute buckets older than the raw retention into hourly ones; expire old hours and logs."""
    now = now if now is not None else time.time()
    cutoff = now - settings.metrics_raw_retention_days * 86400
    folded = 0
    while True:
        batch = list(metrics_repo.claim_minute_buckets(db, int(cutoff)))
        for doc in batch:
            counts = {k: v for k, v in doc.items() if k not in ("_id", "model", "version", "pool", "t")}
            key = {"model": doc["model"], "version": doc["version"], "pool": doc["pool"], "t": doc["t"] - doc["t"] % 3600}
            metrics_repo.add_to_bucket(db, metrics_repo.HOUR, key, counts)
        folded += len(batch)
        if not batch:
            break
    hours = metrics_repo.delete_before(db, metrics_repo.HOUR, now - settings.metrics_hourly_retention_days * 86400)
    logs = metrics_repo.delete_before(db, metrics_repo.LOGS, now - settings.prediction_log_retention_days * 86400)
    samples = metrics_repo.delete_before(db, metrics_repo.POOLS, cutoff)
    return {"minutes_folded": folded, "hours_expired": hours, "logs_expired": logs, "pool_samples_expired": samples}


def pool_series(db: Any, since: int, until: int) -> dict[str, Any]:
    """Return each pool's workers (live, busy) and queue depth over time, as sampled by the API processes."""
    pools: dict[str, list[dict[str, Any]]] = {}
    for doc in metrics_repo.find_pool_samples(db, since, until):
        pools.setdefault(doc["pool"], []).append({
            "time": _iso(doc["t"]), "t": doc["t"], "workers": doc["workers"], "busy": doc["busy"], "queue_depth": doc["queue_depth"]})
    return {"since": _iso(since), "until": _iso(until), "pools": [{"name": n, "points": pools[n]} for n in sorted(pools)]}


def _iso(t: float) -> str:
    return to_iso(dt.datetime.fromtimestamp(t, dt.timezone.utc))
