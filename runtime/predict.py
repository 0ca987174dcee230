"""Run a prediction on a cached model: the work behind the predict tasks."""

from __future__ import annotations

import time
from typing import Any

from runtime.loader import LoadedModel, ModelLoadError, ModelRunError, load_model
from runtime.state import WorkerState
from server.core.artifacts import get_artifact
from server.core.errors import ModelDeckError


def run_prediction(state: WorkerState, spec: dict[str, Any], rows: list[list[Any]]) -> dict[str, Any]:
    """Predict rows with the model version described by spec; errors come back as data."""
    label = f"model '{spec['name']}' version {spec['version']}"

    def load() -> LoadedModel:
        data = get_artifact(state.db, spec["sha256"])
        device = "cuda" if state.settings.worker_pool in state.settings.gpu_pools else "cpu"
        return load_model(spec["sha256"], spec["format"], data, spec.get("trusted_types") or [], device)

    started = time.perf_counter()
    try:
        model, cold = state.cache.get(spec["sha256"], load)
    except ModelLoadError as exc:
        return {"ok": False, "error": {"code": "model_load_failed", "message": f"{label} could not be loaded: {exc}"}}
    except ModelDeckError as exc:
        return {"ok": False, "error": {"code": exc.code, "message": f"{label} could not be loaded: {exc.message}"}}
    loaded = time.perf_counter()
    cpu_before = time.process_time()
    try:
        predictions = model.run(rows)
    except ModelRunError as exc:
        return {"ok": False, "error": {"code": "model_failed", "message": f"{label} failed: {exc}"}}
    except Exception as exc:  # the model's own code raised: report it, keep the worker alive
        return {"ok": False, "error": {"code": "model_failed", "message": f"{label} raised {type(exc).__name__}: {str(exc)[:300]}"}}
    done = time.perf_counter()
    cpu_ms = (time.process_time() - cpu_before) * 1000
    return {
        "ok": True,
        "predictions": predictions,
        "cold": cold,
        "load_ms": round((loaded - started) * 1000, 3),
        "model_ms": round((done - loaded) * 1000, 3),
        # CPU time of the whole worker process meanwhile (all its threads): tells a model's own work from a pause
        # of the process (runtime/fastlane.py's inline gate)
        "process_cpu_ms": round(cpu_ms, 3),
    }
