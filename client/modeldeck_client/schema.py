"""What the client infers locally: an input schema from a DataFrame, requirements from an estimator."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
import pandas as pd


def field_type(series: pd.Series) -> dict[str, Any]:
    """Return the schema field for one column: its type, nullability and, for a categorical, its categories."""
    dtype = series.dtype
    field: dict[str, Any] = {"name": str(series.name)}
    if isinstance(dtype, pd.CategoricalDtype):
        field["type"] = "category"
        field["categories"] = [c.item() if hasattr(c, "item") else c for c in dtype.categories]
    elif pd.api.types.is_bool_dtype(dtype):
        field["type"] = "boolean"
    elif pd.api.types.is_integer_dtype(dtype):
        field["type"] = "integer"
    elif pd.api.types.is_numeric_dtype(dtype):
        field["type"] = "number"
    elif pd.api.types.is_string_dtype(dtype) or dtype == object:
        values = series.dropna()
        if len(values) and all(isinstance(v, (bool, np.bool_)) for v in values):
            field["type"] = "boolean"
        else:
            field["type"] = "string"
    else:
        raise ValueError(f"column '{series.name}' has dtype {dtype}, which ModelDeck's input schema cannot describe "
                         "(number, integer, string, boolean or category)")
    if series.isna().any():
        field["nullable"] = True
    return field


def schema_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return the input schema of a DataFrame's columns, in their order."""
    return [field_type(frame[c]) for c in frame.columns]


def plain(value: Any) -> Any:
    """Return a cell as JSON carries it: numpy scalars as Python ones, missing values as null."""
    if value is None or (not isinstance(value, (str, bytes, list, dict)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def rows_of(frame: pd.DataFrame) -> list[list[Any]]:
    """Return a DataFrame's rows as lists of JSON values, in column order."""
    return [[plain(v) for v in row] for row in frame.itertuples(index=False, name=None)]


def _modules(obj: Any, seen: set[int], out: set[str]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    module = type(obj).__module__.split(".")[0]
    if module != "builtins":
        out.add(module)
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _modules(item, seen, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _modules(item, seen, out)
    elif hasattr(obj, "get_params"):
        try:
            params = obj.get_params(deep=False)
        except Exception:  # an estimator whose get_params fails is still described by its own type
            return
        for item in params.values():
            _modules(item, seen, out)


def requirements_of(estimator: Any) -> list[str]:
    """Pin this environment's versions of the distributions the estimator's classes come from."""
    modules: set[str] = set()
    _modules(estimator, set(), modules)
    dists = importlib.metadata.packages_distributions()
    pins = set()
    for module in modules:
        for dist in dists.get(module, []):
            pins.add(f"{dist}=={importlib.metadata.version(dist)}")
    return sorted(pins)
