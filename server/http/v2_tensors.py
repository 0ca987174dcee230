"""Open Inference Protocol (v2) tensors: decode request tensors into rows, encode predictions as a tensor."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from server.core.errors import InvalidInputError
from server.core.models_repo import FieldSpec

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
SCHEMA_DTYPES = {"number": "FP64", "integer": "INT64", "string": "BYTES", "boolean": "BOOL", "category": "BYTES"}
TEXT_TYPES = {"string", "category"}  # schema types a BYTES tensor may carry
OUTPUT_NAME = "predict"  # the default output; a model's others are named for their methods (predict_proba, ...)


def split_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Split a request into its JSON header and the binary tensor data that follows it."""
    if header_length is None:
        json_part, binary = raw, b""
    else:
        try:
            n = int(header_length)
        except ValueError as exc:
            raise InvalidInputError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from exc
        if not 0 < n <= len(raw):
            raise InvalidInputError(f"Inference-Header-Content-Length {n} does not fit a body of {len(raw)} bytes")
        json_part, binary = raw[:n], raw[n:]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"inference request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidInputError("inference request must be an object with a non-empty 'inputs' list")
    return request, binary


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return [data]


def _decode_bytes(buf: bytes) -> list[str]:
    values, pos = [], 0
    while pos < len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        if pos + 4 + n > len(buf):
            raise struct.error(f"element of {n} bytes runs past the end of the tensor")
        values.append(buf[pos + 4 : pos + 4 + n].decode("utf-8"))
        pos += 4 + n
    return values


def _decode_binary(name: str, dtype: str, chunk: bytes) -> list[Any]:
    """Decode one tensor's binary data: little-endian, row major; BYTES elements carry a 4-byte length."""
    if dtype == "BYTES":
        try:
            return _decode_bytes(chunk)
        except (struct.error, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"input '{name}': BYTES binary data is not 4-byte lengths each followed by UTF-8 text") from exc
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    if len(chunk) % np_dtype.itemsize:
        raise InvalidInputError(f"input '{name}': {len(chunk)} bytes of binary data is not a whole number of {dtype} elements")
    return np.frombuffer(chunk, dtype=np_dtype).tolist()


