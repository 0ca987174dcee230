"""Input schemas: validate prediction rows, infer a schema and statistics from a reference CSV."""

from __future__ import annotations

import csv
import io
import math
from itertools import chain
import reprlib
import statistics
from typing import Any

from pydantic import BaseModel, ValidationError

from server.core.errors import InvalidInputError, PayloadTooLargeError, UnprocessableError
from server.core.models_repo import FieldSpec

TYPES = ("number", "integer", "string", "boolean", "category")
REFERENCE_SAMPLE = 1000


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "category":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return isinstance(value, bool)


# Hostile values (a megabyte string, a list nested a thousand deep) are shown cut short, never echoed whole:
# repr() of a deep list overflows the stack and orjson refuses to write one deeper than 254.
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 80, 80, 6, 6, 3


def short_repr(value: Any) -> str:
    """Return a bounded repr of a value received from a client, safe for messages and error details."""
    return _SHORT.repr(value)


def _echo(value: Any) -> Any:
    """Return a received value as error details may carry it: small scalars as they are, others cut short."""
    if value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return short_repr(value)


_EXPECTED = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
             "category": "a category (a string or an integer)"}


def _bad_value(i: int, spec: FieldSpec, value: Any) -> UnprocessableError:
    kind = spec["type"]
    expected = _EXPECTED[kind] + (" or null" if spec.get("nullable") else "")
    return UnprocessableError(
        f"row {i}, field '{spec['name']}': expected {expected}, got {short_repr(value)}",
        {"row": i, "field": spec["name"], "value": _echo(value), "expected": kind},
    )


_NUMBERS = {int, float}


def _plain_numbers(rows: list[Any], width: int | None) -> bool:
    """Tell whether rows are lists of one length (width, if given) holding only finite ints and floats, what
    nearly every request sends, with C-speed passes instead of a check per value (86 -> 20 us for 100 rows of 4).
    False only means "check row by row", which finds and names the offending value."""
    if set(map(type, rows)) != {list}:
        return False
    widths = set(map(len, rows))
    if len(widths) != 1 or (width is not None and widths != {width}):
        return False
    values = list(chain.from_iterable(rows))
    if not set(map(type, values)) <= _NUMBERS:  # bool is a type of its own here: refused
        return False
    try:
        return math.isfinite(sum(values))  # inf or nan anywhere makes the sum so (a finite overflow only costs the slow path)
    except OverflowError:  # an int too large for a float
        return False


def validate_rows(rows: Any, schema: list[FieldSpec] | None, max_rows: int | None = None) -> list[list[Any]]:
    """Check every row against the schema and return the rows as lists in schema order."""
    if not isinstance(rows, list) or not rows:
        raise UnprocessableError(
            f"field 'inputs': expected a non-empty list of rows, got {type(rows).__name__ if rows != [] else 'an empty list'}"
        )
    if max_rows is not None and len(rows) > max_rows:
        raise PayloadTooLargeError(
            f"field 'inputs': {len(rows)} rows is over the limit of {max_rows} per request (MODELDECK_MAX_PREDICT_ROWS); "
            "split the rows over several requests or score them with a batch job (POST /api/v1/jobs)",
            {"rows": len(rows), "limit": max_rows},
        )
    if schema is None:
        return rows if _plain_numbers(rows, None) else _validate_schemaless(rows)
    if all(f["type"] == "number" for f in schema) and _plain_numbers(rows, len(schema)):
        return rows
    names = [f["name"] for f in schema]
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            missing = [n for n in names if n not in row]
            if missing:
                raise UnprocessableError(
                    f"row {i}: missing field '{missing[0]}'; expected fields: {', '.join(names)}",
                    {"row": i, "field": missing[0], "expected": names},
                )
            extra = [k for k in row if k not in names]
            if extra:
                raise UnprocessableError(
                    f"row {i}: unknown field '{extra[0]}'; expected fields: {', '.join(names)}",
                    {"row": i, "field": extra[0], "expected": names},
                )
            values = [row[n] for n in names]
        elif isinstance(row, list):
            if len(row) != len(names):
                raise UnprocessableError(
                    f"row {i}: expected {len(names)} values in schema order ({', '.join(names)}), got {len(row)}",
                    {"row": i, "expected": names, "received": len(row)},
                )
            values = row
        else:
            raise UnprocessableError(
                f"row {i}: expected an object keyed by feature name or a list in schema order, got {short_repr(row)}",
                {"row": i},
            )
        for spec, value in zip(schema, values):
            if not _type_ok(value, spec["type"]) and not (value is None and spec.get("nullable")):
                raise _bad_value(i, spec, value)
        out.append(values)
    return out


