"""/metrics counts every prediction once when the API runs as the image runs it: gunicorn, 2 workers, one directory.

The command is read from compose/Dockerfile's CMD, so the test follows the image; PROMETHEUS_MULTIPROC_DIR is set
as the image and the manifests set it. The API empties that directory at start (the gunicorn master does, in
server/http/gunicorn_worker.py), so a restart on the same directory does not count the last run's predictions again.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Client, Proc, Stack, free_port, unique, wait_for

N = 40


def image_command() -> list[str]:
    """The API image's CMD (the cpu stage's), as a JSON list."""
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd, "compose/Dockerfile has no CMD in JSON form"
    return list(json.loads(cmd.group(1)))


def start_like_the_image(stack: Stack, directory: Path) -> tuple[Proc, str]:
    args = image_command()
    assert args[0] == "gunicorn" and args[args.index("--workers") + 1] == "2", args
    port = free_port()
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    proc = Proc([sys.executable, "-m", *args], {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                stack.tmp / f"api-image-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(proc.log.read_text()[-3000:])
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, 90, "API started as the image starts it", proc.log)
    return proc, url


def predictions_counted(url: str, key: str, model: str) -> float:
    text = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "modeldeck_predict_requests_total" and s.labels.get("model") == model)


def send(url: str, key: str, model: str) -> None:
    for _ in range(N):
        # A new connection each time, so both gunicorn workers take some of them.
        resp = requests.post(f"{url}/api/v1/models/{model}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
                             headers={"Authorization": f"Bearer {key}", "Connection": "close"}, timeout=30)
        assert resp.status_code == 200, resp.text


def test_n_predictions_read_n_on_metrics_across_two_workers_and_a_restart(stack: Stack, worker: Any, admin: Client,
                                                                         admin_key: str, iris_skops: bytes) -> None:
    model = unique("multiproc")
    assert admin.upload(model, iris_skops).status_code == 201
    directory = stack.tmp / f"prometheus-image-{model}"  # not created: the API creates it
    proc, url = start_like_the_image(stack, directory)
    try:
        send(url, key=admin_key, model=model)
        pids = {p.stem.split("_")[-1] for p in directory.glob("histogram_*.db")}
        assert len(pids) == 2, f"predictions were served by {len(pids)} worker process(es), expected both"
        assert predictions_counted(url, admin_key, model) == N
    finally:
        proc.stop()
    # The same directory, as a restarted container keeps it: the last run's files are removed at start.
    assert list(directory.glob("*.db"))
    proc, url = start_like_the_image(stack, directory)
    try:
        assert predictions_counted(url, admin_key, model) == 0
        send(url, key=admin_key, model=model)
        assert predictions_counted(url, admin_key, model) == N
    finally:
        proc.stop()
