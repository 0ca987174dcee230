"""Faults: the broker, the repository, a worker and an API process taken away under load, a full disk, bad models.

Each test takes its faults on processes of its own (a private RabbitMQ node, a private nx-27017, its own API and
worker processes), never the session's or the machine's shared services, and recovers without a hand restart.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
import skops.io as sio
from conftest import (
    IRIS_SCHEMA,
    Client,
    Proc,
    Stack,
    repository_counts,
    start_api,
    start_worker,
    unique,
    wait_for,
)
from isolation import PrivateBroker, admin_of, isolated_stack, ready
from sample_models import HogModel, NaNModel, RaisingModel, SlowModel
from sklearn.linear_model import LinearRegression

from server.core import jobs_repo, wire
from server.core.errors import GatewayTimeoutError
from server.transport.router import Router

ROW = [5.1, 3.5, 1.4, 0.2]


# ---------------------------------------------------------------------------------------------------------------
# RabbitMQ restarted under load
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "rabbitmq")
    broker.start()
    yield broker
    broker.stop()


def test_broker_restart_under_load_fails_fast_then_recovers_on_the_same_processes(
        stack: Stack, private_broker: PrivateBroker, iris_skops: bytes, tmp_path: Path) -> None:
    with isolated_stack(stack, tmp_path / "s", MODELDECK_BROKER_URL=private_broker.url) as (own, _repo):
        worker = start_worker(own, "cpu")
        api, url = start_api(own)
        try:
            admin = admin_of(own, url)
            wait_for(lambda: ready(url), 30, "API readiness", api.log)
            name = unique("iris")
            assert admin.upload(name, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
            assert admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [ROW]}).status_code == 200
            pids = (api.popen.pid, worker.popen.pid)

            outcomes: list[tuple[float, int, float, str]] = []
            stop = threading.Event()

            def load() -> None:
                client = Client(url, admin.key)
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        resp = client.post(f"/api/v1/models/{name}/predict", json={"inputs": [ROW]}, timeout=30)
                        message = resp.json().get("error", {}).get("message", "") if resp.status_code != 200 else ""
                        outcomes.append((started, resp.status_code, time.monotonic() - started, message))
                    except requests.RequestException as exc:
                        outcomes.append((started, 0, time.monotonic() - started, str(exc)))
                    time.sleep(0.02)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(2)
            down_at = time.monotonic()
            private_broker.stop()
            time.sleep(6)
            up_at = time.monotonic()
            private_broker.start()
            back = time.monotonic()
            wait_for(lambda: any(s >= back and code == 200 for s, code, _, _ in list(outcomes)), 30,
                     "a successful prediction after the broker returned", worker.log)
            first_success = min(s for s, code, _, _ in outcomes if s >= back and code == 200) - back
            time.sleep(2)
            stop.set()
            for t in threads:
                t.join(40)
            # The same API and worker processes recovered by themselves.
            assert api.alive() and worker.alive() and pids == (api.popen.pid, worker.popen.pid)
        finally:
            api.stop()
            worker.stop()
    during = [o for o in outcomes if down_at + 1 <= o[0] < up_at]
    assert during, "no request was made while the broker was down"
    assert {code for _, code, _, _ in during} == {503}, sorted({(c, m) for _, c, _, m in during})
    assert max(took for _, _, took, _ in during) < 1.0  # fail fast: a connection-state check, no retries
    assert {m for _, _, _, m in during} == {"the message broker is unavailable; the request was not sent, retry shortly"}
    # Nothing else failed: the only non-200s are 503s from around the outage.
    assert {code for _, code, _, _ in outcomes} <= {200, 503}
    after = [o for o in outcomes if o[0] >= back + first_success]
    broker_lines = [line for line in api.log.read_text(errors="replace").splitlines() if "broker" in line]
    assert after and all(code == 200 for _, code, _, _ in after), (
        sorted({(c, m) for _, c, _, m in after}), [f"{s - back:+.3f} s: {c}" for s, c, _, _ in after if c != 200],
        broker_lines[-20:])
    assert first_success < 10, f"first success {first_success:.1f} s after the broker answered again"
    print(f"broker outage: {len(during)} requests answered 503 in at most "
          f"{max(took for _, _, took, _ in during) * 1000:.0f} ms; first success {first_success:.1f} s after it returned")


# ---------------------------------------------------------------------------------------------------------------
# The repository killed and restarted
# ---------------------------------------------------------------------------------------------------------------

def test_repository_killed_and_restarted_loses_no_acknowledged_upload_or_audit_entry(
        stack: Stack, iris_skops: bytes, tmp_path: Path) -> None:
    with isolated_stack(stack, tmp_path / "s") as (own, repo):
        worker = start_worker(own, "cpu")
        api, url = start_api(own)
        try:
            admin = admin_of(own, url)
            wait_for(lambda: ready(url), 30, "API readiness", api.log)
            acknowledged: list[dict[str, Any]] = []
            failures: list[tuple[int, str]] = []
            stop = threading.Event()

            def uploads() -> None:
                client = Client(url, admin.key)
                while not stop.is_set():
                    name = unique("ack")
                    try:
                        resp = client.upload(name, iris_skops, input_schema=IRIS_SCHEMA)
                    except requests.RequestException as exc:
                        failures.append((0, str(exc)))
                        continue
                    if resp.status_code == 201:
                        acknowledged.append({**resp.json(), "request_id": resp.headers["X-Request-ID"]})
                    else:
                        failures.append((resp.status_code, resp.json()["error"]["message"]))
                    time.sleep(0.05)

            thread = threading.Thread(target=uploads)
            thread.start()
            wait_for(lambda: len(acknowledged) >= 5, 30, "uploads before the fault")
            repo.kill()
            killed = time.monotonic()
            resp = requests.get(url + "/readyz", timeout=15)
            assert resp.status_code == 503 and resp.json()["checks"]["repository"]["ok"] is False, resp.text
            assert time.monotonic() - killed < 8
            # Longer than the client's 5 s server selection, so requests in the outage fail rather than wait it out.
            time.sleep(8)
            repo.start()
            wait_for(lambda: ready(url), 30, "API readiness after the repository returned", api.log)
            count = len(acknowledged)
            wait_for(lambda: len(acknowledged) >= count + 3, 30, "uploads after the repository returned")
            stop.set()
            thread.join(60)
            # Same processes, serving again: a prediction on a model uploaded before the fault.
            assert api.alive() and worker.alive()
            resp = admin.post(f"/api/v1/models/{acknowledged[0]['name']}/predict", json={"inputs": [ROW]})
            assert resp.status_code == 200, resp.text
            verify = admin.get("/api/v1/audit/verify").json()
            assert verify["valid"] is True, verify
        finally:
            api.stop()
            worker.stop()
        # Every acknowledged upload is there, byte for byte, with its audit entry; the chain verifies.
        for up in acknowledged:
            doc = own.db.versions.find_one({"_id": f"{up['name']}:{up['version']}"})
            assert doc is not None and doc["sha256"] == up["sha256"], up
            assert own.db.artifacts.find_one({"_id": up["sha256"]}) is not None
            entry = own.db.audit.find_one({"action": "model.upload", "target": f"{up['name']}:{up['version']}"})
            assert entry is not None and entry["request_id"] == up["request_id"], up
        # What failed during the outage failed cleanly, naming the repository (503), not a bare 500.
        assert failures and {code for code, _ in failures} <= {503}, failures
        assert {m for _, m in failures} <= {"the repository (MongoDB) is unavailable; nothing was changed, retry shortly"}
        # Nothing half-written: every version has its artifact, every model a version.
        for version in own.db.versions.find():
            assert own.db.artifacts.find_one({"_id": version["sha256"]}) is not None
    print(f"repository outage: {len(acknowledged)} acknowledged uploads all present; {len(failures)} refused with 503")


# ---------------------------------------------------------------------------------------------------------------
# A worker killed mid-request; async jobs exactly once
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fault_api(stack: Stack, worker: Proc, admin_key: str) -> Iterator[Client]:
    """An API of the session's stack with pickles enabled (for sample models) and a 3 s predict timeout."""
    proc, url = start_api(stack, MODELDECK_ALLOW_PICKLE="true", MODELDECK_PREDICT_TIMEOUT_S="3")
    yield Client(url, admin_key)
    proc.stop()


