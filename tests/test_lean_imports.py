"""Processes load only what they serve: reading skops files never imports torch (server/core/lean_imports.py).

Run in the genai environment, where torch is installed: there a plain ``import skops.io`` imports torch (the cause,
asserted so this test tells when the trick is no longer needed), and the lean import does not, with the same
trusted types.
"""

from __future__ import annotations

import json
import subprocess

from conftest import ROOT
from genai_env import genai_python

PROBE = """
import json, sys
if sys.argv[1] == "plain":
    import skops.io
else:
    from server.core.lean_imports import import_skops_io
    import_skops_io()
from skops.io import _trusted_types
print(json.dumps({"torch": "torch" in sys.modules, "types": sorted(_trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES)}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([genai_python(), "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_reading_skops_files_does_not_import_torch_where_torch_is_installed() -> None:
    plain, lean = _probe("plain"), _probe("lean")
    assert plain["torch"], "import skops.io no longer pulls torch in: server/core/lean_imports.py can go"
    assert not lean["torch"]
    assert lean["types"] == plain["types"] and len(lean["types"]) > 100
