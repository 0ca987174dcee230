"""What an API process imports at start is frozen out of the cyclic collector's passes.

Each full pass walks every tracked object: with the upload libraries preloaded, the API's heap doubled and its
requests got slower (docs/performance.md). Frozen, a pass walks only what requests leave behind. (A worker does not
freeze: a model it loads while its libraries import would be frozen too, and an evicted model in reference cycles
would then never be freed.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MEASURE = """
import gc, json, sys
{start}
print(json.dumps({{"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}}))
"""


def _heap(start: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(start=start)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_api_freezes_the_upload_libraries_it_preloads() -> None:
    heap = _heap("from server.services import preload\npreload.start(True)\npreload._done.wait(100)\n"
                 "assert preload.state() == {'ok': True}, preload.state()")
    # scikit-learn, skops and onnx are well over 100,000 objects; what is left tracked is the few made since.
    assert heap["frozen"] > 100_000, heap
    assert heap["tracked"] < heap["frozen"] // 10, heap

