"""Run a batch-scoring job: read a chunk, score it on the cached model, commit it with its marker, repeat.

Memory stays bounded by one chunk. A job redelivered after its worker died resumes after its last
committed chunk; a job asked to cancel stops between chunks.
"""

from __future__ import annotations

import decimal
import json
import logging
import math
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from runtime.batch_sinks import FileSink, Sink, SqlSink
from runtime.batch_sources import Committed, count_rows, read_chunks, source_url
from runtime.inference import run_prediction
from runtime.state import WorkerState
from server.core import jobs_repo, sqlsource, wire
from server.core.errors import ModelDeckError

logger = logging.getLogger(__name__)


class BatchError(Exception):
    """The job cannot go on; the message is what its owner sees."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def open_sink(state: WorkerState, job: dict[str, Any]) -> Sink:
    """Return the writer of a job's destination."""
    dest = job["params"]["destination"]
    if dest["kind"] == "file":
        return FileSink(state.db, job["_id"], dest["format"])
    url = source_url(state.settings, state.db, dest["datasource"])
    return SqlSink(job["_id"], dest["datasource"], url, dest, state.settings.batch_statement_timeout_s)


def _output(params: dict[str, Any]) -> list[str]:
    key = params["source"].get("key")
    return ["row_number", *([key] if key else []), *params["keep"], "prediction"]


def _score(state: WorkerState, model: wire.ModelRef, features: list[list[Any]]) -> list[Any]:
    outcome = run_prediction(state, wire.PredictRequest(model=model, rows=features))
    if not outcome.ok:
        raise BatchError(outcome.error_code, outcome.error_message)
    return [json.dumps(p) if isinstance(p, (list, dict)) else p for p in outcome.predictions]


def numeric_features(rows: list[list[Any]], names: list[str], first_row: int) -> Any:
    """Return a chunk's features as a float array, or raise naming the first value that is not a finite number.

    The worker's scikit-learn runs with finiteness checks off (the API validates predict inputs); batch rows
    come straight from the source, so a NULL or NaN here would otherwise become a silent wrong prediction.
    """
    import numpy as np

    try:
        matrix = np.asarray(rows, dtype=np.float64)
        bad = np.argwhere(~np.isfinite(matrix))
    except (TypeError, ValueError):
        bad = None
    if bad is not None and not len(bad):
        return matrix
    for i, row in enumerate(rows):
        for name, value in zip(names, row):
            ok = isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise BatchError("invalid_input", f"source row {first_row + i}, column '{name}': expected a number, "
                                                  f"got {value!r}"[:300])
    return matrix


def score_job(state: WorkerState, job: dict[str, Any]) -> dict[str, Any] | None:
    """Score every remaining chunk; return the result, or None when the job was cancelled."""
    params, job_id = job["params"], job["_id"]
    source, db = params["source"], state.db
    sink = open_sink(state, job)
    done = sink.committed()
    progress = {**(job.get("progress") or {}), "rows_done": done.rows, "chunks_done": done.chunks}
    if progress.get("rows_total") is None:
        progress["rows_total"] = source.get("rows_total") or count_rows(state.settings, db, source)
    jobs_repo.set_progress(db, job_id, progress)
    key = source.get("key")
    out_columns = _output(params)
    for columns, rows in read_chunks(state.settings, db, source, params["chunk_rows"], done):
        if jobs_repo.job_status(db, job_id) == "cancelling":
            return None
        feature_idx = [columns.index(f) for f in params["features"]]
        carried = [columns.index(c) for c in out_columns[1:-1]]
        features: Any = [[row[i] for i in feature_idx] for row in rows]
        if params.get("feature_types") and all(t in ("number", "integer") for t in params["feature_types"]):
            features = numeric_features(features, params["features"], done.rows)
        predictions = _score(state, params["model_ref"], features)
        out = [(done.rows + n, *(row[i] for i in carried), p) for n, (row, p) in enumerate(zip(rows, predictions))]
        done = Committed(done.chunks + 1, done.rows + len(rows), rows[-1][columns.index(key)] if key else None)
        sink.write(done.chunks, out_columns, out, done)
        progress |= {"rows_done": done.rows, "chunks_done": done.chunks}
        jobs_repo.set_progress(db, job_id, progress)
    if jobs_repo.job_status(db, job_id) == "cancelling":
        return None
    return sink.finish(done)


def run_batch(state: WorkerState, job: dict[str, Any]) -> None:
    """Run a job to its end and store the outcome and its audit entry; errors become the job's error."""
    job_id = job["_id"]
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    try:
        result = score_job(state, job)
    except BatchError as exc:
        error = {"code": exc.code, "message": exc.message}
    except ModelDeckError as exc:
        error = {"code": exc.code, "message": exc.message}
    except SQLAlchemyError as exc:
        # Described without the statement's text or parameters, and with any password masked.
        params = job["params"]
        names = [d["datasource"] for d in (params["source"], params["destination"]) if d.get("datasource")]
        urls = []
        for name in names:
            try:
                urls.append(source_url(state.settings, state.db, name))
            except ModelDeckError:
                pass
        described = sqlsource.describe_error(" / ".join(dict.fromkeys(names)), urls, exc,
                                             state.settings.batch_statement_timeout_s, "MODELDECK_BATCH_STATEMENT_TIMEOUT_S")
        error = {"code": described.code, "message": described.message}
    except Exception as exc:  # the task's edge: report, keep the worker alive
        logger.exception("batch job %s failed", job_id)
        error = {"code": "internal", "message": f"the batch job failed with {type(exc).__name__}; see the worker's log"}
    if error is None and result is None:
        status = "cancelled"
    else:
        status = "failed" if error else "succeeded"
    if jobs_repo.finish_job(state.db, job_id, result=result, error=error, status=status):
        progress = jobs_repo.get_job(state.db, job_id).get("progress") or {}
        jobs_repo.record_event(state.db, job, "job.finish", "success" if status == "succeeded" else status,
                               {"kind": "batch", "status": status, "rows_done": progress.get("rows_done"),
                                "error": error["code"] if error else None}, state.audit_keys)
    logger.info("batch job %s %s", job_id, status)