def test_worker_killed_mid_request_answers_within_the_timeout_and_jobs_finish_exactly_once(
        stack: Stack, fault_api: Client) -> None:
    pool = "kill_" + uuid.uuid4().hex[:6]
    name = unique("slow")
    assert fault_api.upload(name, pickle.dumps(SlowModel(1.5)), fmt="pickle", filename="m.pkl", pool=pool).status_code == 201
    victim = start_worker(stack, pool)
    replacement: Proc | None = None
    try:
        # Synchronous: the worker dies holding the request; the caller hears within its timeout, never hangs.
        result: dict[str, Any] = {}

        def call() -> None:
            started = time.monotonic()
            resp = fault_api.post(f"/api/v1/models/{name}/predict", json={"inputs": [[1.0, 2.0]]},
                                  headers={"X-Request-ID": "victim-1"})
            result.update(status=resp.status_code, message=resp.json().get("error", {}).get("message"),
                          took=time.monotonic() - started)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.7)
        os.kill(victim.popen.pid, signal.SIGKILL)
        caller.join(10)
        assert not caller.is_alive()
        assert result["status"] == 504, result
        assert result["message"] == f"no answer from pool '{pool}' within 3 s (request victim-1); the late result will be dropped"
        assert result["took"] < 3.5

        # Async: jobs queued, the worker running them is SIGKILLed; a new worker finishes each exactly once.
        victim.stop()
        victim = start_worker(stack, pool)
        jobs = []
        for i in range(3):
            resp = fault_api.post(f"/api/v1/models/{name}/predict?async=true", json={"inputs": [[float(i), 2.0]]})
            assert resp.status_code == 202, resp.text
            jobs.append(resp.json()["job_id"])
        wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": "running"}) >= 1, 20, "a job running")
        os.kill(victim.popen.pid, signal.SIGKILL)
        victim.stop()
        replacement = start_worker(stack, pool)
        wait_for(lambda: stack.db.jobs.count_documents({"_id": {"$in": jobs}, "status": {"$in": ["succeeded", "failed"]}}) == 3,
                 60, "the jobs to finish on the replacement worker", replacement.log)
        for i, job_id in enumerate(jobs):
            view = fault_api.get(f"/api/v1/jobs/{job_id}").json()
            assert view["status"] == "succeeded" and view["result"] == {"predictions": [float(i)]}, view
            # The worker stores the outcome, then audits it: the entry follows the status by a moment.
            wait_for(lambda: stack.db.audit.count_documents({"action": "job.finish", "target": job_id}) >= 1, 10,
                     f"job.finish of {job_id}", replacement.log)
            finishes = list(stack.db.audit.find({"action": "job.finish", "target": job_id}))
            assert len(finishes) == 1, finishes
    finally:
        victim.stop()
        if replacement is not None:
            replacement.stop()


