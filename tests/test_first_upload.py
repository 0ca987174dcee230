"""The first upload to a fresh API process is as fast as the next: its libraries were imported as it started."""

from __future__ import annotations

import time

import requests

from conftest import Client, Proc, Stack, start_api, unique, wait_for


def test_the_first_upload_to_a_fresh_api_does_not_wait_for_library_imports(
        stack: Stack, worker: Proc, admin_key: str, iris_skops: bytes) -> None:
    proc, url = start_api(stack)
    try:
        wait_for(lambda: requests.get(url + "/readyz", timeout=5).status_code == 200, 60, "API readiness", proc.log)
        assert requests.get(url + "/readyz", timeout=5).json()["checks"]["uploads"] == {"ok": True}
        began = time.perf_counter()
        first = Client(url, admin_key).upload(unique("first"), iris_skops)
        took = time.perf_counter() - began
        assert first.status_code == 201, first.text
        # Importing skops and scikit-learn at the first upload took 2.7-9 s here; a warm upload takes ~0.05 s.
        assert took < 1.0, f"the first upload took {took:.2f} s"
        assert "upload check libraries imported in" in proc.log.read_text()
    finally:
        proc.stop()
