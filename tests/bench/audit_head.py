"""Time one move of the signed audit head: in place under flock (what ModelDeck does) against create-and-rename.

Usage: .venv/bin/python tests/bench/audit_head.py  (no services needed; rounds interleave the two so load hits both)
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from server.core import audit_repo
from server.core.settings import Settings


def rename_version(doc: dict[str, Any], keys: audit_repo.AuditKeys) -> None:
    """The first implementation: a lock file, then a new file renamed over the head."""
    path = keys.head_path
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = json.loads(path.read_text())
        except FileNotFoundError:
            current = None
        if current is not None and current["seq"] >= doc["seq"]:
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(audit_repo.signed_head(doc, keys)))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def main(moves: int = 2000, rounds: int = 3) -> None:
    for n in range(rounds):
        for name, move in (("create-and-rename", rename_version), ("in place", audit_repo.advance_head_file)):
            keys = audit_repo.audit_keys(Settings(secret_key=Fernet.generate_key().decode(), home=Path(tempfile.mkdtemp())))
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(moves):
                move({"seq": i + 1, "hash": "ab" * 32}, keys)
            # CPU time as well: on a loaded machine the wall time is mostly waiting for a core.
            print(f"round {n} {name}: {(time.perf_counter() - started) / moves * 1e6:.0f} us wall, "
                  f"{(time.process_time() - cpu) / moves * 1e6:.0f} us CPU per move")


if __name__ == "__main__":
    main()
