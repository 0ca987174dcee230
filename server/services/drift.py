"""Data drift per feature between a version's reference sample and its logged inputs: PSI and Kolmogorov-Smirnov."""

from __future__ import annotations

import bisect
import math
import time
from typing import Any, TypedDict

from server.core import metrics_repo
from server.core.errors import UnprocessableError
from server.core.settings import Settings

_EPS = 1e-4
_BINS = 10
_MAX_ROWS = 20000



def _scipy_ks_2samp() -> Any:
    # Imported on first use: scipy.stats takes seconds to import, and most API processes never compute drift.
    try:  # scipy comes with scikit-learn; the fallback keeps drift working without it
        from scipy.stats import ks_2samp
    except ImportError:  # pragma: no cover
        return None
    return ks_2samp


class FeatureDrift(TypedDict):
    feature: str
    type: str
    psi: float
    ks_statistic: float | None
    ks_pvalue: float | None
    status: str


def _psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, _EPS), max(a, _EPS)
        total += (a - e) * math.log(a / e)
    return round(total, 6)


def psi_numeric(reference: list[float], current: list[float], bins: int = _BINS) -> float:
    """Population stability index over bins cut at the reference sample's quantiles."""
    ref = sorted(reference)
    edges = sorted({ref[min(len(ref) - 1, int(len(ref) * k / bins))] for k in range(1, bins)})

    def shares(values: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for v in values:
            counts[bisect.bisect_right(edges, v)] += 1
        return [c / len(values) for c in counts]

    return _psi(shares(ref), shares(current))


def psi_categorical(reference_counts: dict[str, int], current: list[str]) -> float:
    """Population stability index over the categories seen in either sample."""
    ref_total = sum(reference_counts.values()) or 1
    cur_counts: dict[str, int] = {}
    for v in current:
        cur_counts[v] = cur_counts.get(v, 0) + 1
    cats = sorted(set(reference_counts) | set(cur_counts))
    return _psi([reference_counts.get(c, 0) / ref_total for c in cats], [cur_counts.get(c, 0) / len(current) for c in cats])


def ks_test(reference: list[float], current: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy when installed, else the asymptotic formula)."""
    scipy_ks = _scipy_ks_2samp()
    if scipy_ks is not None:
        res = scipy_ks(reference, current)
        return float(res.statistic), float(res.pvalue)
    return ks_fallback(reference, current)


def ks_fallback(reference: list[float], current: list[float]) -> tuple[float, float]:
    """KS statistic by a merge of the sorted samples; p-value from the Kolmogorov distribution."""
    a, b = sorted(reference), sorted(current)
    n, m = len(a), len(b)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        x = min(a[i], b[j])
        while i < n and a[i] == x:
            i += 1
        while j < m and b[j] == x:
            j += 1
        d = max(d, abs(i / n - j / m))
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def _category(value: Any) -> str:
    # Reference counts come from CSV text; booleans arrive as JSON true/false.
    return str(value).lower() if isinstance(value, bool) else str(value)


def thresholds(settings: Settings, doc: Any) -> dict[str, float]:
    """Return a version's PSI thresholds: its monitoring policy, else the server defaults."""
    policy = doc.get("monitoring") or {}
    return {"psi_warn": policy.get("drift_psi_warn") or settings.drift_psi_warn,
            "psi_alert": policy.get("drift_psi_alert") or settings.drift_psi_alert}


def drift_report(db: Any, settings: Settings, doc: Any, window_s: int, now: float | None = None) -> dict[str, Any]:
    """Compare the reference sample of a version with its inputs logged over the last window_s seconds."""
    stats = doc.get("reference_stats")
    name, version = doc["name"], doc["version"]
    if not stats:
        raise UnprocessableError(
            f"model '{name}' version {version} has no reference sample; upload the version with a 'reference' CSV part",
            {"name": name, "version": version})
    now = now if now is not None else time.time()
    limits = thresholds(settings, doc)
    logs = metrics_repo.find_logs(db, name, version, now - window_s, _MAX_ROWS)
    rows = [row for entry in logs for row in entry["inputs"]]
    base = {"model": name, "version": version, "window_s": window_s, "rows": len(rows), "thresholds": limits,
            "log_sample_rate": (doc.get("monitoring") or {}).get("log_sample_rate", 0.0)}
    if len(rows) < settings.drift_min_rows:
        return {**base, "status": "insufficient_data", "features": [],
                "message": f"{len(rows)} logged rows in the window; drift needs at least {settings.drift_min_rows}"}
    schema = doc.get("input_schema") or []
    features: list[FeatureDrift] = []
    for k, spec in enumerate(schema):
        ref = stats["features"].get(spec["name"])
        if ref is None:
            continue
        column = [row[k] for row in rows if k < len(row) and row[k] is not None]
        if not column:
            continue
        ks_stat = ks_p = None
        if "sample" in ref:
            cur = [float(v) for v in column]
            psi = psi_numeric(ref["sample"], cur)
            ks_stat, ks_p = ks_test(ref["sample"], cur)
        else:
            psi = psi_categorical(ref["counts"], [_category(v) for v in column])
        status = "alert" if psi >= limits["psi_alert"] else "warn" if psi >= limits["psi_warn"] else "ok"
        features.append({"feature": spec["name"], "type": spec["type"], "psi": psi,
                         "ks_statistic": None if ks_stat is None else round(ks_stat, 6),
                         "ks_pvalue": None if ks_p is None else float(f"{ks_p:.6g}"), "status": status})
    order = {"ok": 0, "warn": 1, "alert": 2}
    overall = max((f["status"] for f in features), key=order.__getitem__, default="ok")
    return {**base, "status": overall, "features": features}