def decode_inputs(request: dict[str, Any], binary: bytes) -> dict[str, tuple[list[int], list[Any]]]:
    """Return each input tensor as (shape, flat values), reading binary data in order."""
    tensors: dict[str, tuple[list[int], list[Any]]] = {}
    offset = 0
    for t in request["inputs"]:
        if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= t.keys():
            raise InvalidInputError("each input tensor needs 'name', 'shape' and 'datatype'")
        name, shape, dtype = t["name"], t["shape"], t["datatype"]
        if dtype != "BYTES" and dtype not in DTYPES:
            raise InvalidInputError(f"input '{name}': unsupported datatype {dtype!r}; expected one of {', '.join([*DTYPES, 'BYTES'])}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInputError(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInputError(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            chunk = binary[offset : offset + size]
            if len(chunk) != size:
                raise InvalidInputError(f"input '{name}': binary_data_size {size} runs past the end of the body")
            offset += size
            values = _decode_binary(name, dtype, chunk)
        elif "data" in t:
            values = _flatten(t["data"])
        else:
            raise InvalidInputError(f"input '{name}' has neither 'data' nor binary_data_size")
        expected = int(np.prod(shape)) if shape else 1
        if len(values) != expected:
            raise InvalidInputError(f"input '{name}': shape {shape} needs {expected} values, got {len(values)}")
        tensors[name] = (shape, values)
    return tensors


def check_datatypes(request: dict[str, Any], schema: list[FieldSpec] | None, model: str) -> None:
    """Refuse a BYTES tensor where the model takes numbers, naming the input (the caller's mistake: 400, not the
    model's ValueError as a 500)."""
    types = {f["name"]: f["type"] for f in schema or []}
    for tensor in request["inputs"]:
        if tensor.get("datatype") != "BYTES":
            continue
        name = tensor["name"]
        if name in types and types[name] not in TEXT_TYPES:
            raise InvalidInputError(
                f"input '{name}': expected datatype {SCHEMA_DTYPES[types[name]]} (feature '{name}' of model '{model}' "
                f"is a {types[name]}), got BYTES", {"input": name, "datatype": "BYTES"})
        if name not in types and not TEXT_TYPES & set(types.values()):
            expected = ", ".join(sorted({SCHEMA_DTYPES[t] for t in types.values()})) if types else "FP64"
            raise InvalidInputError(
                f"input '{name}': expected a numeric datatype ({expected}, as GET /v2/models/{model} says), got BYTES; "
                "send numbers, or upload the model with an input schema that has string features",
                {"input": name, "datatype": "BYTES"})


def _coerce(value: Any, kind: str | None) -> Any:
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in TEXT_TYPES and isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def tensors_to_rows(tensors: dict[str, tuple[list[int], list[Any]]], schema: list[FieldSpec] | None) -> list[list[Any]]:
    """Build rows from one tensor per feature, or from a single [rows, features] tensor."""
    names = [f["name"] for f in schema] if schema else []
    if schema and set(tensors) == set(names):
        columns = []
        n_rows = None
        for f in schema:
            shape, values = tensors[f["name"]]
            if n_rows is None:
                n_rows = len(values)
            if len(values) != n_rows:
                raise InvalidInputError(f"input '{f['name']}' has {len(values)} values; the other inputs have {n_rows}")
            columns.append([_coerce(v, f["type"]) for v in values])
        return [list(r) for r in zip(*columns)]
    if len(tensors) != 1:
        expected = f"one tensor per feature ({', '.join(names)}) or " if names else ""
        raise InvalidInputError(f"expected {expected}a single tensor of shape [rows, features], got inputs {', '.join(tensors)}")
    ((name, (shape, values)),) = tensors.items()
    if len(shape) != 2:
        raise InvalidInputError(f"input '{name}': expected shape [rows, features], got {shape}")
    width = shape[1]
    if names and width != len(names):
        raise InvalidInputError(f"input '{name}': shape {shape} has {width} values per row; "
                                f"this model takes {len(names)} ({', '.join(names)})")
    kinds = [f["type"] for f in schema] if schema and len(schema) == width else [None] * width
    return [[_coerce(v, kinds[j]) for j, v in enumerate(values[i * width : (i + 1) * width])] for i in range(shape[0])]


def _datatype(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def tensors_to_texts(tensors: dict[str, tuple[list[int], list[Any]]]) -> list[str]:
    """Read a text model's inputs: one BYTES tensor of shape [n] or [n, 1], one string per element."""
    if len(tensors) != 1:
        raise InvalidInputError(f"a text model takes one BYTES input tensor of shape [n], got inputs {', '.join(tensors)}")
    ((name, (shape, values)),) = tensors.items()
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(f"input '{name}': expected shape [n] or [n, 1] (one text per element), got {shape}")
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]


def encode_output(predictions: list[Any], binary: bool, name: str = OUTPUT_NAME,
                  datatype: str | None = None) -> tuple[dict[str, Any], bytes]:
    """Return the output tensor for predictions (of datatype, else the narrowest that holds them), in binary when asked."""
    rows = len(predictions)
    if predictions and isinstance(predictions[0], list):
        shape = [rows, len(predictions[0])]
        flat = [v for row in predictions for v in row]
    else:
        shape, flat = [rows], list(predictions)
    dtype = datatype or _datatype(flat)
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": dtype}
    if not binary:
        tensor["data"] = [str(v) for v in flat] if dtype == "BYTES" else flat
        return tensor, b""
    if dtype == "BYTES":
        data = b"".join(struct.pack("<I", len(s)) + s for s in (str(v).encode() for v in flat))
    else:
        data = np.asarray(flat, dtype=DTYPES[dtype]).tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    return tensor, data
