"""Hold a private ModelDeck stack with an iris model for another process to measure (tests/bench/ab_checkouts.py).

Usage: python tests/bench/hold_stack.py CHECKOUT
Brings up a stack from CHECKOUT's code (`installer.stack.up`, its own MODELDECK_HOME, queue prefix and embedded
repository; the RabbitMQ at MODELDECK_BROKER_URL), stops its console, uploads a skops LogisticRegression on iris,
prints one JSON line (predict URL, admin key, the pids of api, worker-cpu and repository), then waits until its
stdin closes and takes the stack down.
"""

import io
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

checkout = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(checkout))
os.chdir(checkout)

import requests  # noqa: E402
from private_stack import private_settings  # noqa: E402
import skops.io as sio  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402


work = Path(tempfile.mkdtemp(prefix="modeldeck-hold-"))
settings = private_settings(work / "home", f"hold-{uuid.uuid4().hex[:8]}.")

from installer.processes import Layout, running, stop  # noqa: E402
from installer.stack import api_url, down, up  # noqa: E402

key = up(settings)
layout = Layout(settings.home.resolve())
stop(layout, "console")
try:
    base = api_url(settings) + "/api/v1"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    X, y = load_iris(return_X_y=True)
    blob = sio.dumps(LogisticRegression(max_iter=500).fit(X, y))
    resp = session.post(base + "/models", files={"file": ("iris.skops", io.BytesIO(blob)),
                                                 "metadata": (None, json.dumps({"name": "iris", "format": "skops"}))})
    if resp.status_code != 201:
        raise SystemExit(f"upload answered {resp.status_code}: {resp.text[:300]}")
    pids = {name: running(layout, name).pid for name in ("api", "worker-cpu", "repository")}
    print(json.dumps({"url": base + "/models/iris/predict", "key": key, "pids": pids}), flush=True)
    sys.stdin.read()
finally:
    down(settings)
