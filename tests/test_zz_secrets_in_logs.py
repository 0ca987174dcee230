"""Runs last (file order): no key or token used during the whole test run appears in any log of ours."""

from __future__ import annotations

import re
from typing import Any

from conftest import Client, Stack

KEY_RE = re.compile(r"mdk_[A-Za-z0-9_-]{20,}")
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}")


def test_no_secret_reaches_the_logs(stack: Stack, admin: Client, admin_key: str, oidc: Any) -> None:
    # Use a key and a token right now, good and bad, so this test does not depend on which others ran.
    token = oidc.password_token("alice")
    Client(admin.base, token).get("/api/v1/me")
    Client(admin.base, admin_key + "x").get("/api/v1/me")
    admin.post("/api/v1/models/none/predict", json={"inputs": [[1]]})
    logs = sorted(p for p in stack.tmp.rglob("*.log") if not p.name.startswith("oidc"))
    assert any(p.name.startswith("api-") for p in logs) and any(p.name.startswith("worker-") for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        assert admin_key not in text, path
        assert token not in text and token.split(".")[1] not in text, path
        assert not KEY_RE.search(text), (path, KEY_RE.search(text))
        assert not JWT_RE.search(text), (path, JWT_RE.search(text))
