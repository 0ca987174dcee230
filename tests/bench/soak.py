"""Soak: mixed traffic against a private stack for --minutes, checking that nothing fails and nobody gets the wrong model.

Usage (loopback only; starts and stops everything it uses; bounded by --minutes plus about a minute):
    .venv/bin/python tests/bench/soak.py [--minutes 10] [--clients 32] [--models 20] [--json soak.json]

It starts its own stack on free loopback ports, beside anything else running: nx-27017 with its data in a
temporary MODELDECK_HOME, one CPU worker, the API under gunicorn (2 processes x 16 threads, as `modeldeck up`),
on the machine's RabbitMQ with a queue prefix of its own. Then, for the whole run:

- --clients threads predict, each request on a random one of --models models, by the `production` alias or by an
  explicit version, 1 to 5 rows. Every version is a scikit-learn DummyRegressor (saved with skops) whose constant
  is model * 1000 + version, so each answer proves which version computed it: an answer whose constant is not the
  version the API names (or, for an explicit version, the version asked for) counts as a wrong version.
- every --upload-every seconds a new version of a random model is uploaded and `production` moves to it, or back to
  an earlier version (a rollback);
- async jobs (?async=true) are submitted and polled until done, their results checked the same way;
- audit reads: a page of the trail every 2 s, the chain verified every 30 s.

It prints, per minute, requests, p50 and p99 of synchronous predictions and the status counts; at the end the
totals, the wrong-version count, and the resident memory (RSS) of the API processes, the worker and the repository
at the start (after warm-up) and at the end. Exit status 1 when any 5xx, wrong version or lost job was seen.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil
import requests
import skops.io as sio
from cryptography.fernet import Fernet
from requests.adapters import HTTPAdapter
from sklearn.dummy import DummyRegressor
from urllib3.util.retry import Retry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from installer.services import broker_answers, nx_command, repository_answers  # noqa: E402
from server.core import keys_repo  # noqa: E402
from server.core.db import connect, ensure_indexes  # noqa: E402
from server.core.settings import Settings  # noqa: E402

SCHEMA = [{"name": "x", "type": "number"}, {"name": "y", "type": "number"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def constant(model: int, version: int) -> float:
    return float(model * 1000 + version)


def artifact(model: int, version: int) -> bytes:
    """A model whose every prediction names its model and version."""
    return sio.dumps(DummyRegressor(strategy="constant", constant=constant(model, version)).fit([[0.0, 0.0]], [0.0]))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Stack:
    """nx-27017, one worker and the API, all of this run's own; stopped in stop()."""

    def __init__(self, home: Path) -> None:
        self.home = home
        tag = uuid.uuid4().hex[:8]
        self.mongo_port, self.api_port = free_port(), free_port()
        self.env = {**os.environ, "MODELDECK_HOME": str(home), "MODELDECK_MONGO_URL": "",
                    "MODELDECK_EMBEDDED_MONGO_PORT": str(self.mongo_port), "MODELDECK_MONGO_DB": "soak",
                    "MODELDECK_QUEUE_PREFIX": f"soak-{tag}.", "MODELDECK_API_PORT": str(self.api_port),
                    "MODELDECK_SECRET_KEY": Fernet.generate_key().decode(), "MODELDECK_AUTH_FAILURE_LIMIT": "1000000",
                    "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.settings = Settings(home=home, mongo_url="", embedded_mongo_port=self.mongo_port, mongo_db="soak",
                                 queue_prefix=f"soak-{tag}.", api_port=self.api_port)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Any] = []

    def _start(self, name: str, cmd: list[str], **env: str) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(cmd, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait(self, check: Any, what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited; see {self.home / (name + '.log')}")
            if check():
                return
            time.sleep(0.3)
        raise SystemExit(f"{what} did not come up in {timeout_s:.0f} s; logs in {self.home}")

    def start(self) -> str:
        if not broker_answers(self.settings.broker_url):
            raise SystemExit("RabbitMQ must answer at the configured broker URL (guest/guest on 127.0.0.1:5672)")
        run = self.home / "run"
        run.mkdir(parents=True)
        self._start("repository", nx_command(self.home / "repository.db", self.mongo_port, run))
        self._wait(lambda: repository_answers(self.settings.effective_mongo_url, 300), "the repository")
        db = connect(self.settings)
        ensure_indexes(db)
        _, admin = keys_repo.create_key(db, "soak-admin", "admin", None, None, "soak")
        self._start("worker", [sys.executable, "-m", "runtime.worker"], MODELDECK_WORKER_POOL="cpu")
        self._start("api", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.api_port}", "--workers", "2",
                            "--threads", "16", "--worker-class", "server.http.gunicorn_worker.LingeringThreadWorker", "--timeout", "120", "server.http.wsgi:app"])

        def ready() -> bool:
            try:
                return requests.get(self.url + "/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        self._wait(ready, "the API")
        return admin

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each component, its child processes included (gunicorn's workers)."""
        out = {}
        for name, proc in self.procs.items():
            try:
                p = psutil.Process(proc.pid)
                out[name] = round(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20, 1)
            except psutil.NoSuchProcess:
                out[name] = float("nan")
        return out

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self) -> None:
        for name in ("api", "worker", "repository"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(5)
        for log in self.logs:
            log.close()


class Soak:
    """The traffic, and everything it observed."""

    def __init__(self, url: str, key: str, models: int, clients: int, upload_every: float,
                 rss: Any = None) -> None:
        self.url, self.key, self.rss = url, key, rss
        self.models = [f"soak-m{i:02d}" for i in range(models)]
        self.clients, self.upload_every = clients, upload_every
        self.versions: dict[int, list[int]] = {}  # model index -> versions uploaded (acknowledged)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = 0.0
        self.latencies: dict[int, list[float]] = defaultdict(list)  # minute -> sync predict seconds
        self.statuses: dict[int, Counter[str]] = defaultdict(Counter)  # minute -> "kind status" counts
        self.wrong: list[dict[str, Any]] = []
        self.server_errors: list[str] = []
        self.jobs = Counter[str]()

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.key}"
        # A GET that reuses a keep-alive connection the server is closing at that instant (gunicorn closes idle
        # ones after 2 s) meets a reset before any answer; like any HTTP client, retry such an idempotent GET once.
        retry = Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=frozenset({"GET"}), raise_on_status=False)
        s.mount("http://", HTTPAdapter(max_retries=retry))
        return s

    def minute(self) -> int:
        return int((time.monotonic() - self.t0) // 60)

    def count(self, kind: str, resp: requests.Response | None, error: str = "") -> None:
        status = str(resp.status_code) if resp is not None else "conn-error"
        with self.lock:
            self.statuses[self.minute()][f"{kind} {status}"] += 1
            if resp is None or resp.status_code >= 500:
                self.server_errors.append(f"{kind} {status}: {error or (resp.text[:300] if resp is not None else '')}")

    def upload(self, s: requests.Session, m: int) -> None:
        with self.lock:
            version = len(self.versions.get(m, [])) + 1
        files = {"file": ("m.skops", io.BytesIO(artifact(m, version))),
                 "metadata": (None, json.dumps({"name": self.models[m], "format": "skops", "pool": "cpu", "input_schema": SCHEMA}))}
        try:
            resp = s.post(self.url + "/api/v1/models", files=files, timeout=60)
        except requests.RequestException as exc:
            self.count("upload", None, str(exc))
            return
        self.count("upload", resp)
        if resp.status_code == 201:
            got = resp.json()["version"]
            if got != version:
                raise SystemExit(f"{self.models[m]}: expected to create version {version}, the API made {got}")
            with self.lock:
                self.versions.setdefault(m, []).append(got)

    def move_alias(self, s: requests.Session, m: int, version: int) -> None:
        try:
            resp = s.put(f"{self.url}/api/v1/models/{self.models[m]}/aliases/production", json={"version": version}, timeout=30)
            self.count("alias", resp)
        except requests.RequestException as exc:
            self.count("alias", None, str(exc))

    def check(self, m: int, asked: int | None, answer: dict[str, Any], rows: int, how: str) -> None:
        claimed = answer["version"]
        predictions = answer["predictions"]
        ok = (len(predictions) == rows and all(p == constant(m, claimed) for p in predictions)
              and (asked is None or claimed == asked) and answer.get("model", self.models[m]) == self.models[m])
        if not ok:
            with self.lock:
                self.wrong.append({"model": self.models[m], "asked": asked, "claimed": claimed, "predictions": predictions[:3], "how": how})

    def predictor(self) -> None:
        s = self.session()
        rng = random.Random()
        while not self.stop.is_set():
            m = rng.randrange(len(self.models))
            with self.lock:
                known = list(self.versions.get(m, []))
            if not known:
                continue
            asked = None if rng.random() < 0.5 else rng.choice(known)
            rows = rng.randint(1, 5)
            body: dict[str, Any] = {"inputs": [[rng.random(), rng.random()] for _ in range(rows)],
                                    "version": "production" if asked is None else asked}
            started = time.monotonic()
            try:
                resp = s.post(f"{self.url}/api/v1/models/{self.models[m]}/predict", json=body, timeout=60)
            except requests.RequestException as exc:
                self.count("predict", None, str(exc))
                continue
            took = time.monotonic() - started
            self.count("predict", resp)
            if resp.status_code == 200:
                with self.lock:
                    self.latencies[self.minute()].append(took)
                self.check(m, asked, resp.json(), rows, "sync")

    def uploader(self) -> None:
        s = self.session()
        rng = random.Random(1)
        while not self.stop.wait(self.upload_every):
            m = rng.randrange(len(self.models))
            self.upload(s, m)
            with self.lock:
                known = list(self.versions.get(m, []))
            # Mostly promote the new version; sometimes roll back to an earlier one.
            target = known[-1] if rng.random() < 0.8 or len(known) < 2 else rng.choice(known[:-1])
            self.move_alias(s, m, target)

    def async_jobs(self) -> None:
        s = self.session()
        rng = random.Random(2)
        while not self.stop.wait(1.0):
            m = rng.randrange(len(self.models))
            with self.lock:
                known = list(self.versions.get(m, []))
            asked = rng.choice(known)
            try:
                resp = s.post(f"{self.url}/api/v1/models/{self.models[m]}/predict?async=true",
                              json={"inputs": [[1.0, 2.0]], "version": asked}, timeout=30)
            except requests.RequestException as exc:
                self.count("job-submit", None, str(exc))
                continue
            self.count("job-submit", resp)
            if resp.status_code != 202:
                continue
            job_id = resp.json()["job_id"]
            self.jobs["submitted"] += 1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                view = s.get(f"{self.url}/api/v1/jobs/{job_id}", timeout=30)
                self.count("job-poll", view)
                status = view.json().get("status") if view.status_code == 200 else None
                if status in ("succeeded", "failed", "cancelled"):
                    self.jobs[status] += 1
                    if status == "succeeded":
                        self.check(m, asked, {"version": asked, "predictions": view.json()["result"]["predictions"]}, 1, "job")
                    break
                time.sleep(0.2)
            else:
                self.jobs["not finished in 60 s"] += 1

    def auditor(self) -> None:
        s = self.session()
        last_verify = time.monotonic()
        while not self.stop.wait(2.0):
            try:
                self.count("audit", s.get(self.url + "/api/v1/audit", params={"limit": 50}, timeout=30))
                if time.monotonic() - last_verify > 30:
                    resp = s.get(self.url + "/api/v1/audit/verify", timeout=120)
                    self.count("audit-verify", resp)
                    if resp.status_code == 200 and not resp.json()["valid"]:
                        self.server_errors.append(f"audit chain broken: {resp.text[:300]}")
                    last_verify = time.monotonic()
            except requests.RequestException as exc:
                self.count("audit", None, str(exc))

    def seed(self) -> None:
        s = self.session()
        self.t0 = time.monotonic()
        for m in range(len(self.models)):
            self.upload(s, m)
            self.move_alias(s, m, 1)
        if len(self.versions) != len(self.models) or self.server_errors:
            raise SystemExit(f"could not upload the models: {self.server_errors[:3]} {dict(self.statuses[0])}")
        self.statuses.clear()

    def run(self, minutes: float, warmup_s: float, on_warm: Any) -> None:
        """Run the traffic: warmup_s of it first (its latencies and counts dropped, its failures kept), then minutes."""
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.predictor, daemon=True) for _ in range(self.clients)]
        threads += [threading.Thread(target=f, daemon=True) for f in (self.uploader, self.async_jobs, self.auditor)]
        for t in threads:
            t.start()
        # Every code path (uploads, jobs, audit) has run once before the starting memory is taken.
        time.sleep(warmup_s)
        on_warm()
        with self.lock:
            self.t0 = time.monotonic()
            self.latencies.clear()
            self.statuses.clear()
        shown = 0
        while time.monotonic() - self.t0 < minutes * 60:
            time.sleep(1)
            if self.minute() > shown:
                self.report_minute(shown)
                shown += 1
        self.stop.set()
        for t in threads:
            t.join(90)
        if shown < len(self.statuses):
            self.report_minute(shown, partial=True)

    def report_minute(self, minute: int, partial: bool = False) -> None:
        with self.lock:
            lat = list(self.latencies.get(minute, []))
            counts = dict(sorted(self.statuses.get(minute, Counter()).items()))
        label = f"minute {minute + 1}" + (" (part)" if partial else "")
        rss = f"  RSS MB {self.rss()}" if self.rss is not None else ""
        print(f"{label:>16}: {len(lat):6d} predictions  p50 {percentile(lat, 0.5) * 1000:7.1f} ms  "
              f"p99 {percentile(lat, 0.99) * 1000:7.1f} ms  {counts}{rss}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--upload-every", type=float, default=3.0, help="seconds between uploads (each moves the alias)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of traffic before the starting RSS is taken")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="modeldeck-soak-"))
    stack = Stack(home)
    print(f"soak: private stack under {home}", flush=True)
    try:
        admin = stack.start()
        soak = Soak(stack.url, admin, args.models, args.clients, args.upload_every, stack.rss_mb)
        soak.seed()
        print(f"soak: {args.models} models uploaded; {args.clients} clients, {args.warmup:g} s of warm-up, "
              f"then {args.minutes:g} min", flush=True)
        rss_start: dict[str, float] = {}
        started = time.monotonic()
        soak.run(args.minutes, args.warmup, lambda: rss_start.update(stack.rss_mb()))
        duration = time.monotonic() - started - args.warmup
        rss_end = stack.rss_mb()
        alive = stack.alive()
    finally:
        stack.stop()
    all_lat = [x for v in soak.latencies.values() for x in v]
    totals = Counter[str]()
    for c in soak.statuses.values():
        totals.update(c)
    result = {
        "minutes": round(duration / 60, 2), "clients": args.clients, "models": args.models,
        "predictions": len(all_lat), "p50_ms": round(percentile(all_lat, 0.5) * 1000, 1),
        "p99_ms": round(percentile(all_lat, 0.99) * 1000, 1),
        "p99_ms_per_minute": {m + 1: round(percentile(v, 0.99) * 1000, 1) for m, v in sorted(soak.latencies.items())},
        "statuses": dict(sorted(totals.items())), "wrong_versions": len(soak.wrong), "wrong_examples": soak.wrong[:5],
        "server_errors": len(soak.server_errors), "server_error_examples": soak.server_errors[:5],
        "jobs": dict(soak.jobs), "versions_uploaded": sum(len(v) for v in soak.versions.values()),
        "rss_mb_start": rss_start, "rss_mb_end": rss_end, "processes_alive_at_end": alive,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    lost = soak.jobs["submitted"] - soak.jobs["succeeded"]
    failed = bool(soak.wrong or soak.server_errors or lost or not all(alive.values()))
    print("soak: " + ("FAILED" if failed else "passed") + f" (logs in {home})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
