"""One exception type with a code and an HTTP status; the API turns it into an error body."""

from __future__ import annotations

from typing import Any


class ModelDeckError(Exception):
    """Base of every error a user may see: a message, a machine code and an HTTP status."""

    code = "error"
    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        """Return the JSON error body of the REST contract."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInputError(ModelDeckError):
    code, status = "invalid_input", 400


class UnprocessableError(ModelDeckError):
    code, status = "unprocessable", 422


class UnauthorizedError(ModelDeckError):
    code, status = "unauthorized", 401


class ForbiddenError(ModelDeckError):
    code, status = "forbidden", 403


class NotFoundError(ModelDeckError):
    code, status = "not_found", 404


class ConflictError(ModelDeckError):
    code, status = "conflict", 409


class PayloadTooLargeError(ModelDeckError):
    code, status = "payload_too_large", 413


class UnsupportedMediaTypeError(ModelDeckError):
    code, status = "unsupported_media_type", 415


class TooManyRequestsError(ModelDeckError):
    code, status = "too_many_requests", 429


class UnavailableError(ModelDeckError):
    code, status = "unavailable", 503


class GatewayTimeoutError(ModelDeckError):
    code, status = "timeout", 504


class ModelFailedError(ModelDeckError):
    """The worker could not load or run the model; the message names model and version."""

    code, status = "model_error", 500


class InsufficientStorageError(ModelDeckError):
    code, status = "insufficient_storage", 507
