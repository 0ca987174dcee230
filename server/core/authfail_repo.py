"""Failed sign-ins per client address, shared by every API process through the repository.

Failures are counted in buckets (``auth_failures``, one document per address and bucket start, grown with
``$inc`` so concurrent processes add up); an address over the limit gets one block document
(``auth_blocks``) that every API process reads. Old buckets and blocks are deleted by whoever purges next.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

FAILURES, BLOCKS = "auth_failures", "auth_blocks"


def ensure_authfail_indexes(db: Database) -> None:
    """Index failures by address and time, and blocks by their end."""
    db[FAILURES].create_index([("address", ASCENDING), ("t", ASCENDING)], name="auth_failures_by_address")
    db[FAILURES].create_index([("t", ASCENDING)], name="auth_failures_by_t")
    db[BLOCKS].create_index([("until", ASCENDING)], name="auth_blocks_by_until")


def record_failure(db: Database, address: str, now: float, bucket_s: float, window_s: float) -> int:
    """Count one failure of an address; return its failures within the window, this one included."""
    t = int(now // bucket_s * bucket_s)
    db[FAILURES].update_one({"_id": f"{address}|{t}"}, {"$inc": {"n": 1}, "$setOnInsert": {"address": address, "t": t}},
                            upsert=True)
    since = int((now - window_s) // bucket_s * bucket_s)
    return sum(int(d.get("n", 0)) for d in db[FAILURES].find({"address": address, "t": {"$gt": since}}, {"n": 1}))


def block(db: Database, address: str, until: float) -> None:
    """Refuse an address until a time (a later block of the same address wins)."""
    db[BLOCKS].update_one({"_id": address}, {"$max": {"until": until}}, upsert=True)


def active_blocks(db: Database, now: float) -> dict[str, float]:
    """Return every address blocked now, with the time its block ends."""
    return {str(d["_id"]): float(d["until"]) for d in db[BLOCKS].find({"until": {"$gt": now}})}


def purge(db: Database, now: float, window_s: float) -> None:
    """Delete failures older than the window and blocks that have ended: each address expires on its own."""
    db[FAILURES].delete_many({"t": {"$lt": now - window_s - 1}})
    db[BLOCKS].delete_many({"until": {"$lte": now}})


def clear(db: Database, address: str) -> Any:
    """Forget an address's failures and block (an operator's unblock; tests)."""
    db[FAILURES].delete_many({"address": address})
    return db[BLOCKS].delete_one({"_id": address})
