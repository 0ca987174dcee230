"""The audit trail: append-only entries, chained with HMAC-SHA256 under a key the repository does not hold.

Each entry's ``_id`` (and ``seq``) is its sequence number and carries the MAC of the entry before it
(``prev_hash``); its own ``hash`` is the HMAC-SHA256 of its content and that link under the audit key
(MODELDECK_AUDIT_KEY, else derived from MODELDECK_SECRET_KEY), so someone who can write to the repository but
does not hold the key cannot rewrite an entry and recompute the chain. Sorting and ranges use ``seq``:
nx-27017 sorts integer ``_id`` values as text. Appending inserts ``_id = last + 1``; two writers racing for the
same number collide on the unique ``_id`` and the loser re-reads the tail and retries, so concurrent processes
can never fork the chain.

The newest entry is recorded twice: in the repository's head document (as before), and as a *signed head*
(sequence, MAC, signature) in a file outside the repository (``MODELDECK_HOME/state/audit-head.json``), written
under a file lock by every process of this host that appends, and returned by each verification for the
operator to keep. Deleting entries from the end and rewriting the head document is caught by that file.

Chains written before entries were keyed (plain SHA-256, no ``alg``) are re-anchored once: the first keyed
entry (``audit.reanchor``) links to the last plain hash, so a later rewrite of the old entries is caught too.
A key rotation is one ``audit.rotate`` entry signed by the new key (``hash``) and the old one (``old_mac``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import orjson
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from server.core.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
ALG = "hmac-sha256"
REANCHOR, ROTATE = "audit.reanchor", "audit.rotate"
# Entries fetched per query when walking the trail (verify, export). Small on purpose: with 1,000, each walk held
# ~5 MB of entries at once, and walks repeated while other threads allocated fragmented the API's heap: its memory
# rose ~20 MB in 4 minutes of jobs plus audit reads and kept rising in the soak (docs/reliability.md#memory).
# 100 keeps a walk's peak near 0.6 MB for ~14% more time.
WALK_BATCH = 100
FIELDS = ("time", "actor", "method", "role", "action", "target", "outcome", "status", "request_id", "client", "details")
_DERIVE_LABEL = b"modeldeck audit chain v1"


@dataclass(frozen=True)
class AuditKeys:
    """The key entries are signed with, older keys still accepted when verifying, and the signed head's file."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    head_path: Path | None = None
    by_id: dict[str, bytes] = dc_field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for key in (self.current, *self.previous):
            self.by_id[key_id(key)] = key

    @property
    def current_id(self) -> str:
        """Return the current key's id (a fingerprint; it reveals nothing of the key)."""
        return key_id(self.current)


def key_id(key: bytes) -> str:
    """Return a key's public fingerprint, stored with each entry so verification knows which key signed it."""
    return hashlib.sha256(b"modeldeck audit key id|" + key).hexdigest()[:16]


def _key_bytes(value: str) -> bytes:
    return value.encode()


def audit_keys(settings: Settings) -> AuditKeys:
    """Return the audit keys from settings; SettingsError names the variable when there is none."""
    explicit = settings.audit_key.get_secret_value()
    secret = settings.secret_key.get_secret_value()
    if explicit:
        current = _key_bytes(explicit)
    elif secret:
        # Derived, so the key the stack already keeps (and rotates) also keys the chain; the label separates uses.
        current = derived_key(secret)
    else:
        raise SettingsError(
            "MODELDECK_AUDIT_KEY is not set (nor MODELDECK_SECRET_KEY to derive it from): the audit trail is signed "
            "with a key the repository does not hold; set one of them (see docs/security.md#audit-trail)")
    # An old key as given, and as derived in case it was an old MODELDECK_SECRET_KEY the chain key came from.
    previous = tuple(key for k in settings.audit_previous_keys if k.get_secret_value()
                     for key in (_key_bytes(k.get_secret_value()), derived_key(k.get_secret_value())))
    return AuditKeys(current=current, previous=previous, head_path=settings.home / "state" / "audit-head.json")


