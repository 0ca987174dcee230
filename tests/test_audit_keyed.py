"""The audit chain is keyed: someone who can write to the repository but lacks the key cannot rewrite it unseen.

Each test tampers with the session's real repository the way such a writer would, asks the API to verify, and puts
the entries back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
import requests

from conftest import SECRET_KEY, Client, Proc, Stack, free_port, unique, wait_for
from isolation import isolated_stack
from server.core import audit_repo, keys_repo
from server.core.settings import Settings, SettingsError


@pytest.fixture
def restore(stack: Stack, admin: Client) -> Iterator[list[dict[str, Any]]]:
    """Give the chain a few more entries, then put every entry and the head document back as they were after them
    (the signed head file names the newest, so later verifications in the session must find it)."""
    fill(admin)
    saved = list(stack.db.audit.find())
    head = stack.db.audit_head.find_one({"_id": "head"})
    yield saved
    stack.db.audit.delete_many({})
    stack.db.audit.insert_many(saved)
    if head is not None:
        stack.db.audit_head.replace_one({"_id": "head"}, head)
    assert verify(admin)["valid"] is True, "the chain was not put back whole"


def verify(admin: Client) -> dict[str, Any]:
    resp = admin.get("/api/v1/audit/verify")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def fill(admin: Client, n: int = 6) -> None:
    """Give the chain a few more entries (key creations) so there is a middle and an end to tamper with."""
    for _ in range(n):
        assert admin.post("/api/v1/apikeys", json={"name": unique("chain"), "role": "service"}).status_code == 201


def rechain(db: Any, start: int, edit: dict[str, Any], sign: Any) -> None:
    """Rewrite entry start with edit, then recompute every later entry's link and hash with sign(doc)."""
    prev = db.audit.find_one({"seq": start - 1})["hash"] if start > 1 else audit_repo.GENESIS
    for doc in list(db.audit.find({"seq": {"$gte": start}}).sort("seq", 1)):
        if doc["seq"] == start:
            doc.update(edit)
        doc["prev_hash"] = prev
        doc["hash"] = prev = sign(doc)
        db.audit.replace_one({"_id": doc["_id"]}, doc)
    last = db.audit.find_one({}, sort=[("seq", -1)])
    db.audit_head.update_one({"_id": "head"}, {"$set": {"seq": last["seq"], "hash": last["hash"]}})


def test_verify_returns_the_signed_head_also_kept_outside_the_repository(stack: Stack, admin: Client) -> None:
    fill(admin, 2)
    report = verify(admin)
    assert report["valid"] is True
    last = stack.db.audit.find_one({}, sort=[("seq", -1)])
    assert report["head"]["seq"] == last["seq"] and report["head"]["mac"] == last["hash"]
    kept = json.loads((stack.settings.home / "state" / "audit-head.json").read_text())
    assert kept == report["head"]
    assert oct((stack.settings.home / "state" / "audit-head.json").stat().st_mode & 0o777) == "0o600"


def test_rewriting_an_entry_and_recomputing_plain_hashes_is_caught_at_that_entry(stack: Stack, admin: Client,
                                                                                 restore: list[dict[str, Any]]) -> None:
    victim = stack.db.audit.count_documents({}) - 3
    # What defeated the old chain: change the actor, recompute the sha256 of it and of every later entry.
    rechain(stack.db, victim, {"actor": "apikey:someone-else"}, audit_repo.entry_hash)
    report = verify(admin)
    assert report["valid"] is False
    assert report["first_broken"] == {"seq": victim,
                                      "reason": "its content does not match its MAC (edited, or signed with another key)"}


def test_recomputing_the_macs_with_a_wrong_key_is_caught(stack: Stack, admin: Client,
                                                          restore: list[dict[str, Any]]) -> None:
    victim = stack.db.audit.count_documents({}) - 4
    guess = secrets.token_bytes(32)
    rechain(stack.db, victim, {"outcome": "denied"}, lambda doc: audit_repo.entry_mac(doc, guess))
    report = verify(admin)
    assert report["first_broken"] == {"seq": victim,
                                      "reason": "its content does not match its MAC (edited, or signed with another key)"}
    # Claiming another key does not help: the verifier only accepts the keys it holds.
    stack.db.audit.update_one({"seq": victim}, {"$set": {"key_id": audit_repo.key_id(guess)}})
    assert verify(admin)["first_broken"]["reason"] == (
        f"it is signed with key id {audit_repo.key_id(guess)}, which is neither MODELDECK_AUDIT_KEY nor in "
        "MODELDECK_AUDIT_PREVIOUS_KEYS")


