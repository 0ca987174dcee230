"""Hugging Face model archives (zip or tar.gz of a model directory): checked without running any of their code.

The API checks an upload here (members, sizes, configs, safetensors headers, custom code) and records what the
archive holds; the worker unpacks it with the same member checks before transformers reads the directory.
"""

from __future__ import annotations

import io
import json
import math
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from server.core.errors import UnprocessableError

# Bytes per element of each safetensors dtype.
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".so", ".dll", ".dylib")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
MAX_JSON_BYTES = 64 * 2**20  # a tokenizer.json of a large vocabulary is tens of MB
# Causal-LM architectures end so in config.json; sentence-transformers models are recognised by modules.json.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
ST_MODULE_PREFIX = "sentence_transformers.models."
TASK_METHODS = {"embedding": ["encode"], "text-generation": ["generate"]}


@dataclass
class HFInfo:
    """What an archive holds, as recorded with the version."""

    task: str  # "embedding" | "text-generation"
    methods: list[str]
    parameters: int  # elements of all weight tensors
    weights_bytes: int  # their bytes as stored (the memory they need on the CPU)
    dtypes: list[str]
    pickled_weights: list[str] = field(default_factory=list)  # members that are pickles (admins, pickles enabled)
    root: str = ""  # the directory inside the archive that holds config.json ("" at the top)


@dataclass
class _Member:
    name: str
    size: int
    read: Any  # () -> bytes of the whole member
    head: Any  # (n) -> first n bytes


def _bad_name(name: str) -> bool:
    path = name.replace("\\", "/")
    return path.startswith("/") or (len(path) > 1 and path[1] == ":") or ".." in PurePosixPath(path).parts


def _refuse(message: str, **details: Any) -> UnprocessableError:
    return UnprocessableError(message, details)


def _zip_members(stream: IO[bytes]) -> Iterator[_Member]:
    try:
        archive = zipfile.ZipFile(stream)
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise _refuse(f"file is not a readable zip archive: {exc}") from exc
    for info in infos:
        # The Unix mode in the high bits says whether the entry is a symlink (0o120000).
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise _refuse(f"archive member {info.filename[:200]!r} is a link; links are refused",
                          member=info.filename[:200])
        if info.is_dir():
            continue

        def head(n: int, info: zipfile.ZipInfo = info) -> bytes:
            with archive.open(info) as f:
                return f.read(n)

        yield _Member(info.filename, info.file_size, lambda info=info: archive.read(info), head)


def _tar_members(stream: IO[bytes]) -> Iterator[_Member]:
    try:
        archive = tarfile.open(fileobj=stream, mode="r:*")
        infos = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _refuse(f"file is not a readable tar.gz archive: {exc}") from exc
    for info in infos:
        if info.issym() or info.islnk():
            raise _refuse(f"archive member {info.name[:200]!r} is a link; links are refused", member=info.name[:200])
        if info.isdir():
            continue
        if not info.isfile():
            raise _refuse(f"archive member {info.name[:200]!r} is not a regular file; refused", member=info.name[:200])

        def read(info: tarfile.TarInfo = info) -> bytes:
            f = archive.extractfile(info)
            return f.read() if f is not None else b""

        yield _Member(info.name, info.size, read, lambda n, info=info: _tar_head(archive, info, n))


def _tar_head(archive: tarfile.TarFile, info: tarfile.TarInfo, n: int) -> bytes:
    f = archive.extractfile(info)
    return f.read(n) if f is not None else b""


def members(stream: IO[bytes], max_unpacked: int) -> list[_Member]:
    """List an archive's files, refusing names outside it, links and more than max_unpacked bytes unpacked."""
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    listed = list(_zip_members(stream) if head.startswith(b"PK") else _tar_members(stream))
    total = 0
    for m in listed:
        if _bad_name(m.name):
            raise _refuse(f"archive member {m.name[:200]!r} points outside the archive; refused", member=m.name[:200])
        total += m.size
        if total > max_unpacked:
            raise _refuse(f"archive unpacks to more than {max_unpacked} bytes (the upload limit, MODELDECK_MAX_UPLOAD_MB) "
                          f"at member {m.name[:200]!r}; refused", member=m.name[:200], limit=max_unpacked)
    if not listed:
        raise _refuse("archive is empty: expected a Hugging Face model directory with config.json")
    return listed


def _parse_json(m: _Member) -> Any:
    if m.size > MAX_JSON_BYTES:
        raise _refuse(f"archive member {m.name!r}: {m.size} bytes is over {MAX_JSON_BYTES} for a JSON config", member=m.name)
    try:
        return json.loads(m.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"archive member {m.name!r} is not valid JSON: {exc}", member=m.name) from exc


