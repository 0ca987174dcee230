"""Memory of the API under one kind of traffic at a time: which kind makes it grow?

Usage (loopback only; starts and stops a private stack like soak.py; bounded by --minutes plus about a minute):
    .venv/bin/python tests/bench/memory_by_traffic.py KIND[,KIND...] [--minutes 4]

Several kinds at once (e.g. mixed,jobs) share the clients between them, round robin. KIND is one of:
  me       GET /api/v1/me (HTTP, auth and the Flask stack only), 16 clients
  predict  single-row predictions of one model, 16 clients
  mixed    predictions over 20 models x 2 versions, by alias or explicit version, 1-5 rows, 32 clients
  jobs     async predictions (?async=true) submitted and polled to the end, 16 clients
  audit    audit pages of 50, the chain verified every 50th request, 16 clients

It prints the API's resident memory (both gunicorn processes) after 20 s of warm-up and then every minute,
with the number of requests since the warm-up. The soak (soak.py) mixes all of these with uploads; this
script splits them, so a growth seen in the soak can be traced to one kind of request.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import SCHEMA, Stack, artifact  # noqa: E402

KINDS = ("me", "predict", "mixed", "jobs", "audit")


def upload(url: str, headers: dict[str, str], model: int, version: int) -> None:
    files = {"file": ("m.skops", io.BytesIO(artifact(model, version))),
             "metadata": (None, json.dumps({"name": f"m{model}", "format": "skops", "pool": "cpu", "input_schema": SCHEMA}))}
    resp = requests.post(url + "/api/v1/models", files=files, headers=headers, timeout=60)
    if resp.status_code != 201:
        raise SystemExit(f"upload of m{model} v{version} failed: {resp.status_code} {resp.text}")


def one_request(s: requests.Session, url: str, kind: str, n: int) -> None:
    if kind == "me":
        resp = s.get(url + "/api/v1/me", timeout=30)
    elif kind == "predict":
        resp = s.post(url + "/api/v1/models/m1/predict", json={"inputs": [[1.0, 2.0]]}, timeout=30)
    elif kind == "mixed":
        m = random.randint(1, 20)
        body: dict[str, object] = {"inputs": [[1.0, 2.0]] * random.randint(1, 5)}
        ref = random.choice([None, 1, 2])
        if ref is not None:
            body["version"] = ref
        resp = s.post(url + f"/api/v1/models/m{m}/predict", json=body, timeout=30)
    elif kind == "jobs":
        resp = s.post(url + "/api/v1/models/m1/predict?async=true", json={"inputs": [[1.0, 2.0]]}, timeout=30)
        if resp.status_code != 202:
            raise SystemExit(f"job submit: {resp.status_code} {resp.text}")
        job = resp.json()["job_id"]
        while (resp := s.get(url + f"/api/v1/jobs/{job}", timeout=30)).json()["status"] not in ("succeeded", "failed"):
            time.sleep(0.05)
    else:
        resp = s.get(url + "/api/v1/audit", params={"limit": 50}, timeout=30)
        if n % 50 == 0:
            resp = s.get(url + "/api/v1/audit/verify", timeout=60)
    if resp.status_code != 200:
        raise SystemExit(f"{kind}: {resp.status_code} {resp.text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", help="one of " + ", ".join(KINDS) + ", or several joined by commas")
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    kinds = args.kind.split(",")
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"kind: expected one or more of {', '.join(KINDS)} joined by commas, got {args.kind!r}")
    stack = Stack(Path(tempfile.mkdtemp(prefix="modeldeck-memory-")))
    try:
        headers = {"Authorization": f"Bearer {stack.start()}"}
        upload(stack.url, headers, 1, 1)
        if "mixed" in kinds:
            for m in range(2, 21):
                for v in (1, 2):
                    upload(stack.url, headers, m, v)
        stop = time.monotonic() + 20 + args.minutes * 60
        count = [0]
        lock = threading.Lock()

        def client(kind: str) -> None:
            s = requests.Session()
            s.headers.update(headers)
            while time.monotonic() < stop:
                with lock:
                    count[0] += 1
                    n = count[0]
                one_request(s, stack.url, kind, n)

        clients = 32 if "mixed" in kinds else 16
        threads = [threading.Thread(target=client, args=(kinds[i % len(kinds)],), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(20)
        base, start_count = stack.rss_mb()["api"], count[0]
        print(f"{args.kind}: API RSS after warm-up {base} MB", flush=True)
        while time.monotonic() < stop - 1:
            time.sleep(min(60.0, max(0.0, stop - time.monotonic())))
            rss = stack.rss_mb()["api"]
            print(f"{args.kind}: {count[0] - start_count} requests, API RSS {rss} MB ({rss - base:+.1f})", flush=True)
        for t in threads:
            t.join(60)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
