"""What travels between the API and a worker for a prediction: task names, the request, the outcome, the reply.

This is the only module that builds or reads these messages; the router (server/transport/router.py) and the
worker's handler (runtime/predict_handler.py) both import it. A request travels as the single argument of a
Celery protocol-2 task message (JSON); the answer as a Celery-shaped result (``status``, ``result``,
``task_id``), so that Celery's own strategy and result backend can carry it too (``tasks.predict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import orjson

if TYPE_CHECKING:
    from server.core.models_repo import FieldSpec

PREDICT_TASK = "runtime.predict"  # synchronous: answered to the caller's listener or reply queue
PREDICT_JOB_TASK = "runtime.predict_job"  # asynchronous: args [job_id]; the request is stored with the job
BATCH_JOB_TASK = "runtime.batch_job"  # args [job_id]
BATCH_CHUNK_TASK = "runtime.batch_chunk"  # args [job_id, chunk]: one planned range of a batch job (runtime/batch_plan.py)

# Task message headers naming the caller's direct-reply listener (server/core/direct_reply.py).
HEADER_REPLY_ADDRESS = "reply_direct"
HEADER_REPLY_KEY = "reply_key"

SUCCESS = "SUCCESS"  # the worker ran the task; the outcome says whether the model answered
FAILURE = "FAILURE"  # the task itself broke (a bug of ours); no outcome
READY_STATES = frozenset({SUCCESS, FAILURE, "REVOKED"})

Lane = Literal["inline", "pool", "task"]  # the consumer thread, a pool thread, or Celery's default strategy


class WireError(ValueError):
    """A message that does not have the contract's shape."""


class _ModelRefRequired(TypedDict):
    name: str
    version: int
    sha256: str
    format: str
    trusted_types: list[str]


class ModelRef(_ModelRefRequired, total=False):
    """The version a worker must load: its artifact and how to read it."""

    memory_bytes: int  # what its weights need once loaded, known from the upload (huggingface): refused if over


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """One prediction: rows (lists in the input schema's order) for one model version and one of its methods.

    ``columns`` (the input schema: names, types, nullability, categories) travels only for models that take a
    DataFrame, which the worker builds with those names and dtypes; other models get the rows as an array.
    Text models (encode, generate) take one string per row and the call's ``parameters`` (checked by the API).
    """

    model: ModelRef
    rows: list[Any]
    method: str = "predict"
    columns: list[FieldSpec] | None = None
    parameters: dict[str, Any] | None = None

    def to_args(self) -> list[Any]:
        """Return the task's positional arguments."""
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        """Return the request as it travels (and is stored with an asynchronous job)."""
        data: dict[str, Any] = {"model": self.model, "rows": self.rows}
        if self.method != "predict":
            data["method"] = self.method
        if self.columns is not None:
            data["columns"] = self.columns
        if self.parameters:
            data["parameters"] = self.parameters
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PredictRequest:
        """Read a request; WireError when it does not have the contract's shape."""
        if not isinstance(data, dict):
            raise WireError(f"a prediction request is an object, got {type(data).__name__}")
        model, rows = data.get("model"), data.get("rows")
        if not isinstance(model, dict) or not isinstance(model.get("sha256"), str) or not isinstance(rows, list):
            raise WireError("a prediction request needs 'model' (with its sha256) and 'rows'")
        method, columns, parameters = data.get("method", "predict"), data.get("columns"), data.get("parameters")
        if not isinstance(method, str) or (columns is not None and not isinstance(columns, list)):
            raise WireError("a prediction request's 'method' is a string and its 'columns' a list")
        if parameters is not None and not isinstance(parameters, dict):
            raise WireError("a prediction request's 'parameters' is an object")
        return cls(model=model, rows=rows, method=method, columns=columns, parameters=parameters)  # type: ignore[arg-type]

    @classmethod
    def from_args(cls, args: Any) -> PredictRequest:
        """Read a request from a task's positional arguments."""
        if not isinstance(args, (list, tuple)) or len(args) != 1:
            raise WireError("a prediction task takes one argument, the request")
        return cls.from_dict(args[0])

    @property
    def label(self) -> str:
        return f"model '{self.model.get('name')}' version {self.model.get('version')}"