def _find_code(value: Any, where: str) -> None:
    """Refuse configs that ask transformers to import code shipped with the model."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "auto_map" or (key == "trust_remote_code" and inner):
                raise _refuse(
                    f"{where} has '{key}': the model needs its own Python code (custom code, trust_remote_code), "
                    "which ModelDeck never runs; use a model whose architecture transformers ships", member=where, key=key)
            _find_code(inner, where)
    elif isinstance(value, list):
        for inner in value:
            _find_code(inner, where)


def check_safetensors(m: _Member) -> tuple[int, int, set[str]]:
    """Check a safetensors header against the member's size; return its parameter count, bytes and dtypes."""
    if m.size < 8:
        raise _refuse(f"{m.name!r} is not a safetensors file: {m.size} bytes, shorter than its 8-byte header length",
                      member=m.name)
    raw = m.head(8)
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER_BYTES or 8 + length > m.size:
        raise _refuse(f"{m.name!r}: header length {length} does not fit a file of {m.size} bytes (truncated?)",
                      member=m.name)
    try:
        header = json.loads(m.head(8 + length)[8:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"{m.name!r}: safetensors header is not valid JSON: {exc}", member=m.name) from exc
    if not isinstance(header, dict):
        raise _refuse(f"{m.name!r}: safetensors header is not an object", member=m.name)
    data_size = m.size - 8 - length
    params, spans, dtypes = 0, [], set()
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or spec.get("dtype") not in SAFETENSORS_DTYPES:
            raise _refuse(f"{m.name!r}: tensor {name!r} has no known dtype (got {str(spec)[:80]})", member=m.name)
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)):
            raise _refuse(f"{m.name!r}: tensor {name!r} needs a shape and two data_offsets", member=m.name)
        count = math.prod(shape)
        begin, end = offsets
        expected = count * SAFETENSORS_DTYPES[spec["dtype"]]
        if not 0 <= begin <= end or end - begin != expected:
            raise _refuse(f"{m.name!r}: tensor {name!r} of shape {shape} and dtype {spec['dtype']} needs {expected} "
                          f"bytes; its offsets span {end - begin}", member=m.name, tensor=name)
        if end > data_size:
            raise _refuse(f"{m.name!r}: tensor {name!r} ends at byte {end} of a data section of {data_size} bytes "
                          "(the file is truncated)", member=m.name, tensor=name)
        params += count
        spans.append((begin, end))
        dtypes.add(spec["dtype"])
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise _refuse(f"{m.name!r}: tensors overlap or leave a gap at byte {min(begin, covered)}", member=m.name)
        covered = end
    if covered != data_size:
        raise _refuse(f"{m.name!r}: tensors cover {covered} bytes of a {data_size}-byte data section", member=m.name)
    return params, data_size, dtypes


def inspect_archive(stream: IO[bytes], max_unpacked: int, allow_pickled_weights: bool) -> HFInfo:
    """Check a Hugging Face archive without running code; return its task, size and methods."""
    listed = members(stream, max_unpacked)
    configs = [m for m in listed if PurePosixPath(m.name).name == "config.json"]
    if not configs:
        raise _refuse("archive has no config.json: expected a Hugging Face model directory (config.json, tokenizer "
                      "files, *.safetensors)", expected="config.json")
    root = str(PurePosixPath(min(configs, key=lambda m: m.name.count("/")).name).parent)
    root = "" if root == "." else root
    inside = [m for m in listed if not root or m.name.startswith(root + "/")]
    params, weights, dtypes, pickled, by_name = 0, 0, set(), [], {}
    for m in inside:
        rel = m.name[len(root) + 1:] if root else m.name
        by_name[rel] = m
        lower = rel.lower()
        if lower.endswith(CODE_SUFFIXES):
            raise _refuse(f"archive member {m.name!r} is code; ModelDeck never runs code shipped with a model",
                          member=m.name)
        if lower.endswith(".json"):
            _find_code(_parse_json(m), m.name)
        elif lower.endswith(".safetensors"):
            p, b, d = check_safetensors(m)
            params, weights, dtypes = params + p, weights + b, dtypes | d
        elif lower.endswith(PICKLE_SUFFIXES) and m.size > 0:
            pickled.append(m.name)
    if pickled and not allow_pickled_weights:
        raise _refuse(f"archive member {pickled[0]!r} holds pickled weights, which run code when loaded; save the "
                      "model with safetensors (save_pretrained(..., safe_serialization=True)), or have an admin upload "
                      "it on a server with MODELDECK_ALLOW_PICKLE=true", member=pickled[0])
    if weights == 0 and not pickled:
        raise _refuse("archive has no weights: expected *.safetensors files next to config.json", expected="*.safetensors")
    config = _parse_json(by_name["config.json"])
    if not isinstance(config, dict):
        raise _refuse("config.json is not a JSON object", member="config.json")
    task = _task(config, by_name)
    return HFInfo(task=task, methods=list(TASK_METHODS[task]), parameters=params, weights_bytes=weights,
                  dtypes=sorted(dtypes), pickled_weights=pickled, root=root)


def _task(config: dict[str, Any], by_name: dict[str, _Member]) -> str:
    """Tell embedding (a sentence-transformers layout) from text generation (a causal LM's config)."""
    if "modules.json" in by_name:
        modules = _parse_json(by_name["modules.json"])
        if not isinstance(modules, list):
            raise _refuse("modules.json is not a list of modules", member="modules.json")
        for module in modules:
            kind = module.get("type", "") if isinstance(module, dict) else ""
            if not str(kind).startswith(ST_MODULE_PREFIX):
                raise _refuse(f"modules.json names module type {str(kind)[:100]!r}; only sentence-transformers' own "
                              f"modules ({ST_MODULE_PREFIX}*) are loaded, others are custom code", member="modules.json")
        return "embedding"
    architectures = config.get("architectures") or []
    if any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures):
        return "text-generation"
    raise _refuse(f"config.json's architectures {architectures!r} are neither a causal language model (*ForCausalLM, "
                  "*LMHeadModel) nor a sentence-transformers model (modules.json); ModelDeck serves those two tasks",
                  architectures=architectures)


def extract(data: bytes, target: Path, max_unpacked: int) -> Path:
    """Unpack a checked archive into target (after the same member checks); return the model directory."""
    info = inspect_archive(io.BytesIO(data), max_unpacked, allow_pickled_weights=True)
    stream = io.BytesIO(data)
    target.mkdir(parents=True, exist_ok=True)
    for m in members(stream, max_unpacked):
        path = target / m.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(m.read())
    return target / info.root if info.root else target
