"""The end-to-end checks, through the published API and console ports, as a user of the stack would make them."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from installer.smoke.engine import SmokeError

T = TypeVar("T")
MODEL = "smoke-iris"
# Iris rows (sepal length, sepal width, petal length, petal width): a setosa and a virginica.
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@dataclass(frozen=True)
class Api:
    """The API as published on the host, with an admin key."""

    base: str
    key: str

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        """Send one request with the key; a connection error becomes a SmokeError naming the URL."""
        try:
            return requests.request(method, self.base + path, headers={"Authorization": f"Bearer {self.key}"},
                                    timeout=60, **kw)
        except requests.RequestException as exc:
            raise SmokeError(f"{method} {self.base + path}: {type(exc).__name__}: {exc}") from exc


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 1.0) -> T:
    """Call probe until it returns something other than None; raise SmokeError naming what did not happen."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None:
                return value
        except (SmokeError, requests.RequestException, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every_s)
    raise SmokeError(f"{what}: not within {timeout_s:.0f} s" + (f" (last error: {last})" if last else ""))


def ready(base: str) -> str:
    """Wait until the API's /readyz reports broker, repository and a cpu worker ready; return its checks."""
    def answer() -> str | None:
        resp = requests.get(base + "/readyz", timeout=10)
        return json.dumps(resp.json().get("checks"))[:300] if resp.status_code == 200 else None

    return wait_for("GET /readyz to answer 200", answer, 90, 1.0)


def iris_skops() -> bytes:
    """Return a scikit-learn LogisticRegression fitted on iris, saved with skops."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return bytes(sio.dumps(LogisticRegression(max_iter=500).fit(X, y)))


def upload_model(api: Api) -> str:
    """Upload the iris model; return a line saying what was stored."""
    metadata = {"name": MODEL, "format": "skops", "pool": "cpu"}
    files = {"file": ("iris.skops", io.BytesIO(iris_skops())), "metadata": (None, json.dumps(metadata))}
    resp = api.call("POST", "/api/v1/models", files=files)
    if resp.status_code != 201:
        raise SmokeError(f"upload: POST /api/v1/models answered {resp.status_code}: {resp.text[:500]}")
    doc = resp.json()
    return f"{MODEL} version {doc.get('version')} ({doc.get('size')} bytes)"


def predict(api: Api) -> list[Any]:
    """Predict the iris rows synchronously; return the predictions (setosa = 0, virginica = 2)."""
    resp = api.call("POST", f"/api/v1/models/{MODEL}/predict", json={"inputs": ROWS})
    if resp.status_code != 200:
        raise SmokeError(f"predict: answered {resp.status_code}: {resp.text[:500]}")
    predictions = list(resp.json()["predictions"])
    if predictions != [0, 2]:
        raise SmokeError(f"predict: expected [0, 2] (setosa, virginica), got {predictions}")
    return predictions


def predict_async(api: Api) -> str:
    """Queue a prediction job with ?async=true and wait until it succeeds; return its id."""
    resp = api.call("POST", f"/api/v1/models/{MODEL}/predict?async=true", json={"inputs": ROWS})
    if resp.status_code != 202:
        raise SmokeError(f"async predict: answered {resp.status_code}: {resp.text[:500]}")
    job_id = str(resp.json()["job_id"])

    def done() -> dict[str, Any] | None:
        job = api.call("GET", f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled"):
            raise SmokeError(f"async predict: job {job_id} ended {job['status']}: {json.dumps(job)[:500]}")
        return job if job["status"] == "succeeded" else None

    job = wait_for(f"async predict: job {job_id} to succeed", done, 60, 0.5)
    if "[0, 2]" not in json.dumps(job.get("result")).replace("[0,2]", "[0, 2]"):
        raise SmokeError(f"async predict: job {job_id} result lacks [0, 2]: {json.dumps(job)[:500]}")
    return job_id


def predictions_counted(api: Api) -> float:
    """Return modeldeck_predict_requests_total for the model's successes, as /metrics reports it."""
    text = api.call("GET", "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modeldeck_predict_requests_total{") and f'model="{MODEL}"' in line and 'outcome="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics_sum_workers(api: Api, expected: int, by_pid: Callable[[], dict[str, float]]) -> str:
    """See every /metrics scrape count all `expected` predictions, which both gunicorn workers served."""
    wait_for(f"/metrics to count {expected} predictions", lambda: True if predictions_counted(api) == expected else None, 30)
    # Each scrape may land on either worker: all must show the sum, not one process's share.
    counts = {predictions_counted(api) for _ in range(10)}
    if counts != {float(expected)}:
        raise SmokeError(f"/metrics: expected {expected} predictions on every scrape, got {sorted(counts)}")
    shares = by_pid()
    if len(shares) < 2 or sum(shares.values()) != expected:
        raise SmokeError(f"/metrics: expected {expected} predictions counted by 2 gunicorn workers, their files hold {shares}")
    split = " + ".join(f"{n:.0f} (pid {pid})" for pid, n in sorted(shares.items()))
    return f"{expected} on 10 of 10 scrapes = {split}"


def predict_many(api: Api, count: int, parallel: int) -> str:
    """Send `count` synchronous predictions, `parallel` at a time (so both gunicorn workers take some)."""
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda _: predict(api), range(count)))
    return f"{len(results)} answered {results[0]}"


def cpu_workers(api: Api) -> list[dict[str, Any]]:
    """Return the workers GET /api/v1/runtimes lists as serving pool cpu and not lost."""
    pools = api.call("GET", "/api/v1/runtimes").json()["pools"]
    cpu = next((p for p in pools if p["name"] == "cpu"), {"workers": []})
    return [w for w in cpu["workers"] if w.get("state") != "lost"]


def describe_workers(workers: list[dict[str, Any]]) -> str:
    """Name workers by host and pid."""
    return ", ".join(f"{w.get('hostname', w.get('host', '?'))}/{w.get('pid')} ({w.get('state')})" for w in workers)


def console_page(base: str) -> str:
    """Load the console's page and Streamlit's health endpoint over HTTP."""
    health = requests.get(base + "/_stcore/health", timeout=10)
    if health.status_code != 200 or health.text.strip() != "ok":
        raise SmokeError(f"console: /_stcore/health answered {health.status_code}: {health.text[:200]}")
    page = requests.get(base + "/", timeout=10)
    if page.status_code != 200 or not re.search(r"<title>.*</title>", page.text, flags=re.DOTALL) or "<script" not in page.text:
        raise SmokeError(f"console: / answered {page.status_code} without Streamlit's page: {page.text[:300]}")
    return f"/ {page.status_code} ({len(page.text)} bytes of Streamlit's page), /_stcore/health ok"
