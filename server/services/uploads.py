"""Accept a model upload: check metadata, policy and file; store the artifact, then the version."""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from server.services.validation import parse_model
from server.services.auth import Principal
from server.core import models_repo
from server.core.artifacts import put_artifact
from server.core.errors import ForbiddenError, InvalidInputError, UnprocessableError
from server.core.formats import PICKLE_FORMATS, check_artifact
from server.core.hf_archive import HFInfo, inspect_archive
from server.core.model_info import ModelInfo, describe_estimator, describe_onnx
from server.core.keys_repo import role_rank
from server.core.models_repo import FieldSpec, VersionDoc
from server.core.settings import Settings
from server.services.requirements import parse_requirements
from server.services.validation import parse_reference

logger = logging.getLogger(__name__)

# Starts with a letter or digit, so '.', '..' and '-x' are never names (they would read as paths or options).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class SchemaField(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=100)
    type: Literal["number", "integer", "string", "boolean", "category"]
    nullable: bool = Field(default=False, description="null is a valid value (NaN / None / pd.NA for the model)")
    categories: list[str | int] | None = Field(default=None, max_length=10000,
                                               description="a category field's categories, in the model's order")


class MonitoringPolicy(BaseModel):
    """Per-model prediction logging and alert thresholds (docs/monitoring.md)."""

    model_config = {"extra": "forbid"}

    log_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="fraction of predictions whose inputs are logged")
    log_outputs: bool = Field(default=False, description="log the predictions too, not only the inputs")
    error_rate_alert: float | None = Field(default=None, ge=0.0, le=1.0)
    p99_alert_ms: float | None = Field(default=None, gt=0)
    alert_min_requests: int | None = Field(default=None, ge=1)
    drift_psi_warn: float | None = Field(default=None, gt=0)
    drift_psi_alert: float | None = Field(default=None, gt=0)

    @field_validator("drift_psi_alert")
    @classmethod
    def _alert_above_warn(cls, value: float | None, info: ValidationInfo) -> float | None:
        warn = info.data.get("drift_psi_warn")
        if value is not None and warn is not None and value <= warn:
            raise ValueError(f"must be above drift_psi_warn ({warn})")
        return value


class UploadMetadata(BaseModel):
    """The ``metadata`` part of a model upload."""

    model_config = {"extra": "forbid"}

    name: str = Field(pattern=NAME_PATTERN, description="a letter or digit, then letters, digits, '.', '_' and '-', at most 100")
    format: Literal["skops", "onnx", "joblib", "pickle", "torchscript", "huggingface"]
    pool: str = Field(default="cpu", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,49}$")
    min_memory_mb: int | None = Field(default=None, ge=0)
    input_schema: list[SchemaField] | None = Field(default=None, min_length=1)
    description: str = Field(default="", max_length=2000)
    requirements: list[str] = Field(default_factory=list)
    monitoring: MonitoringPolicy | None = None
    example: dict[str, Any] | None = Field(default=None, description="one input row: where the console's form starts")


def parse_metadata(raw: str | None) -> UploadMetadata:
    """Parse the metadata part, naming what is missing or wrong."""
    if raw is None:
        raise InvalidInputError("missing form field 'metadata': expected a JSON object with name, format and pool")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"form field 'metadata' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"form field 'metadata' must be a JSON object, got {type(data).__name__}")
    meta: UploadMetadata = parse_model(UploadMetadata, data, "metadata field")
    parse_requirements(meta.requirements)
    if meta.input_schema:
        names = [f.name for f in meta.input_schema]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInputError(f"metadata field 'input_schema': feature '{dupes[0]}' appears more than once")
    return meta


def check_policy(settings: Settings, principal: Principal, fmt: str) -> None:
    """Refuse pickle formats unless the deployment enables them, and then accept them from admins only."""
    if fmt not in PICKLE_FORMATS:
        return
    if not settings.allow_pickle:
        raise UnprocessableError(
            f"format '{fmt}' is disabled on this server: pickles run arbitrary code when loaded; "
            "upload skops or onnx, or have an operator set MODELDECK_ALLOW_PICKLE=true",
            {"field": "format", "value": fmt, "expected": ["skops", "onnx", "torchscript"]},
        )
    if role_rank(principal.role) < role_rank("admin"):
        raise ForbiddenError(f"format '{fmt}' runs arbitrary code when loaded; only an admin may upload it")


def client_filename(raw: str) -> str:
    """Return the base name of the client's file name: it is shown, never used as a path, and kept free of '../'."""
    base = PurePosixPath(raw.replace("\\", "/")).name
    return "".join(c for c in base if c.isprintable())[:200] or "artifact"


