"""Metric buckets, prediction logs and alerts in MongoDB.

Buckets are keyed by model, version and bucket start (epoch seconds, an integer ``t``) and only ever
grow through ``$inc``, so any number of API processes can flush into the same bucket. Counter fields
are flat top-level names (``code_422_unprocessable``, ``h17``): nx-27017 stores a dotted ``$inc`` path
literally when the update inserts the document.
"""

from __future__ import annotations

from typing import Any, Iterable

from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

MINUTE = "metrics_minute"
HOUR = "metrics_hourly"
LOGS = "prediction_logs"
ALERTS = "alerts"
POOLS = "pool_samples"
_KEY_FIELDS = ("model", "version", "pool", "t")


def ensure_metrics_indexes(db: Database) -> None:
    """Create the indexes the monitoring queries use."""
    for coll in (MINUTE, HOUR):
        db[coll].create_index([("t", ASCENDING)], name=f"{coll}_by_t")
        db[coll].create_index([("model", ASCENDING), ("t", ASCENDING)], name=f"{coll}_by_model_t")
    db[LOGS].create_index([("model", ASCENDING), ("version", ASCENDING), ("t", ASCENDING)], name="logs_by_model_t")
    db[LOGS].create_index([("t", ASCENDING)], name="logs_by_t")
    db[ALERTS].create_index([("t", ASCENDING)], name="alerts_by_t")
    db[POOLS].create_index([("t", ASCENDING)], name="pool_samples_by_t")


def bucket_id(model: str, version: int, t: int) -> str:
    """Return the document id of one bucket."""
    return f"{model}|{version}|{t}"


def add_to_bucket(db: Database, coll: str, key: dict[str, Any], counts: dict[str, float]) -> None:
    """Add counts to a bucket, creating it on first use."""
    db[coll].update_one(
        {"_id": bucket_id(key["model"], key["version"], key["t"])},
        {"$inc": counts, "$setOnInsert": {k: key[k] for k in _KEY_FIELDS}},
        upsert=True,
    )


def find_buckets(db: Database, coll: str, since: int, until: int, model: str | None = None,
                 version: int | None = None) -> list[dict[str, Any]]:
    """Return buckets whose start lies in [since, until), optionally for one model and version."""
    query: dict[str, Any] = {"t": {"$gte": since, "$lt": until}}
    if model is not None:
        query["model"] = model
    if version is not None:
        query["version"] = version
    return list(db[coll].find(query))


def claim_minute_buckets(db: Database, before: int, limit: int = 1000) -> Iterable[dict[str, Any]]:
    """Yield minute buckets older than a time, each removed first so only one process rolls it up."""
    for doc in list(db[MINUTE].find({"t": {"$lt": before}}).limit(limit)):
        # Whoever deletes the bucket owns it; a concurrent housekeeper sees deleted_count 0 and skips it.
        if db[MINUTE].delete_one({"_id": doc["_id"]}).deleted_count == 1:
            yield doc


def delete_before(db: Database, coll: str, before: float) -> int:
    """Delete documents of a collection whose ``t`` is older than a time; return how many."""
    return int(db[coll].delete_many({"t": {"$lt": before}}).deleted_count)


def insert_logs(db: Database, rows: list[dict[str, Any]]) -> None:
    """Store sampled prediction log entries."""
    if rows:
        db[LOGS].insert_many(rows, ordered=False)


def find_logs(db: Database, model: str, version: int, since: float, limit: int) -> list[dict[str, Any]]:
    """Return logged predictions of a version since a time, newest last."""
    cursor = db[LOGS].find({"model": model, "version": version, "t": {"$gte": since}}, {"_id": 0}).sort("t", 1)
    return list(cursor.limit(limit))


def insert_alert(db: Database, alert: dict[str, Any]) -> bool:
    """Record an alert once per id; return False when another process already did."""
    try:
        db[ALERTS].insert_one(alert)
    except DuplicateKeyError:
        return False
    return True


def find_alerts(db: Database, since: float, model: str | None, limit: int,
                models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Return alerts since a time (of one model, or of these models), newest first."""
    query: dict[str, Any] = {"t": {"$gte": since}}
    if models is not None:
        query["model"] = {"$in": [m for m in models if not model or m == model]}
    elif model:
        query["model"] = model
    return list(db[ALERTS].find(query).sort("t", -1).limit(limit))


def record_pool_samples(db: Database, t: int, samples: list[dict[str, Any]]) -> None:
    """Store each pool's workers and queue depth at one sampling instant; a second process's sample replaces it."""
    for sample in samples:
        db[POOLS].update_one({"_id": f"{sample['pool']}|{t}"}, {"$set": {**sample, "t": t}}, upsert=True)


def find_pool_samples(db: Database, since: int, until: int) -> list[dict[str, Any]]:
    """Return pool samples whose time lies in [since, until), oldest first."""
    return list(db[POOLS].find({"t": {"$gte": since, "$lt": until}}, {"_id": 0}).sort("t", 1))
