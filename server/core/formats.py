"""Model formats: which ones are safe, and checks that a file is what its format claims."""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath
from typing import BinaryIO

from server.core.errors import UnprocessableError

SAFE_FORMATS = ("skops", "onnx", "torchscript", "huggingface")  # huggingface: server/core/hf_archive.py
PICKLE_FORMATS = ("joblib", "pickle")
FORMATS = SAFE_FORMATS + PICKLE_FORMATS

# joblib writes plain pickles or compressed ones (zlib, gzip, bz2, xz, lz4 magic numbers).
_JOBLIB_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")
# ONNX operator domains onnxruntime implements itself; any other domain needs a custom-op library, which is code.
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft")
DEFAULT_MAX_UNPACKED = 4 * 1024**3
# What _check_skops and _check_onnx import: scikit-learn comes with skops.io and is most of the 2-3 s and ~200 MB.
CHECK_MODULES = ("skops.io", "onnx", "onnx.checker", "google.protobuf.message")


def check_artifact(fmt: str, stream: BinaryIO, trusted_prefixes: tuple[str, ...],
                   max_unpacked: int = DEFAULT_MAX_UNPACKED) -> list[str]:
    """Check the file matches its declared format; return the skops types it needs trusted."""
    stream.seek(0)
    head = stream.read(8)
    stream.seek(0)
    try:
        if fmt == "skops":
            return _check_skops(stream, trusted_prefixes, max_unpacked)
        if fmt == "onnx":
            _check_onnx(stream)
        elif fmt == "torchscript":
            if not zipfile.is_zipfile(stream):
                raise UnprocessableError("file is not a TorchScript archive (expected a zip written by torch.jit.save)")
            stream.seek(0)
            _check_members(stream, max_unpacked)
        elif fmt == "pickle" and not head.startswith(b"\x80"):
            raise UnprocessableError("file is not a pickle (expected protocol 2 or later, starting with byte 0x80)")
        elif fmt == "joblib" and not head.startswith(_JOBLIB_MAGICS):
            raise UnprocessableError("file is not a joblib dump (expected a pickle or a compressed joblib file)")
        return []
    finally:
        stream.seek(0)


def _check_members(stream: BinaryIO, max_unpacked: int) -> None:
    """Refuse an archive whose member names escape it or whose members unpack to more than max_unpacked bytes.

    Nothing here extracts to disk, but a worker's library might; and a zip bomb must be refused before
    anything inflates it. Python's zipfile stops at a member's declared size, so the declared sizes bound it.
    """
    try:
        with zipfile.ZipFile(stream) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UnprocessableError(f"file is not a readable zip archive: {exc}") from exc
    total = 0
    for info in members:
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in PurePosixPath(name).parts:
            raise UnprocessableError(f"archive member {info.filename[:200]!r} points outside the archive; refused",
                                     {"member": info.filename[:200]})
        total += info.file_size
        if total > max_unpacked:
            raise UnprocessableError(
                f"archive unpacks to more than {max_unpacked} bytes (member {info.filename[:200]!r} declares "
                f"{info.file_size} bytes from {info.compress_size} compressed); refused as a zip bomb",
                {"member": info.filename[:200], "limit": max_unpacked})


def _check_skops(stream: BinaryIO, trusted_prefixes: tuple[str, ...], max_unpacked: int) -> list[str]:
    """Open a skops file without loading it and return the types it needs trusted."""
    from server.core.lean_imports import import_skops_io

    skops_io = import_skops_io()
    if not zipfile.is_zipfile(stream):
        raise UnprocessableError("file is not a skops archive (expected a zip written by skops.io.dump)")
    stream.seek(0)
    _check_members(stream, max_unpacked)
    stream.seek(0)
    try:
        untrusted = skops_io.get_untrusted_types(data=stream.read())
    except Exception as exc:  # skops raises many kinds on a malformed archive
        raise UnprocessableError(f"file is not a valid skops archive: {exc}") from exc
    refused = [t for t in untrusted if not t.startswith(trusted_prefixes)]
    if refused:
        raise UnprocessableError(
            "skops file needs types that this deployment does not trust: "
            f"{', '.join(refused)}; an admin may add their prefixes to MODELDECK_SKOPS_TRUSTED_PREFIXES",
            {"untrusted_types": refused},
        )
    return list(untrusted)


def _check_onnx(stream: BinaryIO) -> None:
    """Parse an ONNX protobuf and run the ONNX checker on it."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(stream.read())
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError) as exc:
        raise UnprocessableError(f"file is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    if not model.graph.node:
        raise UnprocessableError("file is not a valid ONNX model: its graph has no nodes")
    declared = {o.domain for o in model.opset_import}
    used = {n.domain: n.op_type for n in _all_nodes(model.graph)}
    custom = sorted((declared | set(used)) - set(ONNX_DOMAINS))
    if custom:
        ops = ", ".join(f"{d} ({used[d]})" if d in used else d for d in custom)
        raise UnprocessableError(
            f"ONNX model uses custom operator domain(s) {ops}; only the domains onnxruntime implements "
            f"({', '.join(repr(d) for d in ONNX_DOMAINS)}) are accepted, as custom operators need native code",
            {"custom_domains": custom})


def _all_nodes(graph: object) -> list[object]:
    """Return a graph's nodes and those of its subgraphs (If/Loop/Scan bodies)."""
    import onnx

    nodes: list[object] = []
    for node in graph.node:  # type: ignore[attr-defined]
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    nodes.extend(_all_nodes(sub))
    return nodes
