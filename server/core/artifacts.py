"""Content-addressed artifact store: chunks in MongoDB, verified by sha256 when read back.

GridFS is not used because the embedded nx-27017 server cannot return a GridFS file over
about 45 MB in one reply; each chunk here is its own document, read one query at a time.
An artifact is visible only once its manifest is written, after every chunk.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from bson import Binary
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from server.core.errors import ModelDeckError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024


class CorruptArtifactError(ModelDeckError):
    code, status = "corrupt_artifact", 500


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int


def hash_file(stream: BinaryIO) -> StoredArtifact:
    """Return the sha256 and size of a seekable stream, leaving it at its start."""
    digest = hashlib.sha256()
    size = 0
    stream.seek(0)
    while block := stream.read(1024 * 1024):
        digest.update(block)
        size += len(block)
    stream.seek(0)
    return StoredArtifact(digest.hexdigest(), size)


# Chunks of failed uploads that could not be removed at once (a full disk refuses even deletes); retried by
# the next upload in this process. Unreferenced by any manifest, they are never visible meanwhile.
_orphans: list[str] = []
_orphans_lock = threading.Lock()


def put_artifact(db: Database, stream: BinaryIO) -> StoredArtifact:
    """Store a stream's bytes once per content; return its sha256 and size."""
    art = hash_file(stream)
    _retry_orphans(db)
    if db.artifacts.find_one({"_id": art.sha256}, {"_id": 1}):
        return art
    n = 0
    written: list[str] = []
    try:
        while block := stream.read(CHUNK_SIZE):
            chunk_id = f"{art.sha256}_{n}"
            try:
                db.artifact_chunks.insert_one({"_id": chunk_id, "sha256": art.sha256, "n": n, "data": Binary(block)})
                written.append(chunk_id)
            except DuplicateKeyError:
                # A concurrent or earlier interrupted upload of the same bytes wrote this chunk.
                pass
            n += 1
        try:
            db.artifacts.insert_one({"_id": art.sha256, "size": art.size, "chunks": n})
        except DuplicateKeyError:
            pass
    except PyMongoError:
        # A full disk or a lost repository mid-upload: take back the chunks this call wrote (no manifest names
        # them, so nothing could read them), so a failed upload leaves nothing behind. Best effort.
        _remove_chunks(db, written)
        raise
    return art


def _remove_chunks(db: Database, chunk_ids: list[str]) -> None:
    try:
        if chunk_ids:
            db.artifact_chunks.delete_many({"_id": {"$in": chunk_ids}})
    except PyMongoError as exc:
        logger.warning("could not remove %d chunks of a failed upload yet (%s); the next upload retries", len(chunk_ids), exc)
        with _orphans_lock:
            _orphans.extend(chunk_ids)


def _retry_orphans(db: Database) -> None:
    with _orphans_lock:
        pending = list(_orphans)
    if not pending:
        return
    # A chunk another upload of the same bytes has since made part of a manifest is kept.
    referenced = {m["_id"] for m in db.artifacts.find({"_id": {"$in": sorted({c.rsplit("_", 1)[0] for c in pending})}}, {"_id": 1})}
    removable = [c for c in pending if c.rsplit("_", 1)[0] not in referenced]
    try:
        if removable:
            db.artifact_chunks.delete_many({"_id": {"$in": removable}})
    except PyMongoError:
        return
    with _orphans_lock:
        for chunk_id in pending:
            if chunk_id in _orphans:
                _orphans.remove(chunk_id)
    logger.info("removed %d chunks left by an upload that failed earlier", len(removable))


def iter_artifact(db: Database, sha256: str) -> Iterator[bytes]:
    """Yield an artifact's chunks in order, verifying its sha256 at the end (for streaming downloads)."""
    manifest = db.artifacts.find_one({"_id": sha256})
    if manifest is None:
        raise CorruptArtifactError(f"artifact {sha256} is missing from the repository")
    digest = hashlib.sha256()
    for n in range(manifest["chunks"]):
        doc = db.artifact_chunks.find_one({"_id": f"{sha256}_{n}"})
        if doc is None:
            raise CorruptArtifactError(f"artifact {sha256} is missing chunk {n}")
        block = bytes(doc["data"])
        digest.update(block)
        yield block
    if digest.hexdigest() != sha256:
        raise CorruptArtifactError(f"artifact {sha256} failed its sha256 check; it was altered in the repository")


def get_artifact(db: Database, sha256: str) -> bytes:
    """Read an artifact back, one chunk per query, and verify its sha256."""
    return b"".join(iter_artifact(db, sha256))