def upload_model(
    db: Any, settings: Settings, principal: Principal, meta_raw: str | None, file: Any, reference: Any
) -> VersionDoc:
    """Validate and store one upload; nothing becomes visible unless every step succeeds."""
    meta = parse_metadata(meta_raw)
    check_policy(settings, principal, meta.format)
    if file is None or not file.filename:
        raise InvalidInputError("missing file part 'file': attach the model artifact")
    stream: IO[bytes] = file.stream
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    if size == 0:
        raise InvalidInputError(f"file '{file.filename}' is empty")
    # An archive may not unpack to more than an upload may be (zip bombs).
    trusted = check_artifact(meta.format, stream, settings.skops_trusted_prefixes, settings.max_upload_bytes)
    hf: HFInfo | None = None
    if meta.format == "huggingface":
        # Pickled weights inside are code, admitted as the pickle formats are: enabled, and from an admin.
        admitted = settings.allow_pickle and role_rank(principal.role) >= role_rank("admin")
        hf = inspect_archive(stream, settings.max_upload_bytes, admitted)
        stream.seek(0)
        info = ModelInfo(methods=hf.methods, classes=None, feature_names=None)
    else:
        info = inspect_model(meta.format, stream, trusted, size, settings)
    schema: list[FieldSpec] | None = [_field(f) for f in meta.input_schema] if meta.input_schema else None
    stats = None
    if reference is not None and reference.filename:
        given = schema
        schema, stats = parse_reference(reference.stream.read(), schema)
        if given is None and info is not None and info.feature_names is not None:
            schema, stats = _features_only(schema, stats, info.feature_names)
    schema = reconcile_schema(meta.name, schema, info)
    art = put_artifact(db, stream)
    doc: VersionDoc = {
        "name": meta.name, "format": meta.format, "pool": meta.pool, "min_memory_mb": meta.min_memory_mb or 0,
        "sha256": art.sha256, "size": art.size, "input_schema": schema, "description": meta.description,
        "requirements": meta.requirements, "trusted_types": trusted, "reference_stats": stats,
        "created_by": principal.subject, "filename": client_filename(file.filename),
        "monitoring": meta.monitoring.model_dump() if meta.monitoring else None,
        "methods": info.methods if info else None, "classes": info.classes if info else None,
        "feature_names": info.feature_names if info else None, "example": meta.example,
    }
    if hf is not None:
        doc.update(hf_fields(hf, meta.pool, settings))
    if meta.format in PICKLE_FORMATS or (hf is not None and hf.pickled_weights):
        logger.warning("pickle-format model %s uploaded by %s", meta.name, principal.subject)
    return models_repo.create_version(db, doc)


def hf_fields(hf: HFInfo, pool: str, settings: Settings) -> VersionDoc:
    """Return what a version records of a Hugging Face archive: task, size and how its pool will load it."""
    device = settings.device_for(pool)
    floats = {"F32", "F16", "BF16"}
    half = device == "cuda" and settings.genai_fp16 and bool(hf.dtypes) and set(hf.dtypes) <= floats | {"I64"}
    serving = {"device": device, "dtype": "float16" if half else "float32",
               "why": ("fp16 on CUDA (MODELDECK_GENAI_FP16)" if half else
                       "the CPU computes in float32" if device == "cpu" else "weights are not all floating point"
                       if settings.genai_fp16 else "MODELDECK_GENAI_FP16=false")}
    return {"task": hf.task, "parameters": hf.parameters, "weights_bytes": hf.weights_bytes, "serving": serving}


def _field(f: SchemaField) -> FieldSpec:
    spec = FieldSpec(name=f.name, type=f.type)
    if f.nullable:
        spec["nullable"] = True
    if f.categories is not None:
        spec["categories"] = f.categories
    return spec


def inspect_model(fmt: str, stream: IO[bytes], trusted: list[str], size: int, settings: Settings) -> ModelInfo | None:
    """Read what a model offers from a checked skops file (loaded with only its checked types) or an ONNX graph.

    Pickles are never loaded here: they are code, and the API does not run uploaded code.
    """
    try:
        if fmt == "skops" and size <= settings.upload_inspect_max_mb * 2**20:
            from server.core.lean_imports import import_skops_io

            return describe_estimator(import_skops_io().loads(stream.read(), trusted=trusted))
        if fmt == "onnx":
            import onnx

            return describe_onnx(onnx.load_model_from_string(stream.read()))
        return None
    except ImportError as exc:
        # The API's environment lacks a library the model needs; a pool's workers may have it (requirements).
        logger.warning("model needs %s, which the API lacks: its methods are found when a worker loads it", exc.name)
        return None
    except Exception as exc:  # any other library error while loading is the artifact's fault
        raise UnprocessableError(f"model file could not be loaded: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        stream.seek(0)


def _features_only(schema: list[FieldSpec], stats: dict[str, Any], features: list[str]) -> tuple[list[FieldSpec], dict[str, Any]]:
    """Keep a reference sample's columns that are the model's features, in the model's order."""
    by_name = {f["name"]: f for f in schema}
    missing = [n for n in features if n not in by_name]
    if missing:
        raise UnprocessableError(
            f"reference sample lacks the model's feature(s) {', '.join(missing)}; its columns are {', '.join(by_name)}",
            {"missing": missing, "model_features": features})
    stats = {**stats, "features": {n: stats["features"][n] for n in features}}
    return [by_name[n] for n in features], stats


def reconcile_schema(name: str, schema: list[FieldSpec] | None, info: ModelInfo | None) -> list[FieldSpec] | None:
    """Check a schema against the named features the model was fitted on, or infer one from them."""
    if info is None or info.feature_names is None:
        return schema
    features = info.feature_names
    if schema is None:
        if info.selects_by_name:
            raise UnprocessableError(
                f"model '{name}' was fitted on named features ({', '.join(features)}) whose types cannot be read "
                "off the model; send 'input_schema' in the metadata or a 'reference' CSV with those columns",
                {"model_features": features})
        return [FieldSpec(name=n, type="number") for n in features]
    names = [f["name"] for f in schema]
    if set(names) != set(features):
        extra = [n for n in names if n not in features]
        lacking = [n for n in features if n not in names]
        raise UnprocessableError(
            f"input_schema contradicts the features model '{name}' was fitted on: the schema names "
            f"{', '.join(names)}; the model takes {', '.join(features)}"
            + (f" (not in the model: {', '.join(extra)})" if extra else "")
            + (f" (missing from the schema: {', '.join(lacking)})" if lacking else ""),
            {"schema": names, "model_features": features})
    return schema