def _validate_schemaless(rows: list[Any]) -> list[list[Any]]:
    width = None
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise UnprocessableError(
                f"row {i}: this model has no input schema, so rows must be lists of values, got {type(row).__name__}",
                {"row": i},
            )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise UnprocessableError(f"row {i}: expected {width} values like row 0, got {len(row)}", {"row": i})
        for j, value in enumerate(row):
            if not isinstance(value, (int, float, str, bool)) or (isinstance(value, float) and not math.isfinite(value)):
                raise UnprocessableError(
                    f"row {i}, column {j}: expected a number, string or boolean, got {short_repr(value)}", {"row": i, "column": j}
                )
    return rows


def _infer_type(values: list[str]) -> str:
    present = [v for v in values if v != ""]
    if present and all(v.lower() in ("true", "false") for v in present):
        return "boolean"
    try:
        if present and all(float(v).is_integer() and "." not in v and "e" not in v.lower() for v in present):
            return "integer"
        [float(v) for v in present]
        return "number" if present else "string"
    except ValueError:
        return "string"


def parse_reference(data: bytes, schema: list[FieldSpec] | None) -> tuple[list[FieldSpec], dict[str, Any]]:
    """Read a reference CSV; return the schema (given or inferred) and per-feature statistics."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnprocessableError(f"reference sample is not UTF-8 text: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        rows = [r for r in reader if r]
    except (StopIteration, csv.Error) as exc:
        raise UnprocessableError(f"reference sample is not a CSV with a header row: {exc or 'it is empty'}") from exc
    if not rows:
        raise UnprocessableError("reference sample has a header but no rows")
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise UnprocessableError(f"reference sample row {i + 1}: expected {len(header)} values, got {len(r)}")
    columns = {name: [r[k] for r in rows] for k, name in enumerate(header)}
    if schema is None:
        schema = [FieldSpec(name=n, type=_infer_type(v)) for n, v in columns.items()]
        for spec in schema:
            if "" in columns[spec["name"]]:
                spec["nullable"] = True  # a blank cell is a missing value the model saw
    else:
        missing = [f["name"] for f in schema if f["name"] not in columns]
        if missing:
            raise UnprocessableError(
                f"reference sample lacks column '{missing[0]}' of the input schema; its columns are: {', '.join(header)}"
            )
    stats: dict[str, Any] = {"rows": len(rows), "features": {}}
    for spec in schema:
        values = columns[spec["name"]]
        if spec["type"] in ("number", "integer"):
            try:
                nums = [float(v) for v in values if v != ""]
            except ValueError as exc:
                raise UnprocessableError(
                    f"reference sample column '{spec['name']}' should hold numbers for the schema: {exc}"
                ) from exc
            if not nums:
                # Nothing to measure drift against (min() of nothing was a 500).
                raise UnprocessableError(
                    f"reference sample column '{spec['name']}': expected numbers (the input schema says "
                    f"{spec['type']}), got {len(values)} blank values; fill it in, or leave the column out",
                    {"column": spec["name"]})
            stats["features"][spec["name"]] = {
                "type": spec["type"], "min": min(nums), "max": max(nums), "mean": statistics.fmean(nums),
                "median": statistics.median(nums), "std": statistics.pstdev(nums), "sample": nums[:REFERENCE_SAMPLE],
            }
        else:
            counts: dict[str, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            stats["features"][spec["name"]] = {"type": spec["type"], "counts": dict(sorted(counts.items())[:200])}
    return schema, stats


def _shown(value: Any) -> str:
    """Return a received value for a message: at most 80 characters of its repr, even when nested too deep for repr()."""
    if isinstance(value, (str, bytes)):
        return repr(value[:100])[:80]
    return short_repr(value)[:80]


def describe_errors(exc: ValidationError, where: str) -> tuple[str, list[dict[str, Any]]]:
    """Turn pydantic errors into one message naming field, value received and what was expected."""
    problems = []
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        given = err.get("input")
        shown = "nothing" if err["type"] == "missing" else _shown(given)
        parts.append(f"{where} '{loc}': {err['msg']}, got {shown}")
        problems.append({"field": loc, "message": err["msg"], "type": err["type"]})
    return "; ".join(parts), problems


def parse_model(model: type[BaseModel], data: Any, where: str) -> Any:
    """Validate data against a model, raising a 400 that names each bad field."""
    if where == "field" and not isinstance(data, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, problems = describe_errors(exc, where)
        raise InvalidInputError(message, {"errors": problems}) from exc
