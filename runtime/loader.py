"""Turn artifact bytes into a ready-to-call model, by format."""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import psutil

from server.core.model_info import ModelInfo, describe_estimator, describe_onnx, onnx_probability_output
from server.core.models_repo import FieldSpec
from server.core.settings import Settings

if TYPE_CHECKING:
    from runtime.genai import TextModel


# preload_libraries runs on a background thread while the worker already takes tasks; a load that imports the
# same packages at the same moment can see a half-initialised module, so imports and loads take turns.
IMPORT_LOCK = threading.RLock()


class ModelLoadError(Exception):
    """The artifact could not be turned into a model (corrupt file, missing library)."""


class ModelRunError(Exception):
    """The model raised or returned something that cannot be sent back."""


class MethodUnavailableError(ModelRunError):
    """The caller asked for a method the model does not offer."""


class InputRejectedError(ModelRunError):
    """An input the model cannot take (a text over its token bound); the message names the row."""


OUT_OF_MEMORY = ("ran out of memory while predicting (the worker's limit is MODELDECK_WORKER_MEMORY_LIMIT_MB); "
                 "the worker freed it and keeps serving other models")


Runner = Callable[[list[list[Any]], str, "list[FieldSpec] | None"], list[Any]]


@dataclass
class LoadedModel:
    sha256: str
    fmt: str
    size: int
    run: Runner  # (rows, method, columns) -> JSON-safe outputs
    info: ModelInfo
    memory: int = 0  # bytes of RAM it took, measured after load (the cache's measure; at least its artifact's size)
    device_memory: int = 0  # bytes of GPU memory its tensors hold
    device: str = "cpu"
    text: TextModel | None = None  # Hugging Face text models: encode / generate (runtime/genai.py)

    @property
    def cost(self) -> int:
        """Return the bytes of RAM the cache counts for this model."""
        return max(self.memory, self.size)


def _check_method(info: ModelInfo, method: str) -> None:
    if method not in info.methods:
        raise MethodUnavailableError(
            f"has no method '{method}'; it offers {', '.join(info.methods) or 'none'}")


def _to_array(rows: list[list[Any]]) -> np.ndarray:
    """Build a 2-D array: float64 when every value is numeric, object otherwise."""
    try:
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(rows, dtype=object)


def _to_list(output: Any) -> list[Any]:
    """Convert model output to JSON-safe Python values, refusing NaN and infinity."""
    values = output.tolist() if hasattr(output, "tolist") else list(output)
    flat = values if not values or not isinstance(values[0], list) else [v for row in values for v in row]
    for v in flat:
        if isinstance(v, float) and not math.isfinite(v):
            raise ModelRunError(f"the model returned a non-finite value ({v})")
    return values


_thread = threading.local()


def _fast_sklearn_config() -> None:
    # The API has already checked every value is a finite number (or a string of the declared type),
    # so scikit-learn's finiteness and parameter checks only cost time. Its config is per thread.
    if not getattr(_thread, "configured", False):
        import sklearn

        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        _thread.configured = True


def _sklearn_runner(model: Any) -> tuple[Runner, ModelInfo]:
    if not hasattr(model, "predict"):
        raise ModelLoadError(f"the loaded object ({type(model).__name__}) has no predict method")
    info = describe_estimator(model)
    feature_names = info.feature_names

    def run(rows: list[list[Any]], method: str, columns: list[FieldSpec] | None) -> list[Any]:
        _check_method(info, method)
        _fast_sklearn_config()
        if feature_names is not None:
            from runtime.frames import to_frame

            try:
                inputs: Any = to_frame(rows, columns, feature_names)
            except ValueError as exc:
                raise ModelRunError(str(exc)) from exc
        else:
            inputs = _to_array(rows)
        try:
            return _to_list(getattr(model, method)(inputs))
        except MemoryError as exc:
            raise ModelRunError(OUT_OF_MEMORY) from exc

    return run, info


def _onnx_runner(data: bytes) -> tuple[Runner, ModelInfo]:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Workers run several models side by side; one thread per session keeps them from fighting.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    graph = onnx.load_model_from_string(data)
    info = describe_onnx(graph)
    proba_name, labels = onnx_probability_output(graph)
    first = session.get_inputs()[0]
    outputs = {"predict": session.get_outputs()[0].name, "predict_proba": proba_name}
    dtype = np.int64 if "int64" in first.type else np.float32

    def run(rows: list[list[Any]], method: str, columns: list[FieldSpec] | None) -> list[Any]:
        _check_method(info, method)
        try:
            out = session.run([outputs[method]], {first.name: np.asarray(rows, dtype=dtype)})[0]
        except MemoryError as exc:
            raise ModelRunError(OUT_OF_MEMORY) from exc
        if method == "predict_proba" and isinstance(out, list) and out and isinstance(out[0], dict):
            # skl2onnx's ZipMap: one {label: probability} per row; answer columns in the labels' order.
            return _to_list(np.array([[row[label] for label in labels or []] for row in out], dtype=np.float64))
        return _to_list(out)

    return run, info


