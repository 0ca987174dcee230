"""A batch chunk as an arrow table: its features as one array for the model, and its output table.

Features of a model whose schema is all numbers become one float64 matrix without a Python object per value;
a NULL, NaN or infinity stops the job naming the source row and column, since the worker's scikit-learn runs
with its finiteness checks off.
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class BatchError(Exception):
    """The job cannot go on; the message is what its owner sees."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def table_from_rows(columns: list[str], rows: list[tuple[Any, ...]]) -> pa.Table:
    """Build an arrow table from Python rows (the SQLAlchemy path of other dialects)."""
    data: dict[str, Any] = {}
    for i, name in enumerate(columns):
        values = [r[i] for r in rows]
        try:
            data[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            data[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(data)


def _bad_value(column: pa.ChunkedArray, name: str, first_row: int) -> BatchError | None:
    """Return the error naming the first value of a column that is not a finite number, if any."""
    values = column.to_pylist()
    for i, value in enumerate(values):
        ok = isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            return BatchError("invalid_input", f"source row {first_row + i}, column '{name}': expected a number, "
                                               f"got {value!r}"[:300])
    return None


def numeric_matrix(table: pa.Table, names: list[str], first_row: int) -> np.ndarray:
    """Return the named columns as one float64 (rows, features) array, or raise naming a value that is not a finite number."""
    columns = []
    for name in names:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type)):
            try:
                column = pc.cast(column, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                error = _bad_value(column, name, first_row)
                raise error or BatchError("invalid_input", f"column '{name}': expected numbers") from None
        if column.null_count:
            raise _bad_value(column, name, first_row) or AssertionError("a null was counted but not found")
        array = column.to_numpy().astype(np.float64, copy=False)
        if not np.isfinite(array).all():
            raise _bad_value(column, name, first_row) or AssertionError("a non-finite value was not found")
        columns.append(array)
    return np.column_stack(columns) if columns else np.empty((table.num_rows, 0))


def feature_rows(table: pa.Table, names: list[str]) -> list[list[Any]]:
    """Return the named columns as Python rows (models whose schema has strings or booleans)."""
    return [list(row) for row in zip(*(table.column(n).to_pylist() for n in names))] if names else [[]] * table.num_rows


def prediction_array(predictions: list[Any]) -> pa.Array:
    """Return predictions as an arrow array; several values per row become a JSON string."""
    if predictions and isinstance(predictions[0], (list, dict)):
        return pa.array([json.dumps(p) for p in predictions], type=pa.string())
    return pa.array(predictions)


def output_table(table: pa.Table, first_row: int, carried: list[str], outputs: dict[str, pa.Array]) -> pa.Table:
    """Return a chunk's output: row_number, the carried columns (key, keep) and the model's output columns."""
    data: dict[str, Any] = {"row_number": pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))}
    for name in carried:
        data[name] = table.column(name)
    data.update(outputs)
    return pa.table(data)
