"""The MongoDB connection and the indexes every collection needs (the only pymongo entry point)."""

from __future__ import annotations

import logging

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

from server.core.audit_repo import ensure_audit_indexes
from server.core.metrics_repo import ensure_metrics_indexes
from server.core.settings import Settings

logger = logging.getLogger(__name__)


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
    ensure_audit_indexes(db)
    ensure_metrics_indexes(db)
