"""The audit trail: one entry per state change and per denied request, hash-chained and verifiable."""

from __future__ import annotations

import csv
import io
import multiprocessing
from pathlib import Path
from typing import Any

import pymongo

from conftest import SECRET_KEY, Client, Proc, Stack, start_api, unique
from server.core import audit_repo
from server.core.settings import Settings


def entries(client: Client, **filters: Any) -> list[dict[str, Any]]:
    resp = client.get("/api/v1/audit", params=filters)
    assert resp.status_code == 200, resp.text
    return resp.json()["entries"]


def test_state_changes_are_recorded_with_actor_target_and_request_id(admin: Client, operator: Client,
                                                                     iris_skops: bytes) -> None:
    name = unique("audited")
    operator.upload(name, iris_skops)
    operator.upload(name, iris_skops)
    operator.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1})
    moved = operator.put(f"/api/v1/models/{name}/aliases/production", json={"version": 2},
                         headers={"X-Request-ID": f"move-{name}"})
    admin.delete(f"/api/v1/models/{name}/versions/1")

    me = operator.get("/api/v1/me").json()["subject"]
    upload = entries(admin, action="model.upload", target=f"{name}:2")
    assert len(upload) == 1
    assert upload[0]["actor"] == me and upload[0]["role"] == "operator" and upload[0]["outcome"] == "success"
    assert upload[0]["client"] == "127.0.0.1" and upload[0]["details"]["format"] == "skops"
    alias = entries(admin, action="model.alias", target=name)
    assert [e["details"] for e in alias] == [
        {"alias": "production", "old_version": 1, "new_version": 2},
        {"alias": "production", "old_version": None, "new_version": 1},
    ]
    assert alias[0]["request_id"] == moved.headers["X-Request-ID"] == f"move-{name}"
    assert entries(admin, action="model.archive", target=f"{name}:1")[0]["actor"].startswith("apikey:")


def test_key_creation_is_audited_without_the_secret(stack: Stack, admin: Client) -> None:
    created = admin.post("/api/v1/apikeys", json={"name": "audited-key", "role": "service"}).json()
    admin.delete(f"/api/v1/apikeys/{created['id']}")
    made = entries(admin, action="apikey.create", target=created["id"])[0]
    assert made["details"]["role"] == "service"
    assert entries(admin, action="apikey.revoke", target=created["id"])
    everything = str(list(stack.db.audit.find()))
    assert created["key"] not in everything and created["key"][4:20] not in everything


def test_predictions_are_sampled_into_the_trail_without_their_payload(stack: Stack, worker: Proc, admin: Client,
                                                                      admin_key: str, iris_skops: bytes) -> None:
    name = unique("sampled")
    assert admin.upload(name, iris_skops).status_code == 201
    row = [5.123, 3.456, 1.789, 0.234]
    # The session's API samples nothing (MODELDECK_AUDIT_PREDICTION_SAMPLE_RATE defaults to 0).
    assert admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [row]}).status_code == 200
    assert entries(admin, action="model.predict", target=f"{name}:1") == []
    proc, url = start_api(stack, MODELDECK_AUDIT_PREDICTION_SAMPLE_RATE="1")
    try:
        sampling = Client(url, admin_key)
        assert sampling.post(f"/api/v1/models/{name}/predict", json={"inputs": [row, row]}).status_code == 200
        infer = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64", "data": row * 3}]}
        assert sampling.post(f"/v2/models/{name}/infer", json=infer).status_code == 200
    finally:
        proc.stop()
    sampled = entries(admin, action="model.predict", target=f"{name}:1")
    assert sorted(e["details"]["rows"] for e in sampled) == [2, 3]
    assert all(e["details"]["sample_rate"] == 1.0 and e["outcome"] == "success" for e in sampled)
    assert "5.123" not in str(list(stack.db.audit.find({"target": f"{name}:1"})))


def test_denied_requests_are_recorded(admin: Client, make_client, api_url: str) -> None:  # type: ignore[no-untyped-def]
    analyst = make_client("analyst")
    target = unique("nope")
    assert analyst.delete(f"/api/v1/models/{target}/versions/1").status_code == 403
    assert Client(api_url, "mdk_wrong").get(f"/api/v1/models/{target}").status_code == 401
    denied = entries(admin, outcome="denied", target_prefix=f"/api/v1/models/{target}")
    assert [(e["status"], e["action"]) for e in denied] == [(401, "denied.models.get_model"),
                                                             (403, "denied.models.archive_version")]
    assert denied[0]["actor"] == "anonymous" and denied[0]["details"]["reason"] == "invalid API key"
    assert denied[1]["actor"] == analyst.get("/api/v1/me").json()["subject"]


