"""A model artifact over 200 MB uploads, downloads byte for byte, and predicts, over real HTTP.

The embedded nx-27017 server cannot return one GridFS file over about 45 MB in a single reply,
so the repository keeps artifacts as 4 MiB chunk documents (server/core/artifacts.py). This
test is the proof that the design holds end to end for an artifact well past that limit.

Run with -s to see the upload, download and first-predict times.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import Client, Stack, unique

WEIGHTS = 52_500_000  # float32 values: 210 MB of initializer
MIN_ARTIFACT_BYTES = 200 * 1000 * 1000
FEATURES = ["f0", "f1", "f2", "f3"]
BLOCK = 1024 * 1024
# A cold load of a 200 MB model reads ~50 chunks and builds an onnxruntime session; allow it time.
HTTP_TIMEOUT_S = 600


def build_large_onnx(path: Path) -> np.ndarray:
    """Write an ONNX model computing ReduceSum(X + Gather(W, [0, 1, 2, 3]), axis=1); return W[:4].

    W is 52.5 M normally distributed float32 values, so its bytes cannot be deduplicated or
    compressed away: the artifact really is over 200 MB on the wire and in the repository.
    """
    weights = np.random.default_rng(20240611).standard_normal(WEIGHTS, dtype=np.float32)
    head = weights[:4].copy()
    w_init = numpy_helper.from_array(weights, name="W")
    del weights
    idx_init = numpy_helper.from_array(np.arange(4, dtype=np.int64), name="idx")
    axes_init = numpy_helper.from_array(np.array([1], dtype=np.int64), name="axes")
    nodes = [
        helper.make_node("Gather", ["W", "idx"], ["w4"], axis=0),
        helper.make_node("Add", ["X", "w4"], ["shifted"]),
        helper.make_node("ReduceSum", ["shifted", "axes"], ["Y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "large_artifact",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"])],
        initializer=[w_init, idx_init, axes_init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modeldeck-tests")
    model.ir_version = 8  # the IR version that goes with opset 17; every onnxruntime since 1.13 accepts it
    del graph, w_init
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    del model
    path.write_bytes(data)
    del data
    return head


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


class MultipartFile:
    """A multipart/form-data body read from disk as it is sent, with a known length.

    requests reads a ``files=`` upload into memory whole; this object lets it stream the artifact
    from the temporary file instead (requests sees ``len`` and ``read`` and sets Content-Length).
    """

    def __init__(self, fields: dict[str, str], file_field: str, filename: str, path: Path) -> None:
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._parts: list[bytes | BinaryIO] = [head, self._file, tail]
        self.len = len(head) + path.stat().st_size + len(tail)  # requests takes Content-Length from this

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def read(self, size: int = -1) -> bytes:
        out = b""
        while self._parts and (size < 0 or len(out) < size):
            part = self._parts[0]
            want = -1 if size < 0 else size - len(out)
            if isinstance(part, bytes):
                take = part if want < 0 else part[:want]
                rest = b"" if want < 0 else part[want:]
                out += take
                if rest:
                    self._parts[0] = rest
                else:
                    self._parts.pop(0)
            else:
                block = part.read(want)
                if block:
                    out += block
                else:
                    self._parts.pop(0)
        return out

    def close(self) -> None:
        self._file.close()


@pytest.fixture(scope="module")
def large_onnx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, np.ndarray]]:
    path = tmp_path_factory.mktemp("large") / "large.onnx"
    started = time.perf_counter()
    head = build_large_onnx(path)
    sha = sha256_of(path)
    print(f"\n[large artifact] built {path.stat().st_size / 1e6:.1f} MB ONNX model in {time.perf_counter() - started:.1f} s")
    yield path, sha, head
    path.unlink(missing_ok=True)


def test_large_onnx_artifact_uploads_round_trips_and_predicts(
    stack: Stack, operator: Client, make_client: Any, large_onnx: tuple[Path, str, np.ndarray]
) -> None:
    path, local_sha, head = large_onnx
    size = path.stat().st_size
    assert size >= MIN_ARTIFACT_BYTES
    name = unique("large-onnx")

    # Upload, streaming the body from the temporary file.
    metadata = {"name": name, "format": "onnx", "pool": "cpu",
                "input_schema": [{"name": f, "type": "number"} for f in FEATURES]}
    body = MultipartFile({"metadata": json.dumps(metadata)}, "file", "large.onnx", path)
    started = time.perf_counter()
    try:
        uploaded = operator.post("/api/v1/models", data=body, headers={"Content-Type": body.content_type},
                                 timeout=HTTP_TIMEOUT_S)
    finally:
        body.close()
    upload_s = time.perf_counter() - started
    assert uploaded.status_code == 201, uploaded.text[:2000]
    version = uploaded.json()
    assert version["sha256"] == local_sha
    assert version["size"] == size
    assert version["version"] == 1 and version["format"] == "onnx"
    print(f"\n[large artifact] upload of {size / 1e6:.1f} MB: {upload_s:.1f} s ({size / 1e6 / upload_s:.0f} MB/s)")

    # The repository holds it as many chunk documents, never one document or one GridFS file.
    chunks = stack.db.artifact_chunks.count_documents({"sha256": local_sha})
    assert chunks > 1, f"artifact stored as {chunks} chunk document(s); expected many"
    manifest = stack.db.artifacts.find_one({"_id": local_sha})
    assert manifest is not None and manifest["size"] == size and manifest["chunks"] == chunks

    # Download, streaming into sha256: byte for byte what was uploaded.
    started = time.perf_counter()
    digest = hashlib.sha256()
    received = 0
    with operator.get(f"/api/v1/models/{name}/versions/1/artifact", stream=True, timeout=HTTP_TIMEOUT_S) as resp:
        assert resp.status_code == 200, resp.text[:2000]
        assert resp.headers["Content-Length"] == str(size)
        for block in resp.iter_content(BLOCK):
            digest.update(block)
            received += len(block)
    download_s = time.perf_counter() - started
    assert received == size
    assert digest.hexdigest() == local_sha == version["sha256"]
    print(f"[large artifact] download: {download_s:.1f} s ({size / 1e6 / download_s:.0f} MB/s)")

    # Predict three rows: the cold first call loads the model from its chunks, then a warm one.
    rows = [[0.5, -1.0, 2.0, 3.25], [0.0, 0.0, 0.0, 0.0], [-7.5, 1.5, 100.0, -0.125]]
    expected = (np.asarray(rows, dtype=np.float32) + head).sum(axis=1, dtype=np.float32)
    service = make_client("service", models=[name])
    started = time.perf_counter()
    answer = service.post(f"/api/v1/models/{name}/predict", json={"inputs": rows}, timeout=HTTP_TIMEOUT_S)
    first_s = time.perf_counter() - started
    assert answer.status_code == 200, answer.text[:2000]
    result = answer.json()
    assert result["version"] == 1 and result["model"] == name
    assert result["predictions"] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-5)
    print(f"[large artifact] first predict: {first_s:.1f} s (worker load {result['timings']['load_ms'] / 1000:.1f} s)")

    started = time.perf_counter()
    warm = service.post(f"/api/v1/models/{name}/predict", json={"inputs": [dict(zip(FEATURES, rows[2]))]},
                        timeout=HTTP_TIMEOUT_S)
    warm_s = time.perf_counter() - started
    assert warm.status_code == 200, warm.text[:2000]
    assert warm.json()["predictions"] == pytest.approx([float(expected[2])], rel=1e-5, abs=1e-5)
    print(f"[large artifact] warm predict: {warm_s * 1000:.0f} ms")

    # The repository copy was not disturbed by reading it back.
    assert stack.db.artifact_chunks.count_documents({"sha256": local_sha}) == chunks