def test_a_job_finished_by_a_worker_that_died_before_auditing_it_gets_its_entry_on_redelivery(
        stack: Stack, worker: Proc) -> None:
    """A worker stores a job's outcome, audits it, then acknowledges the task. One killed between the first two
    leaves a finished job without its job.finish entry; the task comes back and the next worker writes it, once."""
    job_id = "job_" + uuid.uuid4().hex
    jobs_repo.create_job(stack.db, job_id, "predict", "apikey:crashed", {"model": "m", "version": 1}, 600)
    assert jobs_repo.finish_job(stack.db, job_id, result={"predictions": [1.0]})  # what the dead worker left
    router = Router(stack.settings.broker_url, stack.settings.queue_prefix)
    router.start()
    try:
        for _ in range(2):  # redelivered twice: still one entry
            router.send("cpu", wire.PREDICT_JOB_TASK, [job_id], job_id)
        wait_for(lambda: stack.db.audit.count_documents({"action": "job.finish", "target": job_id}) >= 1, 20,
                 "the job.finish entry", worker.log)
        time.sleep(1.0)
    finally:
        router.stop()
    finishes = list(stack.db.audit.find({"action": "job.finish", "target": job_id}))
    assert len(finishes) == 1, finishes
    assert finishes[0]["outcome"] == "success" and finishes[0]["details"]["recorded_on_redelivery"] is True
    assert stack.db.jobs.find_one({"_id": job_id})["result"] == {"predictions": [1.0]}  # not run again