def test_filters_and_keyset_pagination(admin: Client) -> None:
    page = admin.get("/api/v1/audit", params={"limit": 3}).json()
    assert len(page["entries"]) == 3 and page["next_before"] == page["entries"][-1]["seq"]
    seqs = [e["seq"] for e in page["entries"]]
    assert seqs == sorted(seqs, reverse=True)
    following = admin.get("/api/v1/audit", params={"limit": 3, "before": page["next_before"]}).json()
    assert following["entries"][0]["seq"] < page["next_before"]
    bad = admin.get("/api/v1/audit", params={"outcome": "maybe"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        "query parameter 'outcome': Input should be 'success', 'denied' or 'failed', got 'maybe'")


def test_export_streams_csv_for_admins_only(admin: Client, operator: Client) -> None:
    resp = admin.get("/api/v1/audit/export", params={"action": "model.upload"})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert rows and all(r["action"] == "model.upload" for r in rows)
    assert operator.get("/api/v1/audit/export").status_code == 403


def test_verify_detects_an_edited_and_a_deleted_entry(stack: Stack, admin: Client) -> None:
    admin.post("/api/v1/apikeys", json={"name": "chain-filler", "role": "service"})
    assert admin.get("/api/v1/audit/verify").json()["valid"] is True
    total = stack.db.audit.count_documents({})
    victim = stack.db.audit.find_one({"seq": total // 2})
    assert victim is not None

    # Edit: change who did it.
    stack.db.audit.update_one({"_id": victim["_id"]}, {"$set": {"actor": "apikey:someone-else"}})
    report = admin.get("/api/v1/audit/verify").json()
    assert report["valid"] is False
    assert report["first_broken"] == {"seq": victim["seq"],
                                      "reason": "its content does not match its MAC (edited, or signed with another key)"}
    stack.db.audit.update_one({"_id": victim["_id"]}, {"$set": {"actor": victim["actor"]}})
    assert admin.get("/api/v1/audit/verify").json()["valid"] is True

    # Delete from the middle, then from the end.
    stack.db.audit.delete_one({"_id": victim["_id"]})
    report = admin.get("/api/v1/audit/verify").json()
    assert report["first_broken"]["seq"] == victim["seq"] and "missing" in report["first_broken"]["reason"]
    stack.db.audit.insert_one(victim)
    tail = stack.db.audit.find_one({"seq": stack.db.audit_head.find_one({"_id": "head"})["seq"]})
    stack.db.audit.delete_one({"_id": tail["_id"]})
    report = admin.get("/api/v1/audit/verify").json()
    assert report["valid"] is False and "deleted from the end" in report["first_broken"]["reason"]
    stack.db.audit.insert_one(tail)
    assert valid(admin.get("/api/v1/audit/verify").json(), stack.db.audit.count_documents({}))


def _write_entries(url: str, db_name: str, writer: int, count: int, home: str, secret: str) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(url)
    # The session's key is passed in: a spawned process importing conftest would make a new one.
    keys = audit_repo.audit_keys(Settings(secret_key=secret, home=Path(home)))
    for i in range(count):
        audit_repo.append(client[db_name], {"time": "2026-01-01T00:00:00.000000+00:00", "actor": f"writer-{writer}",
                                            "action": "test.concurrent", "target": str(i), "outcome": "success"}, keys)
    client.close()


def valid(report: dict[str, Any], entries: int) -> bool:
    """A report that says valid, counts the entries, and carries the signed head of the newest."""
    return (report["valid"] is True and report["entries"] == entries and report["head"]["seq"] == entries
            and set(report["head"]) == {"seq", "mac", "key_id", "signature"})


def test_four_processes_appending_at_once_keep_one_chain(stack: Stack, admin: Client) -> None:
    before = stack.db.audit.count_documents({})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(stack.settings.effective_mongo_url, stack.settings.mongo_db, w, 40,
                                                      str(stack.settings.home), SECRET_KEY))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert valid(admin.get("/api/v1/audit/verify").json(), before + 160)
    for w in range(4):
        assert stack.db.audit.count_documents({"actor": f"writer-{w}"}) == 40


def test_verifying_while_others_append_never_reports_a_false_break(stack: Stack, admin: Client) -> None:
    # Found by the soak: an entry appended between the walk's end and the head's read looked "deleted from the end".
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(stack.settings.effective_mongo_url, stack.settings.mongo_db, w, 150,
                                                      str(stack.settings.home), SECRET_KEY))
             for w in range(3)]
    for p in procs:
        p.start()
    reports = []
    while any(p.is_alive() for p in procs):
        reports.append(admin.get("/api/v1/audit/verify").json())
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(reports) >= 3, "the writers finished before verification overlapped them"
    assert [r for r in reports if not r["valid"]] == []
    assert valid(admin.get("/api/v1/audit/verify").json(), stack.db.audit.count_documents({}))
