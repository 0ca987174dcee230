"""ModelDeck's Python client: ``ModelDeck(url, key).upload(model, "churn", sample=df)`` and ``.predict("churn", df)``.

It talks to the Service API over REST only and needs none of the server's dependencies.
"""

from modeldeck_client.client import ModelDeck, ModelVersion
from modeldeck_client.errors import (
    ConflictError, ForbiddenError, InvalidInputError, JobFailedError, ModelDeckError, ModelFailedError,
    NotFoundError, UnauthorizedError, UnavailableError, UnprocessableError,
)
from modeldeck_client.jobs import Job

__all__ = [
    "ModelDeck", "ModelVersion", "Job", "ModelDeckError", "InvalidInputError", "UnauthorizedError", "ForbiddenError",
    "NotFoundError", "ConflictError", "UnprocessableError", "ModelFailedError", "UnavailableError", "JobFailedError",
]
