"""Time the audit browser with a large trail: append N chained entries, then query through the API.

Usage: ./modeldeck up, then
    .venv/bin/python tests/bench/audit_query.py [-n 100000] [--url http://127.0.0.1:8600] [--key-file .modeldeck/admin.key]
Entries are appended to the running stack's repository (MODELDECK_* settings) in batches, continuing
the existing chain, so /audit/verify must still say valid afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from server.core import audit_repo
from server.core.db import connect
from server.core.settings import load_settings

ACTIONS = ["model.upload", "model.alias", "model.archive", "apikey.create", "denied.models.upload"]


def append_bulk(n: int) -> float:
    settings = load_settings()
    keys = audit_repo.audit_keys(settings)
    db = connect(settings)
    last = db.audit.find_one({}, {"hash": 1, "seq": 1}, sort=[("seq", -1)])
    seq, prev = (last["seq"], last["hash"]) if last else (0, audit_repo.GENESIS)
    started = time.perf_counter()
    batch = []
    for i in range(n):
        seq += 1
        doc = {"time": f"2026-11-{1 + i * 25 // n:02d}T12:00:00.{i % 1000000:06d}+00:00", "actor": f"apikey:user{i % 50}",
               "method": "apikey", "role": "operator", "action": ACTIONS[i % len(ACTIONS)], "target": f"model{i % 200}:1",
               "outcome": "denied" if i % 5 == 4 else "success", "status": 403 if i % 5 == 4 else 200,
               "request_id": f"bench{i}", "client": "127.0.0.1", "details": {}, "_id": seq, "seq": seq, "prev_hash": prev,
               "alg": audit_repo.ALG, "key_id": keys.current_id}
        doc["hash"] = prev = audit_repo.entry_mac(doc, keys.current)
        batch.append(doc)
        if len(batch) == 2000:
            db.audit.insert_many(batch)
            batch = []
    if batch:
        db.audit.insert_many(batch)
    db.audit_head.update_one({"_id": "head"}, {"$set": {"seq": seq, "hash": prev}}, upsert=True)
    audit_repo.advance_head_file(doc, keys)
    return time.perf_counter() - started


def timed(session: requests.Session, url: str, params: dict[str, object], runs: int = 5) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        resp = session.get(url, params=params, timeout=300)
        times.append((time.perf_counter() - t) * 1000)
        resp.raise_for_status()
        count = len(resp.json().get("entries", []))
    return statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100000)
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--key-file", default=".modeldeck/admin.key")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmarks only run against a loopback address")
    print(f"appended {args.n} entries in {append_bulk(args.n):.1f} s")
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + open(args.key_file).read().strip()
    url = args.url + "/api/v1/audit"
    total = connect(load_settings()).audit.count_documents({})
    print(f"audit entries in the trail: {total}")
    for label, params in [
        ("newest page (limit 100)", {"limit": 100}),
        ("deep page (before seq 50000)", {"limit": 100, "before": 50000}),
        ("by actor", {"actor": "apikey:user7", "limit": 100}),
        ("by action + outcome", {"action": "denied.models.upload", "outcome": "denied", "limit": 100}),
        ("by target", {"target": "model42:1", "limit": 100}),
        ("time range (one day)", {"since": "2026-11-10T00:00:00", "until": "2026-11-11T00:00:00", "limit": 100}),
        ("rare actor (no match)", {"actor": "apikey:nobody", "limit": 100}),
    ]:
        ms, count = timed(session, url, params)
        print(f"GET /api/v1/audit {label:32} median {ms:8.1f} ms  ({count} entries)")
    t = time.perf_counter()
    report = session.get(args.url + "/api/v1/audit/verify", timeout=600).json()
    print(f"GET /api/v1/audit/verify: {report} in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