def derived_key(secret_key: str) -> bytes:
    """Return the audit key derived from a secret key (for rotating MODELDECK_SECRET_KEY)."""
    return hmac.new(secret_key.encode(), _DERIVE_LABEL, hashlib.sha256).digest()


def _body(doc: dict[str, Any]) -> bytes:
    names = (*FIELDS, "seq", "prev_hash") + (("alg", "key_id") if doc.get("alg") else ())
    return orjson.dumps({k: doc.get(k) for k in names}, option=orjson.OPT_SORT_KEYS)


def entry_hash(doc: dict[str, Any]) -> str:
    """Hash an unkeyed (pre-upgrade) entry's content and its link to the previous entry."""
    return hashlib.sha256(_body(doc)).hexdigest()


def entry_mac(doc: dict[str, Any], key: bytes) -> str:
    """Return the HMAC-SHA256 of an entry's content and its link to the previous entry."""
    return hmac.new(key, _body(doc), hashlib.sha256).hexdigest()


def head_signature(seq: int, mac: str, key: bytes) -> str:
    """Sign a head: the newest entry's sequence number and MAC."""
    return hmac.new(key, f"modeldeck audit head|{seq}|{mac}".encode(), hashlib.sha256).hexdigest()


def signed_head(doc: dict[str, Any], keys: AuditKeys) -> dict[str, Any]:
    """Return the signed head naming an entry, for the head file and for the operator to keep."""
    return {"seq": doc["seq"], "mac": doc["hash"], "key_id": keys.current_id,
            "signature": head_signature(doc["seq"], doc["hash"], keys.current)}


_HEAD_BYTES = 512  # the head is rewritten in place, always this long, so a write never leaves a longer tail behind
_UNREADABLE = {"seq": 0, "mac": "", "key_id": "", "signature": "unreadable"}
_head_fds: dict[tuple[int, Path], int] = {}
_head_lock = threading.Lock()  # flock does not exclude threads sharing one descriptor; this does


