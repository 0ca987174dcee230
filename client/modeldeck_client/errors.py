"""Exceptions carrying the server's error code, message and request id."""

from __future__ import annotations

from typing import Any


class ModelDeckError(Exception):
    """An error answered by the server (or found before sending, with status 0)."""

    def __init__(self, message: str, code: str = "error", status: int = 0, request_id: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.details = details or {}

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.message}{where}"


class InvalidInputError(ModelDeckError):
    """400: the request is malformed or asks for something the model does not offer."""


class UnauthorizedError(ModelDeckError):
    """401: no credential, or one the server does not accept."""


class ForbiddenError(ModelDeckError):
    """403: the credential's role or scope does not allow this."""


class NotFoundError(ModelDeckError):
    """404: no such model, version, alias or job (or one outside the key's scope)."""


class ConflictError(ModelDeckError):
    """409: the request conflicts with the current state (an alias points at the version, say)."""


class UnprocessableError(ModelDeckError):
    """422: the rows or the model file fail their checks; the message names row, field, value and type."""


class ModelFailedError(ModelDeckError):
    """500: the model raised or could not be loaded."""


class UnavailableError(ModelDeckError):
    """503: the broker or the repository is away, or no worker serves the model's pool; retry later."""


class JobFailedError(ModelDeckError):
    """A job ended failed or cancelled; the message is the server's."""


_BY_STATUS: dict[int, type[ModelDeckError]] = {
    400: InvalidInputError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError,
    413: InvalidInputError, 422: UnprocessableError, 500: ModelFailedError, 503: UnavailableError,
}


def error_from_response(status: int, body: Any, request_id: str | None) -> ModelDeckError:
    """Build the exception for an error answer of the REST API ({"error": {"code", "message", "details"}})."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, code, details = str(err.get("message", "")), str(err.get("code", "error")), err.get("details") or {}
        request_id = err.get("request_id") or request_id
    else:
        message, code, details = f"HTTP {status}: {str(body)[:300]}", "http_error", {}
    cls = _BY_STATUS.get(status, ModelDeckError if status < 500 else ModelFailedError)
    return cls(message, code, status, request_id, details)
