"""Run a prediction on a cached model: the work behind both predict handlers and the jobs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runtime.loader import (InputRejectedError, LoadedModel, MethodUnavailableError, ModelLoadError, ModelRunError,
                            load_model)
from runtime.state import WorkerState
from server.core.artifacts import get_artifact
from server.core.errors import ModelDeckError
from server.core.model_info import PROBA_METHODS
from server.core.wire import Lane, PredictOutcome, PredictRequest

if TYPE_CHECKING:
    from runtime.genai import TextModel


def run_prediction(state: WorkerState, request: PredictRequest, lane: Lane = "task") -> PredictOutcome:
    """Predict the request's rows with its model version, counted as busy meanwhile; errors come back as data."""
    with state.lock:
        state.busy += 1
    try:
        outcome = _run(state, request)
    finally:
        with state.lock:
            state.busy -= 1
    outcome.lane = lane
    return outcome


def _run(state: WorkerState, request: PredictRequest) -> PredictOutcome:
    spec = request.model
    label = request.label

    def load() -> LoadedModel:
        data = get_artifact(state.db, spec["sha256"])
        device = state.settings.device_for(state.settings.worker_pool)
        return load_model(spec["sha256"], spec["format"], data, spec.get("trusted_types") or [], device, state.settings)

    started = time.perf_counter()
    needs = spec.get("memory_bytes") or 0
    on_cuda = state.settings.device_for(state.settings.worker_pool).startswith("cuda")
    # On CUDA the weights go to the device, in float16 where allowed (half their stored float32 bytes at most).
    device_needs = (needs // 2 if state.settings.genai_fp16 else needs) if on_cuda else 0
    too_large = state.cache.refuses(needs, device_needs)
    if too_large and spec["sha256"] not in state.cache:
        return PredictOutcome.failed("model_too_large", f"{label} cannot be served by this worker: {too_large}")
    try:
        model, cold = state.cache.get(spec["sha256"], load)
    except ModelLoadError as exc:
        return PredictOutcome.failed("model_load_failed", f"{label} could not be loaded: {exc}")
    except ModelDeckError as exc:
        return PredictOutcome.failed(exc.code, f"{label} could not be loaded: {exc.message}")
    loaded = time.perf_counter()
    cpu_before = time.process_time()
    batch_size = None
    try:
        if model.text is not None:
            predictions, batch_size = run_text(model.text, request)
        else:
            predictions = model.run(request.rows, request.method, request.columns)
    except MethodUnavailableError as exc:
        return PredictOutcome.failed("method_unavailable", f"{label} {exc}")
    except InputRejectedError as exc:
        return PredictOutcome.failed("invalid_input", f"{label}: {exc}")
    except ModelRunError as exc:
        return PredictOutcome.failed("model_failed", f"{label} failed: {exc}")
    except Exception as exc:  # the model's own code raised: report it, keep the worker alive
        return PredictOutcome.failed("model_failed", f"{label} raised {type(exc).__name__}: {str(exc)[:300]}")
    done = time.perf_counter()
    # Probabilities come one column per class: say which column is which.
    per_class = request.method in PROBA_METHODS or (
        request.method == "decision_function" and predictions and isinstance(predictions[0], list))
    return PredictOutcome(
        ok=True, predictions=predictions, cold=cold, classes=model.info.classes if per_class else None,
        load_ms=round((loaded - started) * 1000, 3), model_ms=round((done - loaded) * 1000, 3),
        process_cpu_ms=round((time.process_time() - cpu_before) * 1000, 3), batch_size=batch_size,
    )


def run_text(text: TextModel, request: PredictRequest) -> tuple[list[Any], int | None]:
    """Encode (batched with concurrent requests) or generate; return the outputs and the batch size."""
    params = request.parameters or {}
    if request.method == "encode" and text.task == "embedding":
        return text.encode(list(request.rows), bool(params.get("normalize", False)))
    if request.method == "generate" and text.task == "text-generation":
        return text.generate(list(request.rows), params), len(request.rows)
    offered = "encode" if text.task == "embedding" else "generate"
    raise MethodUnavailableError(f"has no method '{request.method}'; it offers {offered}")
