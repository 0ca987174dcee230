"""Schemathesis against the live OpenAPI document, once per role: no 500 and no response outside the documented schema.

The fuzzer creates keys, uploads, scales pools and moves aliases at random, so it runs against a stack of its own
(private nx-27017, database and queue prefix, its own worker and API) and nothing it does reaches other tests.
No controller runs there, so a scale request is only recorded; nothing is excluded from the run.

Budget: at most EXAMPLES generated cases per operation and phase (examples, coverage, fuzzing), a fixed seed so a
failure reproduces, one request at a time (two workers trip a CPython 3.11 AST race inside Hypothesis).
Schemathesis runs as its CLI in a subprocess, so its pytest plugin never loads into this suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Stack, start_api, start_worker, wait_for
from isolation import isolated_stack, ready
from server.core import keys_repo

EXAMPLES = 8
SEED = 20261126
ROLES = ("admin", "operator", "analyst", "service")


@pytest.fixture(scope="module")
def fuzz_target(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with isolated_stack(stack, tmp_path_factory.mktemp("fuzz")) as (own, _repo):
        worker = start_worker(own, "cpu")
        api, url = start_api(own)
        try:
            wait_for(lambda: ready(url), 30, "API readiness", api.log)
            keys = {role: keys_repo.create_key(own.db, f"fuzz-{role}", role, None, None, "tests")[1] for role in ROLES}
            yield url, keys
        finally:
            api.stop()
            worker.stop()


@pytest.mark.parametrize("role", ROLES)
def test_no_server_error_and_no_undocumented_response_for_each_role(fuzz_target: tuple[str, dict[str, str]], role: str,
                                                                     tmp_path: Path) -> None:
    url, keys = fuzz_target
    st = Path(sys.executable).with_name("st")
    if not st.exists() and shutil.which("st") is None:
        pytest.fail("schemathesis is needed: pip install -e '.[test]'")
    cmd = [str(st) if st.exists() else "st", "run", f"{url}/api/v1/openapi.json",
           "--header", f"Authorization: Bearer {keys[role]}",
           "--checks", "not_a_server_error,response_schema_conformance",
           "--phases", "examples,coverage,fuzzing", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
           "--workers", "1", "--request-timeout", "40", "--suppress-health-check", "all",
           "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    # The output never shows the key: schemathesis filters the Authorization header.
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    assert "Tested: " in done.stdout and "Failures:" not in done.stdout, done.stdout[-6000:]
