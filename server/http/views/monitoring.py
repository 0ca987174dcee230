"""Monitoring: per-model time series, platform overview, drift, alerts, and /metrics for Prometheus."""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Response, current_app
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, Field

from server.services import drift, monitoring
from server.http.api import MAX_INT, Api, json_response
from server.http.scope import in_scope, scope_models
from server.core import metrics_repo, models_repo, workers_repo
from server.core.errors import InvalidInputError
from server.services.runtimes import queue_probe

api = Api("monitoring", "/api/v1/monitoring")
metrics_api = Api("metrics")

_DURATION_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, field: str) -> int:
    """Read a duration such as 3600, 90m, 1h or 7d; return seconds."""
    match = _DURATION_RE.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise InvalidInputError(f"query parameter '{field}': expected a duration such as 3600, 90m, 1h or 7d, got {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


class SeriesQuery(BaseModel):
    model_config = {"extra": "forbid"}

    since: str | None = Field(default=None, description="ISO-8601 or epoch seconds; default one hour ago")
    until: str | None = Field(default=None, description="ISO-8601 or epoch seconds; default now")
    version: int | None = Field(default=None, ge=1, le=MAX_INT, description="one version; default all")
    step: int | None = Field(default=None, description="60 (minute) or 3600 (hour); default by range")


class RangeQuery(BaseModel):
    model_config = {"extra": "forbid"}

    since: str | None = Field(default=None, description="ISO-8601 or epoch seconds; default one hour ago")
    until: str | None = Field(default=None, description="ISO-8601 or epoch seconds; default now")


class WindowQuery(BaseModel):
    model_config = {"extra": "forbid"}

    window: str = Field(default="1h", description="duration: seconds, or with m, h or d")


class DriftQuery(BaseModel):
    model_config = {"extra": "forbid"}

    window: str = Field(default="1h", description="logged inputs of this last duration: seconds, or with m, h or d")
    version: int | str | None = Field(default=None, description="version or alias; default production, else latest")


class AlertQuery(BaseModel):
    model_config = {"extra": "forbid"}

    model: str | None = None
    window: str = Field(default="7d", description="alerts raised in this last duration")
    limit: int = Field(default=100, ge=1, le=1000)


def _ctx() -> Any:
    return current_app.extensions["modeldeck"]


@api.route("/models/<name>", "GET", "analyst", "Time series of a model's requests, errors and latency", query=SeriesQuery,
           scope="path:name")
def model_series(name: str, query: SeriesQuery) -> Response:
    if query.step not in (None, 60, 3600):
        raise InvalidInputError(f"query parameter 'step': expected 60 or 3600, got {query.step}")
    now = time.time()
    until = monitoring.parse_time(query.until, now + 60, "until")
    since = monitoring.parse_time(query.since, now - 3600, "since")
    models_repo.get_model(_ctx().db, name)
    return json_response(monitoring.model_series(_ctx().db, name, since, until, query.version, query.step))


@api.route("/pools", "GET", "analyst", "Each pool's live and busy workers and queue depth over time", query=RangeQuery,
           scope="none")
def pool_series(query: RangeQuery) -> Response:
    now = time.time()
    until = monitoring.parse_time(query.until, now + 60, "until")
    since = monitoring.parse_time(query.since, now - 3600, "since")
    if since >= until:
        raise InvalidInputError(f"query parameter 'since' ({since}) must be before 'until' ({until})")
    return json_response(monitoring.pool_series(_ctx().db, since, until))


@api.route("/overview", "GET", "analyst", "Platform summary: requests, error rate, percentiles, busiest models, pools",
           query=WindowQuery, scope="list")
def overview(query: WindowQuery) -> Response:
    return json_response(monitoring.overview(_ctx().db, parse_duration(query.window, "window"), _pools(),
                                             models=scope_models()))


@api.route("/models/<name>/drift", "GET", "analyst", "Per-feature drift (PSI, KS) of logged inputs against the reference",
           query=DriftQuery, scope="path:name")
def model_drift(name: str, query: DriftQuery) -> Response:
    ctx = _ctx()
    ref = int(query.version) if isinstance(query.version, str) and query.version.isdigit() else query.version
    doc = models_repo.resolve_version(ctx.db, name, ref)
    return json_response(drift.drift_report(ctx.db, ctx.settings, doc, parse_duration(query.window, "window")))


@api.route("/alerts", "GET", "analyst", "Alerts raised for error rate, p99 latency and drift", query=AlertQuery,
           scope="list")
def alerts(query: AlertQuery) -> Response:
    since = time.time() - parse_duration(query.window, "window")
    found = metrics_repo.find_alerts(_ctx().db, since, query.model, query.limit, scope_models())
    return json_response({"alerts": [monitoring.alert_view(a) for a in found]})


def _pools() -> list[dict[str, Any]]:
    """Live workers per pool and state, with the queue depth from RabbitMQ."""
    ctx = _ctx()
    pools: dict[str, dict[str, Any]] = {}
    for worker in workers_repo.live_workers(ctx.db, ctx.settings.worker_lost_after_s):
        pool = pools.setdefault(worker["pool"], {"name": worker["pool"], "workers": 0, "busy": 0, "queue_depth": None})
        pool["workers"] += 1
        pool["busy"] += 1 if worker.get("state") == "busy" else 0
    names = sorted(pools)
    depths = queue_probe().depths([ctx.settings.queue_name(n) for n in names])
    for name in names:
        # None while the broker is away: the overview still answers, without the backlog.
        depth = depths.get(ctx.settings.queue_name(name))
        pools[name]["queue_depth"] = depth.ready if depth is not None else None
    return [pools[n] for n in names]


class _PoolCollector:
    """Gauges read at scrape time: workers per pool and state, queue depth per pool."""

    def __init__(self, pools: list[dict[str, Any]]) -> None:
        self.pools = pools

    def collect(self) -> Any:
        workers = GaugeMetricFamily("modeldeck_pool_workers", "Live workers per pool and state", labels=["pool", "state"])
        depth = GaugeMetricFamily("modeldeck_pool_queue_depth", "Messages waiting in a pool's queue", labels=["pool"])
        for pool in self.pools:
            workers.add_metric([pool["name"], "busy"], pool["busy"])
            workers.add_metric([pool["name"], "idle"], pool["workers"] - pool["busy"])
            if pool["queue_depth"] is not None:
                depth.add_metric([pool["name"]], pool["queue_depth"])
        yield workers
        yield depth


class _InScope:
    """Another registry's metrics without the samples of models outside this request's scope."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Any:
        for family in self.source.collect():
            family.samples = [s for s in family.samples if "model" not in s.labels or in_scope(s.labels["model"])]
            yield family


@metrics_api.route("/metrics", "GET", "analyst", "Prometheus metrics (text format)", scope="list")
def metrics() -> Response:
    if _ctx().settings.prometheus_multiproc_dir:
        # Under gunicorn every worker process writes its own files; this sums them.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    gauges = CollectorRegistry()
    gauges.register(_PoolCollector(_pools()))  # type: ignore[arg-type]
    if scope_models() is not None:
        # A scoped credential sees only its models' series (and those with no model label).
        scoped = CollectorRegistry()
        scoped.register(_InScope(registry))  # type: ignore[arg-type]
        registry = scoped
    return Response(generate_latest(registry) + generate_latest(gauges), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})
