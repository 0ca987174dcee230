"""The audit trail: append-only entries, hash-chained, numbered without gaps.

Each entry's ``_id`` (and ``seq``) is its sequence number and carries the hash of the entry
before it. Sorting and ranges use ``seq``: nx-27017 sorts integer ``_id`` values as text.
Appending inserts ``_id = last + 1``; two writers racing for the same number collide on
the unique ``_id`` and the loser re-reads the tail and retries, so concurrent API processes
can never fork the chain. A head document records the newest entry, so deleting entries
from the end is detected too.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

GENESIS = "0" * 64
# Entries fetched per query when walking the trail (verify, export). Small on purpose: with 1,000, each walk held
# ~5 MB of entries at once, and walks repeated while other threads allocated fragmented the API's heap: its memory
# rose ~20 MB in 4 minutes of jobs plus audit reads and kept rising in the soak (docs/reliability.md#memory).
# 100 keeps a walk's peak near 0.6 MB for ~14% more time.
WALK_BATCH = 100
FIELDS = ("time", "actor", "method", "role", "action", "target", "outcome", "status", "request_id", "client", "details")


def entry_hash(doc: dict[str, Any]) -> str:
    """Hash an entry's content and its link to the previous entry."""
    body = {k: doc.get(k) for k in (*FIELDS, "seq", "prev_hash")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def ensure_audit_indexes(db: Database) -> None:
    """Index the fields the audit browser filters on."""
    db.audit.create_index([("seq", ASCENDING)], name="audit_seq", unique=True)
    for field in ("time", "actor", "action", "target", "outcome"):
        db.audit.create_index([(field, ASCENDING)], name=f"audit_{field}")


def append(db: Database, entry: dict[str, Any], attempts: int = 200) -> dict[str, Any]:
    """Append one entry at the end of the chain and return it."""
    for _ in range(attempts):
        last = db.audit.find_one({}, {"hash": 1, "seq": 1}, sort=[("seq", DESCENDING)])
        seq = (last["seq"] + 1) if last else 1
        doc = {**{k: entry.get(k) for k in FIELDS}, "_id": seq, "seq": seq, "prev_hash": last["hash"] if last else GENESIS}
        doc["hash"] = entry_hash(doc)
        try:
            db.audit.insert_one(doc)
        except DuplicateKeyError:
            # Another process appended first; take the new tail.
            time.sleep(random.uniform(0, 0.002))
            continue
        if db.audit_head.update_one({"_id": "head", "seq": {"$lt": seq}}, {"$set": {"seq": seq, "hash": doc["hash"]}}).matched_count == 0:
            try:
                db.audit_head.insert_one({"_id": "head", "seq": seq, "hash": doc["hash"]})
            except DuplicateKeyError:
                pass
        return doc
    raise RuntimeError("could not append to the audit trail: too much contention")


def query(db: Database, filters: dict[str, str | None], limit: int, before: int | None) -> list[dict[str, Any]]:
    """Return up to limit entries, newest first, matching exact filters and a time range."""
    q: dict[str, Any] = {}
    for field in ("actor", "action", "target", "outcome"):
        if filters.get(field):
            q[field] = filters[field]
    span: dict[str, str] = {}
    if filters.get("since"):
        span["$gte"] = filters["since"]  # type: ignore[assignment]
    if filters.get("until"):
        span["$lt"] = filters["until"]  # type: ignore[assignment]
    if span:
        q["time"] = span
    if filters.get("target_prefix"):
        q["target"] = {"$regex": "^" + re.escape(filters["target_prefix"] or "")}
    if before is not None:
        q["seq"] = {"$lt": before}
    return list(db.audit.find(q).sort("seq", DESCENDING).limit(limit))


def iterate(db: Database, batch: int = WALK_BATCH) -> Iterator[dict[str, Any]]:
    """Yield every entry in chain order, a batch of ids at a time."""
    after = 0
    while True:
        docs = list(db.audit.find({"seq": {"$gt": after}}).sort("seq", ASCENDING).limit(batch))
        if not docs:
            return
        yield from docs
        after = docs[-1]["seq"]


def verify(db: Database) -> dict[str, Any]:
    """Walk the chain; report the first entry that was edited, removed or relinked."""
    # The head is read before the walk: an entry is inserted before the head moves to it, so every entry up to
    # this head exists when the walk passes; entries appended during the walk are walked or not, never "deleted".
    head = db.audit_head.find_one({"_id": "head"})
    expected_seq, prev, count = 1, GENESIS, 0
    for doc in iterate(db):
        count += 1
        if doc["seq"] != expected_seq:
            return {"valid": False, "entries": count, "first_broken": {
                "seq": expected_seq, "reason": f"entry {expected_seq} is missing (the next one is {doc['seq']})"}}
        if doc.get("prev_hash") != prev:
            return {"valid": False, "entries": count, "first_broken": {
                "seq": doc["seq"], "reason": "its link to the previous entry does not match"}}
        if entry_hash(doc) != doc.get("hash") or doc["_id"] != doc["seq"]:
            return {"valid": False, "entries": count, "first_broken": {
                "seq": doc["seq"], "reason": "its content does not match its hash (edited)"}}
        prev, expected_seq = doc["hash"], expected_seq + 1
    if head is not None and head["seq"] >= expected_seq:
        return {"valid": False, "entries": count, "first_broken": {
            "seq": expected_seq, "reason": f"entries {expected_seq} to {head['seq']} were deleted from the end"}}
    return {"valid": True, "entries": count}