@pytest.mark.parametrize("reply_host", [None, "127.0.0.1"], ids=["through-the-broker", "direct"])
def test_a_late_reply_lands_on_the_callers_thread_and_never_answers_its_next_call(
        stack: Stack, fault_api: Client, reply_host: str | None) -> None:
    """Each API thread publishes and reads its replies on its own connection (and listener): the answer to a call
    that timed out arrives there while the thread's next call waits, and that call still gets its own answer."""
    name = unique("late")
    assert fault_api.upload(name, pickle.dumps(SlowModel(1.5)), fmt="pickle", filename="m.pkl").status_code == 201
    model = wire.model_ref(stack.db.versions.find_one({"_id": f"{name}:1"}))
    router = Router(stack.settings.broker_url, stack.settings.queue_prefix, reply_host)
    router.start()
    try:
        with pytest.raises(GatewayTimeoutError):
            router.call("cpu", wire.PredictRequest(model, [[111.0, 0.0]]), 1.0, "late-1")
        started = time.monotonic()
        # Answered at about 2.5 s; the first call's answer lands on this thread's queue at about 1.5 s.
        reply = router.call("cpu", wire.PredictRequest(model, [[222.0, 0.0]]), 5.0, "late-2")
        waited = time.monotonic() - started
    finally:
        router.stop()
    assert reply.task_id.startswith("late-2."), reply
    assert reply.outcome is not None and reply.outcome.predictions == [222.0]
    assert waited > 1.2  # it was still waiting when the late answer arrived


def test_a_worker_killed_holding_a_request_is_answered_by_another_worker_at_once(stack: Stack, admin_key: str) -> None:
    """With a second worker in the pool, the caller hears of the death within seconds, not at its timeout."""
    proc, url = start_api(stack, MODELDECK_ALLOW_PICKLE="true", MODELDECK_PREDICT_TIMEOUT_S="60")
    api = Client(url, admin_key)
    pool = "lost_" + uuid.uuid4().hex[:6]
    name = unique("slow")
    victim = start_worker(stack, pool)
    other: Proc | None = None
    try:
        assert api.upload(name, pickle.dumps(SlowModel(40.0)), fmt="pickle", filename="m.pkl", pool=pool).status_code == 201
        result: dict[str, Any] = {}

        def call() -> None:
            resp = api.post(f"/api/v1/models/{name}/predict", json={"inputs": [[1.0, 2.0]]})
            result.update(status=resp.status_code, body=resp.json(), at=time.monotonic())

        caller = threading.Thread(target=call)
        caller.start()
        # The only worker takes the request; a second one joins the pool while it runs.
        wait_for(lambda: stack.db.workers.count_documents({"pool": pool, "state": "busy"}) == 1, 20, "the request running")
        other = start_worker(stack, pool)
        assert caller.is_alive()
        killed_at = time.monotonic()
        os.kill(victim.popen.pid, signal.SIGKILL)
        caller.join(30)
        assert not caller.is_alive()
        assert result["status"] == 503, result
        error = result["body"]["error"]
        assert error["details"]["code"] == "worker_lost", error
        assert error["message"].startswith(f"model '{name}' version 1: the worker running this request stopped before answering"), error
        assert result["at"] - killed_at < 5, result["at"] - killed_at  # the timeout is 60 s
        # The request was not run again: the other worker answered at once and is free for the next one.
        fast = api.upload(name, pickle.dumps(SlowModel(0.0)), fmt="pickle", filename="m.pkl", pool=pool)
        assert fast.status_code == 201, fast.text
        resp = api.post(f"/api/v1/models/{name}/predict", json={"inputs": [[3.0, 2.0]], "version": 2})
        assert resp.status_code == 200 and resp.json()["predictions"] == [3.0], resp.text
    finally:
        victim.stop()
        if other is not None:
            other.stop()
        proc.stop()


