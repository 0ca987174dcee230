"""Row validation: the whole-request check for plain numeric rows accepts and refuses exactly what the
value-by-value check does, and a refusal still names the row, the field and the value."""

from __future__ import annotations

import math
from typing import Any

import pytest

from server.core.errors import UnprocessableError
from server.services.validation import _validate_schemaless, validate_rows

SCHEMA = [{"name": n, "type": "number"} for n in ("a", "b", "c")]

CASES: list[Any] = [
    [[1.0, 2.0, 3.0]],
    [[1, 2, 3]] * 100,
    [[1.5, -2, 1e300], [0.0, -0.0, 3]],
    [[1.0, 2.0, True]],
    [[1.0, False, 3.0]],
    [[1.0, 2.0, math.inf]],
    [[1.0, 2.0, 3.0], [math.nan, 2.0, 3.0]],
    [[1.0, 2.0, -math.inf]],
    [[1e308, 1e308, 1e308]],  # finite values whose sum overflows
    [[1.0, 2.0, "3"]],
    [[1.0, 2.0, None]],
    [[1.0, 2.0, [3.0]]],
    [[1.0, 2.0]],
    [[1.0, 2.0, 3.0], [1.0, 2.0]],
    [[1.0, 2.0, 3.0, 4.0]],
    [{"a": 1.0, "b": 2.0, "c": 3.0}],
    [{"c": 3.0, "a": 1.0, "b": 2.0}, [4.0, 5.0, 6.0]],
    [(1.0, 2.0, 3.0)],
    [[]],
]


def _outcome(fn: Any, rows: Any) -> Any:
    try:
        return ("ok", fn(rows))
    except UnprocessableError as exc:
        return ("refused", str(exc))


@pytest.mark.parametrize("rows", CASES)
def test_schemaless_rows_get_the_same_answer_as_the_value_by_value_check(rows: Any) -> None:
    assert _outcome(lambda r: validate_rows(r, None), rows) == _outcome(_validate_schemaless, rows)


@pytest.mark.parametrize("rows,expected", [
    ([[1, 2.5, 3]], [[1, 2.5, 3]]),
    ([[1e308, 1e308, 1e308]], [[1e308, 1e308, 1e308]]),
    ([{"c": 3.0, "a": 1.0, "b": 2.0}, [4.0, 5.0, 6.0]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
    ([[1.0, 2.0, True]], "row 0, field 'c': expected a number, got True"),
    ([[1.0, 2.0, 3.0], [math.nan, 2.0, 3.0]], "row 1, field 'a': expected a number, got nan"),
    ([[1.0, 2.0, 3.0], [1.0, math.inf, 3.0]], "row 1, field 'b': expected a number, got inf"),
    ([[1.0, 2.0, "3"]], "row 0, field 'c': expected a number, got '3'"),
    ([[1.0, 2.0, 3.0], [1.0, 2.0]], "row 1: expected 3 values in schema order (a, b, c), got 2"),
    ([[1.0, 2.0, 3.0, 4.0]], "row 0: expected 3 values in schema order (a, b, c), got 4"),
])
def test_numeric_schema_rows_are_accepted_in_schema_order_or_refused_with_the_value_named(rows: Any, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(UnprocessableError) as err:
            validate_rows(rows, SCHEMA)
        assert str(err.value) == expected
    else:
        assert validate_rows(rows, SCHEMA) == expected
