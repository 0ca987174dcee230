"""The MongoDB connection and the indexes every collection needs (the only pymongo entry point)."""

from __future__ import annotations

import errno
import logging

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError

from server.core.audit_repo import ensure_audit_indexes
from server.core.authfail_repo import ensure_authfail_indexes
from server.core.errors import InsufficientStorageError, ModelDeckError, UnavailableError
from server.core.metrics_repo import ensure_metrics_indexes
from server.core.settings import Settings

logger = logging.getLogger(__name__)


# How a full disk reads in errors: SQLite (nx-27017), MongoDB (OutOfDiskSpace, code 14031) and the OS.
_DISK_FULL = ("disk is full", "sqlite_full", "no space left", "out of disk space", "outofdiskspace")
REPOSITORY_DOWN = "the repository (MongoDB) is unavailable; nothing was changed, retry shortly"
DISK_FULL = ("the repository is out of disk space; the change was not made. Free space on its data volume "
             "(or grow it), then retry")


def storage_error(exc: BaseException) -> ModelDeckError | None:
    """Translate a repository outage (503) or a full disk (507) into the error a caller should see, else None."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return InsufficientStorageError("the API server's disk is full (its temporary files); the change was not made. "
                                        "Free space, then retry")
    if not isinstance(exc, PyMongoError):
        return None
    text = str(exc).lower()
    if any(marker in text for marker in _DISK_FULL) or getattr(exc, "code", None) == 14031:
        return InsufficientStorageError(DISK_FULL)
    if isinstance(exc, ConnectionFailure):
        return UnavailableError(REPOSITORY_DOWN)
    return None


def connect(settings: Settings, timeout_ms: int = 5000) -> Database:
    """Open a client for the configured repository and return its database."""
    client: MongoClient = MongoClient(
        settings.effective_mongo_url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
    )
    return client[settings.mongo_db]


def ensure_indexes(db: Database) -> None:
    """Create the indexes; safe to call at every start-up."""
    # Explicit names: nx-27017 accepts only [A-Za-z_][A-Za-z0-9_]*, and default names contain "-1".
    db.versions.create_index([("name", ASCENDING), ("version", DESCENDING)], name="versions_by_name")
    db.apikeys.create_index([("key_hash", ASCENDING)], unique=True, name="apikeys_by_hash")
    db.jobs.create_index([("created_at", DESCENDING)], name="jobs_by_created")
    db.workers.create_index([("pool", ASCENDING)], name="workers_by_pool")
    db.artifact_chunks.create_index([("sha256", ASCENDING), ("n", ASCENDING)], name="chunks_by_artifact")
    db.job_parts.create_index([("job", ASCENDING), ("n", DESCENDING)], name="job_parts_by_job")
    db.job_chunks.create_index([("job", ASCENDING)], name="job_chunks_by_job")
    ensure_audit_indexes(db)
    ensure_authfail_indexes(db)
    ensure_metrics_indexes(db)
