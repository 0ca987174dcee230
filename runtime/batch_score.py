"""Score one chunk of a batch job: its features as one array into the cached model, its output table back."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pyarrow as pa

from runtime.batch_arrow import BatchError, feature_rows, numeric_matrix, output_table, prediction_array
from runtime.batch_sources import key_columns
from runtime.inference import run_prediction
from runtime.state import WorkerState
from server.core import wire


def numeric(params: dict[str, Any]) -> bool:
    """Tell whether a job's model takes only numbers (its features then travel as one float64 array)."""
    types = params.get("feature_types") or []
    return bool(types) and all(t in ("number", "integer") for t in types)


def carried(params: dict[str, Any]) -> list[str]:
    """Return the source columns copied into every output row: the key, then the kept columns."""
    return list(dict.fromkeys(key_columns(params["source"]) + list(params["keep"])))


def columns_read(params: dict[str, Any]) -> list[str]:
    """Return the source columns a job reads: carried columns and features, each once."""
    return list(dict.fromkeys(carried(params) + list(params["features"])))


def score_chunk(state: WorkerState, params: dict[str, Any], table: pa.Table, first_row: int) -> pa.Table:
    """Return a chunk's output table (row_number, carried columns, prediction); raise BatchError when it cannot."""
    features = params["features"]
    # A model without a schema whose columns all arrive as numbers takes the same array it would have built itself.
    as_numbers = numeric(params) or (not params.get("feature_types") and all(
        pa.types.is_integer(t) or pa.types.is_floating(t) for t in (table.schema.field(f).type for f in features)))
    rows: Any = numeric_matrix(table, features, first_row) if as_numbers else feature_rows(table, features)
    # run_prediction's model runner takes any 2-D sequence: an ndarray goes to the model without a copy.
    request = wire.PredictRequest(model=params["model_ref"], rows=cast(list[list[Any]], rows),
                                  method=params.get("method", "predict"), columns=params.get("columns"))
    outcome = run_prediction(state, request)
    if not outcome.ok:
        raise BatchError(outcome.error_code, outcome.error_message)
    if len(outcome.predictions) != table.num_rows:
        raise BatchError("model_failed", f"the model returned {len(outcome.predictions)} predictions for "
                                         f"{table.num_rows} rows")
    names = params.get("outputs") or ["prediction"]
    if len(names) == 1:
        return output_table(table, first_row, carried(params), {names[0]: prediction_array(outcome.predictions)})
    # One probability column per class, in the classes' order (server/services/batch.py names them).
    matrix = np.asarray(outcome.predictions, dtype=np.float64)
    return output_table(table, first_row, carried(params), {n: pa.array(matrix[:, k]) for k, n in enumerate(names)})