def test_stripping_the_macs_off_the_newest_entries_is_caught(stack: Stack, admin: Client,
                                                             restore: list[dict[str, Any]]) -> None:
    victim = stack.db.audit.count_documents({}) - 2

    def plain(doc: dict[str, Any]) -> str:
        doc.pop("alg", None)
        doc.pop("key_id", None)
        return audit_repo.entry_hash(doc)

    rechain(stack.db, victim, {"actor": "apikey:someone-else"}, plain)
    assert verify(admin)["first_broken"] == {
        "seq": victim, "reason": "it carries no MAC, but the chain was already keyed (inserted or rewritten)"}


def test_deleting_the_last_entries_and_fixing_the_head_document_is_caught(stack: Stack, admin: Client,
                                                                          restore: list[dict[str, Any]]) -> None:
    total = stack.db.audit.count_documents({})
    stack.db.audit.delete_many({"seq": {"$gt": total - 3}})
    new_tail = stack.db.audit.find_one({"seq": total - 3})
    stack.db.audit_head.update_one({"_id": "head"}, {"$set": {"seq": new_tail["seq"], "hash": new_tail["hash"]}})
    report = verify(admin)
    head_file = stack.settings.home / "state" / "audit-head.json"
    assert report["first_broken"] == {
        "seq": total - 2,
        "reason": f"entries {total - 2} to {total} were deleted from the end (the signed head in {head_file} names entry {total})"}


def test_the_api_refuses_to_start_without_an_audit_key(stack: Stack) -> None:
    port = free_port()
    log = stack.tmp / f"api-nokey-{port}.log"
    proc = Proc([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                 "server.http.wsgi:app"], {**stack.env, "MODELDECK_SECRET_KEY": "", "MODELDECK_AUDIT_KEY": ""}, log)
    try:
        wait_for(lambda: not proc.alive(), 60, "the API's refusal to start")
    finally:
        proc.stop()
    assert proc.popen.returncode != 0
    assert ("MODELDECK_AUDIT_KEY is not set (nor MODELDECK_SECRET_KEY to derive it from): the audit trail is signed "
            "with a key the repository does not hold") in log.read_text()


def _legacy_chain(db: Any, n: int) -> None:
    """Write n entries the way ModelDeck did before the chain was keyed: plain sha256, no alg."""
    prev = audit_repo.GENESIS
    for seq in range(1, n + 1):
        doc = {"time": f"2026-11-01T00:00:0{seq}.000000+00:00", "actor": "apikey:old", "method": "apikey",
               "role": "admin", "action": "model.upload", "target": f"m:{seq}", "outcome": "success", "status": 201,
               "request_id": f"r{seq}", "client": "127.0.0.1", "details": {}, "_id": seq, "seq": seq, "prev_hash": prev}
        doc["hash"] = prev = audit_repo.entry_hash(doc)
        db.audit.insert_one(doc)
    db.audit_head.insert_one({"_id": "head", "seq": n, "hash": prev})


def _start_api(stack: Stack, env: dict[str, str]) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
                 "server.http.wsgi:app"], {**stack.env, **env}, stack.tmp / f"api-upgrade-{port}.log")
    return proc, f"http://127.0.0.1:{port}"