def _torchscript_runner(data: bytes, device: str) -> Callable[[list[list[Any]]], list[Any]]:
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError("torchscript models need torch, which this worker's environment lacks") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        # A GPU pool's model is never run on the CPU behind the caller's back.
        raise ModelLoadError("this worker serves a GPU pool but torch sees no CUDA device")
    module = torch.jit.load(io.BytesIO(data), map_location=device)
    module.eval()
    info = ModelInfo(methods=["predict"], classes=None, feature_names=None)

    def run(rows: list[list[Any]], method: str, columns: list[FieldSpec] | None) -> list[Any]:
        _check_method(info, method)
        with torch.no_grad():
            return _to_list(module(torch.tensor(rows, dtype=torch.float32, device=device)).cpu())

    return run, info


def preload_libraries() -> None:
    """Import the model libraries once at worker start, so a model's first load is only deserialisation."""
    import importlib

    from server.core.lean_imports import import_skops_io

    with IMPORT_LOCK:
        import_skops_io()  # first: scikit-learn's package walk must not pull torch in (server/core/lean_imports.py)
    for module in ("sklearn.linear_model", "sklearn.ensemble", "sklearn.tree", "sklearn.pipeline",
                   "sklearn.preprocessing", "sklearn.svm", "sklearn.neighbors", "onnxruntime", "joblib",
                   "runtime.frames"):
        with IMPORT_LOCK:
            try:
                importlib.import_module(module)
            except ImportError:
                pass


def load_model(sha256: str, fmt: str, data: bytes, trusted_types: list[str], device: str = "cpu",
               settings: Settings | None = None) -> LoadedModel:
    """Load artifact bytes of a given format into a callable model (TorchScript and Hugging Face onto `device`).

    The RAM it took is measured as the process's resident memory before and after: loads take turns under
    IMPORT_LOCK, so only predictions running meanwhile on other threads blur the figure.
    """
    process = psutil.Process()
    with IMPORT_LOCK:
        if fmt == "huggingface":
            _import_text_libraries()  # their first import (hundreds of MB) is the process's, not this model's
        before = process.memory_info().rss
        model = _load_model(sha256, fmt, data, trusted_types, device, settings)
        model.memory = max(process.memory_info().rss - before, 0)
    if model.text is not None:
        weights, on_device = model.text.memory()
        model.device_memory = on_device
        if on_device == 0:
            model.memory = max(model.memory, weights)
    return model


def _import_text_libraries() -> None:
    try:
        import runtime.genai  # noqa: F401
        import sentence_transformers  # noqa: F401
        import transformers  # noqa: F401
        import onnxruntime  # noqa: F401  (embedding models on the CPU: MODELDECK_GENAI_CPU_RUNTIME)
        import torch.onnx  # noqa: F401
    except ImportError:
        pass  # _text_runner says what is missing


def _text_runner(data: bytes, device: str, settings: Settings | None) -> tuple[Runner, ModelInfo, TextModel]:
    try:
        from runtime.genai import load_text_model
    except ImportError as exc:
        raise ModelLoadError(f"huggingface models need the genai extra (torch, transformers, sentence-transformers), "
                             f"which this worker's environment lacks ({exc.name}); serve them from a pool installed "
                             "with pip install '.[genai]' (docs/runtime.md)") from exc
    text = load_text_model(data, device, settings or Settings())
    methods = ["encode"] if text.task == "embedding" else ["generate"]
    info = ModelInfo(methods=methods, classes=None, feature_names=None)

    def run(rows: list[list[Any]], method: str, columns: list[FieldSpec] | None) -> list[Any]:
        raise ModelRunError("text models are called through runtime/inference.py's text path")

    return run, info, text


def _load_model(sha256: str, fmt: str, data: bytes, trusted_types: list[str], device: str,
                settings: Settings | None) -> LoadedModel:
    text = None
    try:
        if fmt == "huggingface":
            run, info, text = _text_runner(data, device, settings)
        elif fmt == "skops":
            from server.core.lean_imports import import_skops_io

            run, info = _sklearn_runner(import_skops_io().loads(data, trusted=trusted_types))
        elif fmt == "onnx":
            run, info = _onnx_runner(data)
        elif fmt == "joblib":
            import joblib

            run, info = _sklearn_runner(joblib.load(io.BytesIO(data)))
        elif fmt == "pickle":
            import pickle

            run, info = _sklearn_runner(pickle.loads(data))  # noqa: S301 - admitted only by an admin with pickle enabled
        elif fmt == "torchscript":
            run, info = _torchscript_runner(data, device)
        else:
            raise ModelLoadError(f"unknown model format '{fmt}'")
    except ModelLoadError:
        raise
    except Exception as exc:  # any library error while loading is the artifact's fault
        raise ModelLoadError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return LoadedModel(sha256=sha256, fmt=fmt, size=len(data), run=run, info=info, device=device, text=text)
