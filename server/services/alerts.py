"""Alerts: error rate, p99 latency and drift above a model's thresholds; optional signed webhook."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import time
from typing import Any

import orjson
import requests

from server.core import metrics_repo, models_repo
from server.core.clock import to_iso
from server.core.queues import QueueProbe
from server.core.settings import Settings
from server.services.drift import drift_report
from server.services.metrics import MetricsRecorder
from server.services.monitoring import alert_view, merge, rollup, summarize
from server.services.runtimes import pool_snapshot

logger = logging.getLogger(__name__)


def raise_alert(db: Any, settings: Settings, model: str, version: int, kind: str, value: float, threshold: float,
                message: str, details: dict[str, Any] | None = None, now: float | None = None) -> dict[str, Any] | None:
    """Record an alert once per model, version, kind and alert window; post it to the webhook if new."""
    now = now if now is not None else time.time()
    window = settings.alert_window_s
    alert = {"_id": f"{model}:{version}:{kind}:{int(now) // window}", "model": model, "version": version, "kind": kind,
             "value": value, "threshold": threshold, "message": message, "details": details or {},
             "time": to_iso(dt.datetime.fromtimestamp(now, dt.timezone.utc)), "t": now, "window_s": window}
    if not metrics_repo.insert_alert(db, alert):
        return None
    logger.warning("alert: %s", message)
    if settings.alert_webhook_url:
        send_webhook(settings, alert_view(alert))
    return alert


def sign(secret: str, body: bytes) -> str:
    """Return the webhook signature header value: sha256=<hex HMAC of the body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_webhook(settings: Settings, alert: dict[str, Any]) -> bool:
    """POST an alert to the configured webhook with an HMAC-SHA256 signature; never raises."""
    body = orjson.dumps({"type": "modeldeck.alert", "alert": alert})
    headers = {"Content-Type": "application/json", "User-Agent": "modeldeck-alerts"}
    if settings.alert_webhook_secret:
        headers["X-ModelDeck-Signature"] = sign(settings.alert_webhook_secret, body)
    try:
        resp = requests.post(settings.alert_webhook_url, data=body, headers=headers, timeout=5)
    except requests.RequestException as exc:
        logger.warning("alert webhook failed: %s", type(exc).__name__)
        return False
    if resp.status_code >= 300:
        logger.warning("alert webhook answered %s", resp.status_code)
    return resp.status_code < 300


def check_alerts(db: Any, settings: Settings, seen: dict[tuple[str, int], dict[str, Any]],
                 now: float | None = None) -> list[dict[str, Any]]:
    """Compare recent error rate and p99 of each version with traffic against its thresholds."""
    now = now if now is not None else time.time()
    raised = []
    for (model, version), policy in seen.items():
        if model == "-":
            continue
        docs = metrics_repo.find_buckets(db, metrics_repo.MINUTE, int(now) - settings.alert_window_s, int(now) + 60,
                                         model, version)
        stats = summarize(merge(docs))
        min_requests = policy.get("alert_min_requests") or settings.alert_min_requests
        if stats["requests"] >= min_requests:
            limit = policy.get("error_rate_alert")
            if limit is not None and stats["error_rate"] > limit:
                raised.append(raise_alert(db, settings, model, version, "error_rate", stats["error_rate"], limit,
                                          f"model '{model}' version {version}: error rate {stats['error_rate']:.1%} "
                                          f"over {stats['requests']} requests is above {limit:.1%}",
                                          {"errors_by_kind": stats["errors_by_kind"]}, now))
            p99, limit = stats["latency_ms"]["p99"], policy.get("p99_alert_ms")
            if limit is not None and p99 is not None and p99 > limit:
                raised.append(raise_alert(db, settings, model, version, "p99_latency", p99, limit,
                                          f"model '{model}' version {version}: p99 latency {p99:.1f} ms is above {limit} ms",
                                          None, now))
        if policy.get("log_sample_rate"):
            raised.append(check_drift_alert(db, settings, model, version, now))
    return [a for a in raised if a]


class Housekeeper:
    """Runs after each flush: alert checks and roll-up at their own intervals."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last_alerts = time.monotonic()
        self._last_rollup = 0.0
        self._last_sample = 0.0
        self._probe: QueueProbe | None = None

    def __call__(self, recorder: MetricsRecorder) -> None:
        """Check alerts, sample the pools and roll up when their interval has passed."""
        now = time.monotonic()
        if now - self._last_sample >= self.settings.pool_sample_interval_s:
            self._last_sample = now
            self.sample_pools(recorder.db)
        if now - self._last_alerts >= self.settings.alert_interval_s:
            self._last_alerts = now
            check_alerts(recorder.db, self.settings, recorder.recently_seen(self.settings.alert_window_s))
        if now - self._last_rollup >= self.settings.metrics_rollup_interval_s:
            self._last_rollup = now
            rollup(recorder.db, self.settings)

    def sample_pools(self, db: Any) -> None:
        """Record every pool's workers and queue depth, at a time rounded to the sampling interval."""
        if self._probe is None:
            self._probe = QueueProbe(self.settings.broker_url)
        step = self.settings.pool_sample_interval_s
        t = int(time.time() // step * step)
        metrics_repo.record_pool_samples(db, t, pool_snapshot(db, self.settings, self._probe))


def check_drift_alert(db: Any, settings: Settings, model: str, version: int, now: float | None = None) -> dict[str, Any] | None:
    """Measure drift of a version's logged inputs; raise an alert when any feature is at 'alert'."""
    try:
        doc = models_repo.get_version(db, model, version)
    except Exception:  # archived or deleted meanwhile: nothing to compare
        return None
    if not doc.get("reference_stats"):
        return None
    report = drift_report(db, settings, doc, settings.drift_window_s, now)
    if report["status"] != "alert":
        return None
    flagged = [f["feature"] for f in report["features"] if f["status"] == "alert"]
    worst = max(f["psi"] for f in report["features"] if f["status"] == "alert")
    return raise_alert(db, settings, model, version, "drift", worst, report["thresholds"]["psi_alert"],
                       f"model '{model}' version {version}: input drift on {', '.join(flagged)}", {"features": flagged}, now)