def _answers(proc: Proc, url: str) -> bool:
    if not proc.alive():
        pytest.fail(f"API exited:\n{proc.log.read_text()[-3000:]}")
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def private(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """A repository of the test's own (nx-27017 keeps one index namespace per server, so not another database)."""
    with isolated_stack(stack, tmp_path) as (own, _):
        yield own


def test_an_unkeyed_chain_is_reanchored_once_when_two_apis_start_on_it(private: Stack) -> None:
    db = private.db
    _legacy_chain(db, 5)
    _, key = keys_repo.create_key(db, "upgrade-admin", "admin", None, None, "tests")
    apis = [_start_api(private, {}) for _ in range(2)]  # both start at once on the same unkeyed chain
    try:
        for proc, url in apis:
            wait_for(partial(_answers, proc, url), 60, "API", proc.log)
        anchors = list(db.audit.find({"action": audit_repo.REANCHOR}))
        assert len(anchors) == 1 and anchors[0]["seq"] == 6
        assert anchors[0]["details"] == {"unkeyed_entries": 5, "last_unkeyed_hash": db.audit.find_one({"seq": 5})["hash"]}
        admin = Client(apis[0][1], key)
        report = verify(admin)
        assert report["valid"] is True and report["unkeyed_entries"] == 5 and report["head"]["seq"] == 6
        # From the anchor on, the old entries are protected too: a rewrite with recomputed plain hashes breaks its link.
        old = list(db.audit.find({"seq": {"$lte": 5}}).sort("seq", 1))
        prev = old[1]["prev_hash"]
        for doc in old[1:]:
            doc["actor"] = "apikey:forger" if doc["seq"] == 2 else doc["actor"]
            doc["prev_hash"] = prev
            doc["hash"] = prev = audit_repo.entry_hash(doc)
            db.audit.replace_one({"_id": doc["_id"]}, doc)
        assert verify(admin)["first_broken"] == {"seq": 6, "reason": "its link to the previous entry does not match"}
    finally:
        for proc, _ in apis:
            proc.stop()


def test_a_key_rotation_is_one_entry_signed_by_the_old_and_the_new_key(private: Stack, tmp_path: Path) -> None:
    db = private.db
    old = Settings(secret_key=SECRET_KEY, home=tmp_path)
    old_keys = audit_repo.audit_keys(old)
    for i in range(3):
        audit_repo.append(db, {"time": "2026-12-01T00:00:00Z", "actor": "t", "action": "test", "target": str(i)}, old_keys)
    new = old.model_copy(update={"audit_key": SecretStr("a-new-audit-key-" + secrets.token_hex(16))})
    # The new key alone: the chain's newest entry is the old key's, and nothing vouches for the change.
    with pytest.raises(SettingsError, match="to rotate, list the old key in MODELDECK_AUDIT_PREVIOUS_KEYS"):
        audit_repo.prepare_chain(db, audit_repo.audit_keys(new))
    rotated = new.model_copy(update={"audit_previous_keys": (old.secret_key,)})
    new_keys = audit_repo.audit_keys(rotated)
    assert audit_repo.prepare_chain(db, new_keys) == "rotated"
    assert audit_repo.prepare_chain(db, new_keys) is None  # once
    entry = db.audit.find_one({"action": audit_repo.ROTATE})
    assert entry["seq"] == 4 and entry["key_id"] == new_keys.current_id
    assert entry["old_mac"] == audit_repo.entry_mac(entry, old_keys.current)
    assert entry["details"] == {"old_key_id": old_keys.current_id, "new_key_id": new_keys.current_id}
    audit_repo.append(db, {"time": "2026-12-01T00:00:01Z", "actor": "t", "action": "test", "target": "after"}, new_keys)
    assert audit_repo.verify(db, new_keys)["valid"] is True
    # Without the old key the verifier cannot check what it signed, and says so.
    alone = audit_repo.AuditKeys(current=new_keys.current, head_path=new_keys.head_path)
    report = audit_repo.verify(db, alone)
    assert report["first_broken"]["seq"] == 1 and "neither MODELDECK_AUDIT_KEY" in report["first_broken"]["reason"]
    # A change of key with no rotation entry is caught where it happens.
    db.audit.delete_one({"seq": 5})
    db.audit.update_one({"seq": 4}, {"$unset": {"old_mac": ""}})
    assert audit_repo.verify(db, new_keys)["first_broken"]["seq"] == 4


def test_the_head_file_never_moves_back(tmp_path: Path, private: Stack) -> None:
    # Processes of one host whose appends interleave leave the head at the newest entry, never behind it.
    keys = audit_repo.audit_keys(Settings(secret_key=SECRET_KEY, home=tmp_path))
    docs = [audit_repo.append(private.db, {"action": "test", "target": str(i)}, keys) for i in range(3)]
    audit_repo.advance_head_file(docs[0], keys)  # a slower process's older entry must not move it back
    kept = json.loads(keys.head_path.read_text())
    assert kept["seq"] == 3 and kept["mac"] == docs[2]["hash"]
    expected = hmac.new(keys.current, f"modeldeck audit head|3|{docs[2]['hash']}".encode(), hashlib.sha256).hexdigest()
    assert kept["signature"] == expected


def test_a_head_kept_from_an_earlier_answer_catches_a_tail_deleted_with_the_head_file_lost(
        stack: Stack, admin: Client, restore: list[dict[str, Any]]) -> None:
    kept = verify(admin)["head"]
    head_file = stack.settings.home / "state" / "audit-head.json"
    saved_file = head_file.read_bytes()
    total = kept["seq"]
    stack.db.audit.delete_many({"seq": {"$gt": total - 3}})
    new_tail = stack.db.audit.find_one({"seq": total - 3})
    stack.db.audit_head.update_one({"_id": "head"}, {"$set": {"seq": new_tail["seq"], "hash": new_tail["hash"]}})
    head_file.write_bytes(b"")  # the state directory was lost: this host's head starts over
    try:
        # The limit of the head file: with it gone, the shortened chain verifies ...
        assert verify(admin)["valid"] is True
        # ... and the head the operator kept still catches it.
        resp = admin.get("/api/v1/audit/verify", params={"head_seq": kept["seq"], "head_mac": kept["mac"]})
        assert resp.json()["first_broken"] == {
            "seq": total - 2, "reason": f"entries {total - 2} to {total} were deleted from the end (the head you kept "
                                        f"names entry {total})"}
    finally:
        head_file.write_bytes(saved_file)


def test_a_kept_head_needs_both_its_parts(admin: Client) -> None:
    resp = admin.get("/api/v1/audit/verify", params={"head_seq": 3})
    assert (resp.status_code, resp.json()["error"]["message"]) == (400, (
        "query parameters 'head_seq' and 'head_mac': give both (from the 'head' of an earlier answer) or neither, "
        "got head_seq=3, head_mac=None"))
