"""Content-addressed artifact store: chunks in MongoDB, verified by sha256 when read back.

GridFS is not used because the embedded nx-27017 server cannot return a GridFS file over
about 45 MB in one reply; each chunk here is its own document, read one query at a time.
An artifact is visible only once its manifest is written, after every chunk.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from bson import Binary
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

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


def put_artifact(db: Database, stream: BinaryIO) -> StoredArtifact:
    """Store a stream's bytes once per content; return its sha256 and size."""
    art = hash_file(stream)
    if db.artifacts.find_one({"_id": art.sha256}, {"_id": 1}):
        return art
    n = 0
    while block := stream.read(CHUNK_SIZE):
        chunk_id = f"{art.sha256}_{n}"
        try:
            db.artifact_chunks.insert_one({"_id": chunk_id, "sha256": art.sha256, "n": n, "data": Binary(block)})
        except DuplicateKeyError:
            # A concurrent or earlier interrupted upload of the same bytes wrote this chunk.
            pass
        n += 1
    try:
        db.artifacts.insert_one({"_id": art.sha256, "size": art.size, "chunks": n})
    except DuplicateKeyError:
        pass
    return art


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