# ---------------------------------------------------------------------------------------------------------------
# An API process killed mid-upload
# ---------------------------------------------------------------------------------------------------------------

def test_api_killed_mid_upload_leaves_nothing_visible_and_the_other_keeps_serving(
        stack: Stack, worker: Proc, admin_key: str, iris_skops: bytes) -> None:
    victim, victim_url = start_api(stack)
    survivor, survivor_url = start_api(stack)
    try:
        big = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
        big.coef_ = np.random.default_rng(7).random(12_000_000)  # ~96 MB of float64: 23 chunks to write
        data = sio.dumps(big)
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        name = unique("halfway")
        models_before = stack.db.models.count_documents({})
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                outcome["resp"] = Client(victim_url, admin_key).upload(name, data)
            except requests.RequestException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=upload)
        thread.start()
        wait_for(lambda: stack.db.artifact_chunks.count_documents({"sha256": sha}) >= 2, 60, "chunks being written")
        os.killpg(victim.popen.pid, signal.SIGKILL)
        thread.join(30)
        assert "error" in outcome, outcome  # the client saw the connection drop, not an acknowledgement
        # Nothing half-written is visible: no model, no version, no artifact manifest.
        survivor_client = Client(survivor_url, admin_key)
        assert survivor_client.get(f"/api/v1/models/{name}").status_code == 404
        assert stack.db.versions.find_one({"name": name}) is None
        assert stack.db.artifacts.find_one({"_id": sha}) is None
        assert stack.db.models.count_documents({}) == models_before
        # The other API keeps serving, uploads and predictions alike.
        iris = unique("iris")
        assert survivor_client.upload(iris, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
        assert survivor_client.post(f"/api/v1/models/{iris}/predict", json={"inputs": [ROW]}).status_code == 200
        # Sending the same bytes again completes over the leftover chunks and reads back whole.
        again = survivor_client.upload(name, data)
        assert again.status_code == 201 and again.json()["sha256"] == sha
        download = survivor_client.get(f"/api/v1/models/{name}/versions/1/artifact")
        assert hashlib.sha256(download.content).hexdigest() == sha
    finally:
        victim.stop()
        survivor.stop()


# ---------------------------------------------------------------------------------------------------------------
# Disk full
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Any]:
    """Mount size-limited tmpfs directories (a disk that fills up); all unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("the disk-full test mounts a size-limited tmpfs and needs root (run the suite as root)")
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"could not mount a tmpfs for the disk-full test: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("spool_on_small_disk", [False, True], ids=["repository-full", "api-spool-full-too"])
def test_upload_on_a_full_disk_is_507_and_leaves_nothing(stack: Stack, mount_tmpfs: Any, iris_skops: bytes,
                                                          tmp_path: Path, spool_on_small_disk: bool) -> None:
    small_disk = mount_tmpfs("repository-disk", "24m")
    with isolated_stack(stack, tmp_path / "s", db_dir=small_disk) as (own, _repo):
        # The API spools uploads over 1 MB to its temporary directory: there, on a disk smaller than the upload.
        spool = {"TMPDIR": str(mount_tmpfs("spool-disk", "6m"))} if spool_on_small_disk else {}
        api, url = start_api(own, **spool)
        try:
            admin = admin_of(own, url)
            small = unique("small")
            assert admin.upload(small, iris_skops, input_schema=IRIS_SCHEMA).status_code == 201
            before = repository_counts(own.db)
            outcomes = []
            for seed in range(3):  # fill the disk: the first may fit, later ones cannot
                big = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
                big.coef_ = np.random.default_rng(seed).random(1_500_000)  # ~12 MB that does not compress
                name = unique("full")
                resp = admin.upload(name, sio.dumps(big))
                outcomes.append(resp.status_code)
                if resp.status_code == 507:
                    break
                assert resp.status_code == 201, resp.text
            assert resp.status_code == 507, outcomes
            assert resp.json()["error"]["code"] == "insufficient_storage"
            assert resp.json()["error"]["message"] == (
                "the API server's disk is full (its temporary files); the change was not made. Free space, then retry"
                if spool_on_small_disk else
                "the repository is out of disk space; the change was not made. Free space on its data volume "
                "(or grow it), then retry")
            # Nothing of the failed upload is visible: no model, version or artifact manifest.
            assert admin.get(f"/api/v1/models/{name}").status_code == 404
            stored = outcomes.count(201)
            after = repository_counts(own.db)
            assert after["models"] == before["models"] + stored and after["versions"] == before["versions"] + stored
            assert after["artifacts"] == before["artifacts"] + stored
            # Everything stored earlier still reads back and the API stays up for reads.
            assert admin.get(f"/api/v1/models/{small}").status_code == 200
            assert api.alive()
            # The operator grows the volume: uploads work again on the same processes, and the failed upload's
            # chunks (a full SQLite disk refuses even deletes) are gone with the next upload.
            for disk in [small_disk, *map(Path, spool.values())]:
                subprocess.run(["mount", "-o", "remount,size=96m", str(disk)], check=True)
            assert admin.upload(unique("after"), iris_skops).status_code == 201
            assert own.db.artifact_chunks.count_documents({}) == sum(a["chunks"] for a in own.db.artifacts.find())
        finally:
            api.stop()


# ---------------------------------------------------------------------------------------------------------------
# Models that raise, return NaN, run past the timeout or allocate without bound
# ---------------------------------------------------------------------------------------------------------------

def test_bad_models_get_model_specific_errors_and_the_worker_serves_others_meanwhile(
        stack: Stack, fault_api: Client, iris_skops: bytes) -> None:
    pool = "bad_" + uuid.uuid4().hex[:6]
    # An address-space limit well above the worker's normal size, so only the hog meets it.
    worker = start_worker(stack, pool, MODELDECK_WORKER_MEMORY_LIMIT_MB="4096")
    try:
        good = unique("good")
        assert fault_api.upload(good, iris_skops, input_schema=IRIS_SCHEMA, pool=pool).status_code == 201
        bad = {}
        for label, model in [("raises", RaisingModel()), ("nan", NaNModel()), ("slow", SlowModel(5)), ("hog", HogModel())]:
            bad[label] = unique(label)
            resp = fault_api.upload(bad[label], pickle.dumps(model), fmt="pickle", filename="m.pkl", pool=pool)
            assert resp.status_code == 201, resp.text
        expected = {
            "raises": (500, f"model '{bad['raises']}' version 1 raised ValueError: feature scaling table is empty"),
            "nan": (500, f"model '{bad['nan']}' version 1 failed: the model returned a non-finite value (nan)"),
            "slow": (504, f"no answer from pool '{pool}' within 3 s (request slow-1); the late result will be dropped"),
            "hog": (500, f"model '{bad['hog']}' version 1 failed: ran out of memory while predicting (the worker's limit "
                         "is MODELDECK_WORKER_MEMORY_LIMIT_MB); the worker freed it and keeps serving other models"),
        }
        answers: dict[str, tuple[int, str]] = {}
        good_answers: list[int] = []

        def ask(label: str) -> None:
            resp = fault_api.post(f"/api/v1/models/{bad[label]}/predict", json={"inputs": [[1.0, 2.0]]},
                                  headers={"X-Request-ID": f"{label}-1"}, timeout=30)
            answers[label] = (resp.status_code, resp.json()["error"]["message"])

        threads = [threading.Thread(target=ask, args=(label,)) for label in expected]
        for t in threads:
            t.start()
        # Meanwhile the good model on the same worker keeps answering.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            good_answers.append(fault_api.post(f"/api/v1/models/{good}/predict", json={"inputs": [ROW]}).status_code)
        for t in threads:
            t.join(30)
        assert answers == expected
        assert good_answers and set(good_answers) == {200}, good_answers
        assert worker.alive()
        rss_mb = psutil.Process(worker.popen.pid).memory_info().rss / 2**20
        assert rss_mb < 1024, f"the worker kept {rss_mb:.0f} MB after the hog"
        assert fault_api.post(f"/api/v1/models/{good}/predict", json={"inputs": [ROW]}).status_code == 200
    finally:
        worker.stop()
