"""Build the pandas DataFrame a model fitted on named features expects, from validated rows and the input schema."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from server.core.models_repo import FieldSpec

# pandas 3 reads text columns as its "str" dtype (NaN for missing); pandas 2 as object holding None. A model
# fitted in a notebook saw what that notebook's pandas made, so strings follow the installed pandas.
_PANDAS3 = int(pd.__version__.split(".")[0]) >= 3
_STRING_DTYPE: Any = pd.StringDtype("python", na_value=np.nan) if _PANDAS3 else object
if _PANDAS3:
    # With pyarrow installed (batch scoring needs it) pandas 3 backs every inferred string, column labels and
    # the Index objects scikit-learn builds inside a pipeline included, with pyarrow, which is slower a few rows
    # at a time: a 1-row ColumnTransformer pipeline's predict_proba took 3.9 ms against 3.2 ms with Python
    # storage (docs/performance.md). Same values, same NaN: what pandas 3 does in a notebook without pyarrow.
    # This module is imported by workers only, which build every model input here.
    pd.set_option("mode.string_storage", "python")


def _column(values: tuple[Any, ...], spec: FieldSpec | None) -> Any:
    kind = spec["type"] if spec else None
    has_null = any(v is None for v in values)
    if kind == "number":
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if kind == "integer":
        return pd.array(values, dtype="Int64") if has_null else np.array(values, dtype=np.int64)
    if kind == "boolean":
        return pd.array(values, dtype="boolean") if has_null else np.array(values, dtype=bool)
    if kind == "category":
        return pd.Categorical(values, categories=spec.get("categories") if spec else None)
    if kind == "string":
        return pd.array(values, dtype=_STRING_DTYPE) if _STRING_DTYPE != object else np.array(values, dtype=object)
    return pd.Series(values)  # no schema: pandas infers the dtype, as it did in the notebook


def to_frame(rows: list[list[Any]], columns: list[FieldSpec] | None, feature_names: list[str]) -> pd.DataFrame:
    """Return rows as a DataFrame with the model's feature names, in its order, typed by the schema.

    Rows come in the schema's order (validated by the API); without a schema they are in the model's order.
    """
    names = [c["name"] for c in columns] if columns else feature_names
    if len(rows[0]) != len(names):
        raise ValueError(f"rows have {len(rows[0])} values; the model takes {len(names)} features ({', '.join(names)})")
    specs: list[FieldSpec | None] = list(columns) if columns else [None] * len(names)
    data = {name: _column(values, spec) for name, spec, values in zip(names, specs, zip(*rows))}
    missing = [n for n in feature_names if n not in data]
    if missing:
        raise ValueError(f"the input schema lacks the model's features {', '.join(missing)}")
    return pd.DataFrame(data, columns=feature_names, copy=False)