def _parse_head(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        return dict(json.loads(raw))
    except ValueError:
        # A torn or edited file must not read as "no head": that would hide a deleted tail.
        return dict(_UNREADABLE)


def read_head_file(path: Path | None) -> dict[str, Any] | None:
    """Return the signed head kept outside the repository, or None when there is none yet."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)  # never half of a write in progress
            return _parse_head(f.read())
    except FileNotFoundError:
        return None


def _head_fd(path: Path) -> int:
    """Return this process's descriptor of the head file, opened (and created, mode 600) once."""
    key = (os.getpid(), path)  # a forked child opens its own
    fd = _head_fds.get(key)
    if fd is not None:
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the file was removed or replaced behind this process: write the one at the path
            os.close(fd)
            fd = None
    if fd is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _head_fds[key] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return fd


def advance_head_file(doc: dict[str, Any], keys: AuditKeys) -> None:
    """Move the signed head to this entry unless another process of this host already moved it further."""
    path = keys.head_path
    if path is None:
        return
    with _head_lock:
        fd = _head_fd(path)
        # One writer at a time across this host's processes, readers shut out while it writes. In place, not by
        # rename, which cost up to 20 times more per entry here (docs/security.md, tests/bench/audit_head.py).
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = _parse_head(os.pread(fd, _HEAD_BYTES, 0))
            if current is not None and current.get("signature") == "unreadable":
                logger.error("the signed audit head %s is unreadable; leaving it for an admin to look at", path)
                return
            if current is not None and int(current.get("seq", 0)) >= doc["seq"]:
                return
            os.pwrite(fd, json.dumps(signed_head(doc, keys)).encode().ljust(_HEAD_BYTES), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def ensure_audit_indexes(db: Database) -> None:
    """Index the fields the audit browser filters on."""
    db.audit.create_index([("seq", ASCENDING)], name="audit_seq", unique=True)
    for field in ("time", "actor", "action", "target", "outcome"):
        db.audit.create_index([(field, ASCENDING)], name=f"audit_{field}")


def append(db: Database, entry: dict[str, Any], keys: AuditKeys, attempts: int = 200) -> dict[str, Any]:
    """Append one entry at the end of the chain, signed with the current key, and return it."""
    return _append(db, entry, keys, attempts)


def _append(db: Database, entry: dict[str, Any], keys: AuditKeys, attempts: int = 200,
            expect_tail: Any = None) -> dict[str, Any]:
    for _ in range(attempts):
        last = db.audit.find_one({}, {"hash": 1, "seq": 1, "alg": 1, "key_id": 1}, sort=[("seq", DESCENDING)])
        if expect_tail is not None and not expect_tail(last):
            return {}  # another process wrote the re-anchor or rotation entry first
        seq = (last["seq"] + 1) if last else 1
        doc = {**{k: entry.get(k) for k in FIELDS}, "_id": seq, "seq": seq, "prev_hash": last["hash"] if last else GENESIS,
               "alg": ALG, "key_id": keys.current_id}
        if entry.get("old_key") is not None:
            # A rotation: the old key vouches for the same content, so the chain passes from one key to the next.
            doc["old_mac"] = entry_mac(doc, entry["old_key"])
        doc["hash"] = entry_mac(doc, keys.current)
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
        try:
            advance_head_file(doc, keys)
        except OSError as exc:
            # The entry is stored; failing the request now would not unstore it. Say loudly what is weakened.
            logger.error("could not move the signed audit head in %s (%s): a deletion of entries after %d from the "
                         "end of the trail goes undetected by this host until it can", keys.head_path, exc, seq - 1)
        return doc
    raise RuntimeError("could not append to the audit trail: too much contention")


def _system_entry(action: str, details: dict[str, Any]) -> dict[str, Any]:
    from server.core.clock import now_iso

    return {"time": now_iso(), "actor": "system", "method": "system", "role": None, "action": action,
            "target": "audit", "outcome": "success", "status": None, "request_id": None, "client": None,
            "details": details}


def prepare_chain(db: Database, keys: AuditKeys) -> str | None:
    """At start: re-anchor an unkeyed chain, or record a key rotation, once; return what was done, if anything.

    Raises SettingsError when the newest entry is signed with a key that is neither current nor listed as
    previous: appending under another key without a rotation entry would break the chain.
    """
    last = db.audit.find_one({}, {"seq": 1, "alg": 1, "key_id": 1, "hash": 1}, sort=[("seq", DESCENDING)])
    done = None
    if last is not None and not last.get("alg"):
        wrote = _append(db, _system_entry(REANCHOR, {"unkeyed_entries": last["seq"], "last_unkeyed_hash": last["hash"]}),
                        keys, expect_tail=lambda tail: tail is not None and not tail.get("alg"))
        done = "reanchored" if wrote else None
    elif last is not None and last.get("key_id") != keys.current_id:
        old = keys.by_id.get(str(last.get("key_id")))
        if old is None:
            raise SettingsError(
                f"the audit trail's newest entry ({last['seq']}) is signed with key id {last.get('key_id')}, not with "
                f"MODELDECK_AUDIT_KEY's (id {keys.current_id}); to rotate, list the old key in "
                "MODELDECK_AUDIT_PREVIOUS_KEYS (docs/security.md#audit-trail)")
        old_id = last.get("key_id")
        wrote = _append(db, {**_system_entry(ROTATE, {"old_key_id": old_id, "new_key_id": keys.current_id}),
                             "old_key": old}, keys, expect_tail=lambda tail: tail is not None and tail.get("key_id") == old_id)
        done = "rotated" if wrote else None
    if read_head_file(keys.head_path) is None:
        tail = db.audit.find_one({}, sort=[("seq", DESCENDING)])
        if tail is not None and tail.get("alg"):
            # First start with a head file here: trust the repository's tail as of now, and say so.
            logger.warning("no signed audit head at %s yet; starting it at entry %d", keys.head_path, tail["seq"])
            try:
                advance_head_file(tail, keys)
            except OSError as exc:
                raise SettingsError(f"cannot write the signed audit head {keys.head_path} ({exc}): MODELDECK_HOME "
                                    "must be writable by the API (docs/security.md#audit-trail)") from exc
    return done


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


def verify(db: Database, keys: AuditKeys, kept_by_caller: tuple[int, str] | None = None) -> dict[str, Any]:
    """Walk the chain; report the first entry that was edited, removed, relinked or signed with the wrong key,
    and a tail deleted behind the signed head (the file's, and the one a caller kept from an earlier answer, as
    (seq, mac)); return the signed head of the newest entry walked."""
    # Heads are read before the walk: an entry is inserted before the heads move to it, so every entry up to them
    # exists when the walk passes; entries appended during the walk are walked or not, never "deleted".
    head = db.audit_head.find_one({"_id": "head"})
    kept = read_head_file(keys.head_path)
    if kept is not None:
        signer = keys.by_id.get(str(kept.get("key_id")))
        if signer is None or not hmac.compare_digest(str(kept.get("signature")),
                                                     head_signature(int(kept.get("seq", 0)), str(kept.get("mac")), signer)):
            return {"valid": False, "entries": 0, "first_broken": {
                "seq": int(kept.get("seq", 0) or 0), "reason": f"the signed head in {keys.head_path} does not verify "
                                                               "(edited, or signed with a key not configured)"}}
    expected_seq, prev, count = 1, GENESIS, 0
    signer_id: str | None = None
    unkeyed = 0
    last: dict[str, Any] | None = None

    def broken(seq: int, reason: str) -> dict[str, Any]:
        return {"valid": False, "entries": count, "first_broken": {"seq": seq, "reason": reason}}

    for doc in iterate(db):
        count += 1
        seq = doc["seq"]
        if seq != expected_seq:
            return broken(expected_seq, f"entry {expected_seq} is missing (the next one is {seq})")
        if doc.get("prev_hash") != prev:
            return broken(seq, "its link to the previous entry does not match")
        if doc["_id"] != seq:
            return broken(seq, "its content does not match its hash (edited)")
        if not doc.get("alg"):
            if signer_id is not None:
                return broken(seq, "it carries no MAC, but the chain was already keyed (inserted or rewritten)")
            if entry_hash(doc) != doc.get("hash"):
                return broken(seq, "its content does not match its hash (edited)")
            unkeyed += 1
        else:
            key = keys.by_id.get(str(doc.get("key_id")))
            if key is None or doc.get("alg") != ALG:
                return broken(seq, f"it is signed with key id {doc.get('key_id')}, which is neither MODELDECK_AUDIT_KEY "
                                   "nor in MODELDECK_AUDIT_PREVIOUS_KEYS")
            if not hmac.compare_digest(entry_mac(doc, key), str(doc.get("hash"))):
                return broken(seq, "its content does not match its MAC (edited, or signed with another key)")
            if signer_id is not None and doc["key_id"] != signer_id:
                old = keys.by_id.get(signer_id)
                if doc.get("action") != ROTATE or old is None or not hmac.compare_digest(
                        entry_mac(doc, old), str(doc.get("old_mac"))):
                    return broken(seq, f"the key changed from id {signer_id} to {doc['key_id']} without a rotation "
                                       "entry signed by both")
            signer_id = str(doc["key_id"])
        if kept is not None and seq == int(kept.get("seq", 0)) and doc["hash"] != kept.get("mac"):
            return broken(seq, f"it is not the entry the signed head in {keys.head_path} names (rewritten)")
        if kept_by_caller is not None and seq == kept_by_caller[0] and doc["hash"] != kept_by_caller[1]:
            return broken(seq, "it is not the entry the head you kept names (rewritten)")
        prev, expected_seq, last = doc["hash"], expected_seq + 1, doc
    caller = {"seq": kept_by_caller[0]} if kept_by_caller is not None else None
    for name, tail in (("the repository's head", head), (f"the signed head in {keys.head_path}", kept),
                       ("the head you kept", caller)):
        if tail is not None and int(tail["seq"]) >= expected_seq:
            return broken(expected_seq, f"entries {expected_seq} to {tail['seq']} were deleted from the end "
                                        f"({name} names entry {tail['seq']})")
    report: dict[str, Any] = {"valid": True, "entries": count}
    if unkeyed:
        report["unkeyed_entries"] = unkeyed
    if last is not None and last.get("alg"):
        report["head"] = signed_head(last, keys)
    return report
