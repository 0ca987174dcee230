"""Model formats: which ones are safe, and checks that a file is what its format claims."""

from __future__ import annotations

import zipfile
from typing import BinaryIO

from server.core.errors import UnprocessableError

SAFE_FORMATS = ("skops", "onnx", "torchscript")
PICKLE_FORMATS = ("joblib", "pickle")
FORMATS = SAFE_FORMATS + PICKLE_FORMATS

# joblib writes plain pickles or compressed ones (zlib, gzip, bz2, xz, lz4 magic numbers).
_JOBLIB_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")


def check_artifact(fmt: str, stream: BinaryIO, trusted_prefixes: tuple[str, ...]) -> list[str]:
    """Check the file matches its declared format; return the skops types it needs trusted."""
    stream.seek(0)
    head = stream.read(8)
    stream.seek(0)
    try:
        if fmt == "skops":
            return _check_skops(stream, trusted_prefixes)
        if fmt == "onnx":
            _check_onnx(stream)
        elif fmt == "torchscript":
            if not zipfile.is_zipfile(stream):
                raise UnprocessableError("file is not a TorchScript archive (expected a zip written by torch.jit.save)")
        elif fmt == "pickle" and not head.startswith(b"\x80"):
            raise UnprocessableError("file is not a pickle (expected protocol 2 or later, starting with byte 0x80)")
        elif fmt == "joblib" and not head.startswith(_JOBLIB_MAGICS):
            raise UnprocessableError("file is not a joblib dump (expected a pickle or a compressed joblib file)")
        return []
    finally:
        stream.seek(0)


def _check_skops(stream: BinaryIO, trusted_prefixes: tuple[str, ...]) -> list[str]:
    """Open a skops file without loading it and return the types it needs trusted."""
    import skops.io

    if not zipfile.is_zipfile(stream):
        raise UnprocessableError("file is not a skops archive (expected a zip written by skops.io.dump)")
    stream.seek(0)
    try:
        untrusted = skops.io.get_untrusted_types(data=stream.read())
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
