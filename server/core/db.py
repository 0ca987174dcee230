"""The MongoDB connection and the indexes every collection needs (the only pymongo entry point)."""

from __future__ import annotations

import logging

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

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
    db.versions.create_index([("name", ASCENDING), ("version", DESCENDING)])
    db.apikeys.create_index([("key_hash", ASCENDING)], unique=True)
    db.jobs.create_index([("created_at", DESCENDING)])
    db.workers.create_index([("pool", ASCENDING)])
    db.artifact_chunks.create_index([("sha256", ASCENDING), ("n", ASCENDING)])