def model_ref(doc: Any) -> ModelRef:
    """Return what a worker needs to load a stored version."""
    ref: ModelRef = {"name": doc["name"], "version": doc["version"], "sha256": doc["sha256"], "format": doc["format"],
                     "trusted_types": doc.get("trusted_types") or []}
    if doc.get("weights_bytes"):
        ref["memory_bytes"] = int(doc["weights_bytes"])
    return ref


@dataclass(slots=True)
class PredictOutcome:
    """What a worker answers: the predictions and timings, or an error code and message (never both)."""

    ok: bool
    predictions: list[Any] = field(default_factory=list)
    cold: bool = False  # the model had to be loaded for this request
    load_ms: float = 0.0
    model_ms: float = 0.0
    # CPU time of the whole worker process while the model ran (all threads): tells a model's own work from a
    # pause of the process (the inline gate in runtime/predict_handler.py)
    process_cpu_ms: float | None = None
    lane: Lane = "task"
    classes: list[Any] | None = None  # class labels, for methods that answer one column per class
    batch_size: int | None = None  # text models: inputs in the forward pass this request's inputs ran in
    error_code: str = ""
    error_message: str = ""

    @classmethod
    def failed(cls, code: str, message: str) -> PredictOutcome:
        return cls(ok=False, error_code=code, error_message=message)

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"ok": False, "error": {"code": self.error_code, "message": self.error_message}, "lane": self.lane}
        data = {"ok": True, "predictions": self.predictions, "cold": self.cold, "load_ms": self.load_ms,
                "model_ms": self.model_ms, "process_cpu_ms": self.process_cpu_ms, "lane": self.lane}
        if self.classes is not None:
            data["classes"] = self.classes
        if self.batch_size is not None:
            data["batch_size"] = self.batch_size
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PredictOutcome:
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise WireError("a prediction outcome is an object with 'ok'")
        lane = data.get("lane", "task")
        if not data["ok"]:
            error = data.get("error") or {}
            return cls(ok=False, error_code=str(error.get("code", "model_failed")),
                       error_message=str(error.get("message", "")), lane=lane)
        return cls(ok=True, predictions=data.get("predictions") or [], cold=bool(data.get("cold")),
                   load_ms=data.get("load_ms", 0.0), model_ms=data.get("model_ms", 0.0),
                   process_cpu_ms=data.get("process_cpu_ms"), lane=lane, classes=data.get("classes"),
                   batch_size=data.get("batch_size"))


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer to one synchronous task: its status and, when it ran, the outcome."""

    task_id: str
    status: str
    outcome: PredictOutcome | None = None


def encode_reply(task_id: str, outcome: PredictOutcome | None) -> bytes:
    """Return a reply's body: the outcome, or FAILURE when the task broke before producing one."""
    if outcome is None:
        return orjson.dumps({"status": FAILURE, "result": None, "task_id": task_id})
    return orjson.dumps({"status": SUCCESS, "result": outcome.to_dict(), "task_id": task_id})


def decode_reply(body: bytes) -> Reply | None:
    """Read a reply's body; None for anything that is not a finished task's reply."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("status") not in READY_STATES:
        return None
    outcome = None
    if message["status"] == SUCCESS:
        try:
            outcome = PredictOutcome.from_dict(message.get("result"))
        except WireError:
            return Reply(str(message.get("task_id", "")), FAILURE)
    return Reply(str(message.get("task_id", "")), message["status"], outcome)


def worker_lost_outcome(request: PredictRequest | None) -> PredictOutcome:
    """Return the answer to a prediction whose first worker died holding it."""
    label = request.label if request is not None else "the model"
    return PredictOutcome.failed("worker_lost", (
        f"{label}: the worker running this request stopped before answering (killed or crashed); the request "
        "was not run again, so that a request that kills its worker cannot take down the pool one worker "
        "after another; retry it if the worker's death had another cause"))
