"""Inputs and parameters of text models (encode, generate): checked by the API before anything is sent.

Token counts need the model's tokenizer, so the worker checks those (and answers ``invalid_input``, a 422 naming
the row); everything else is refused here.
"""

from __future__ import annotations

from typing import Any

from server.core.errors import InvalidInputError, PayloadTooLargeError, UnprocessableError
from server.core.settings import Settings
from server.services.validation import short_repr

# Each method's parameters: name -> (accepted Python types, what the message says is expected).
_ENCODE = {"normalize": ((bool,), "true or false")}
_GENERATE = {
    "max_new_tokens": ((int,), "a positive integer"),
    "temperature": ((int, float), "a number >= 0 (0: greedy)"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "top_k": ((int,), "a positive integer"),
    "seed": ((int,), "an integer"),
}
PARAMETERS = {"encode": _ENCODE, "generate": _GENERATE}
DEFAULT_MAX_NEW_TOKENS = 32


def validate_texts(inputs: Any, settings: Settings) -> list[str]:
    """Return the inputs as a list of non-empty strings within the count and length bounds (422 naming the row)."""
    if not isinstance(inputs, list) or not inputs:
        raise UnprocessableError("field 'inputs': expected a non-empty list of strings, one text per row")
    if len(inputs) > settings.genai_max_inputs:
        raise PayloadTooLargeError(
            f"field 'inputs': {len(inputs)} texts is over the limit of {settings.genai_max_inputs} per request "
            "(MODELDECK_GENAI_MAX_INPUTS); split them over several requests",
            {"rows": len(inputs), "limit": settings.genai_max_inputs})
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise UnprocessableError(f"row {i}: expected a string, got {short_repr(text)}",
                                     {"row": i, "value": short_repr(text), "expected": "string"})
        if not text:
            raise UnprocessableError(f"row {i}: expected a non-empty string, got ''", {"row": i, "expected": "string"})
        if len(text) > settings.genai_max_input_chars:
            raise UnprocessableError(
                f"row {i}: {len(text)} characters is over the limit of {settings.genai_max_input_chars} "
                "(MODELDECK_GENAI_MAX_INPUT_CHARS)", {"row": i, "length": len(text), "limit": settings.genai_max_input_chars})
    return inputs


def validate_parameters(method: str, parameters: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """Check a call's parameters against its method and the deployment's bounds (400 naming the parameter)."""
    parameters = parameters or {}
    accepted = PARAMETERS.get(method)
    if accepted is None:
        if parameters:
            raise InvalidInputError(f"field 'parameters': method '{method}' takes no parameters, got "
                                    f"{', '.join(sorted(parameters))}", {"field": "parameters"})
        return {}
    for name, value in parameters.items():
        if name not in accepted:
            raise InvalidInputError(
                f"field 'parameters.{name}': unknown parameter for method '{method}'; expected {', '.join(accepted)}",
                {"field": f"parameters.{name}", "expected": list(accepted)})
        types, expected = accepted[name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise InvalidInputError(f"field 'parameters.{name}': expected {expected}, got {short_repr(value)}",
                                    {"field": f"parameters.{name}", "value": short_repr(value), "expected": expected})
    if method == "generate":
        return _generate_parameters(parameters, settings)
    return dict(parameters)


def _generate_parameters(parameters: dict[str, Any], settings: Settings) -> dict[str, Any]:
    bound = settings.genai_max_new_tokens
    out = {"max_new_tokens": parameters.get("max_new_tokens", min(DEFAULT_MAX_NEW_TOKENS, bound)), **parameters}
    n = out["max_new_tokens"]
    if not 1 <= n <= bound:
        raise InvalidInputError(
            f"field 'parameters.max_new_tokens': expected 1 to {bound} (MODELDECK_GENAI_MAX_NEW_TOKENS), got {n}",
            {"field": "parameters.max_new_tokens", "value": n, "limit": bound})
    if out.get("temperature", 0) < 0:
        raise InvalidInputError(f"field 'parameters.temperature': expected a number >= 0 (0: greedy), got {out['temperature']}",
                                {"field": "parameters.temperature", "value": out["temperature"]})
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise InvalidInputError(f"field 'parameters.top_p': expected a number in (0, 1], got {out['top_p']}",
                                {"field": "parameters.top_p", "value": out["top_p"]})
    if "top_k" in out and out["top_k"] < 1:
        raise InvalidInputError(f"field 'parameters.top_k': expected a positive integer, got {out['top_k']}",
                                {"field": "parameters.top_k", "value": out["top_k"]})
    return out
