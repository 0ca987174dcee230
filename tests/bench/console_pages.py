"""Time each console page against a running stack with many models and audit entries.

Usage: ./modeldeck up, then
    .venv/bin/python tests/bench/console_pages.py [--url http://127.0.0.1:8600] [--key-file .modeldeck/admin.key]
        [--models 100] [--audit 10000]
Tops the stack up to at least --models models (one small skops artifact, stored once) and --audit
audit entries (tests/bench/audit_query.py's bulk append), then runs every page with Streamlit's AppTest
(the page's full script run: its API calls and its rendering) five times and prints the median seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import requests
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from audit_query import append_bulk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["overview", "predict", "monitoring", "models", "runtimes", "audit", "keys", "datasources", "jobs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--key-file", default=".modeldeck/admin.key")
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--audit", type=int, default=10000)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmarks only run against a loopback address")
    key = open(args.key_file).read().strip()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    have = session.get(args.url + "/api/v1/models", params={"limit": 1}).json()["total"]
    X, y = load_iris(return_X_y=True)
    artifact = sio.dumps(LogisticRegression(max_iter=300).fit(X, y))
    for i in range(have, args.models):
        meta = {"name": f"bench-model-{i:03d}", "format": "skops", "pool": "cpu"}
        session.post(args.url + "/api/v1/models", files={"file": ("m.skops", io.BytesIO(artifact)),
                                                         "metadata": (None, json.dumps(meta))}).raise_for_status()
    entries = session.get(args.url + "/api/v1/audit/verify").json()["entries"]
    if entries < args.audit:
        append_bulk(args.audit - entries)
    print(f"models: {session.get(args.url + '/api/v1/models', params={'limit': 1}).json()['total']}, "
          f"audit entries: {max(entries, args.audit)}")
    os.environ["MODELDECK_CONSOLE_API_URL"] = args.url
    me = session.get(args.url + "/api/v1/me").json()
    for page in PAGES:
        times = []
        for _ in range(5):
            at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
            at.session_state.credential = key
            at.session_state.me = me
            at.run()
            at.switch_page(f"pages/{page}.py")
            started = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - started)
            if at.exception:
                raise SystemExit(f"page {page} failed: {at.exception}")
        print(f"page {page:11} median {statistics.median(times):.2f} s  (max {max(times):.2f} s)")
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
