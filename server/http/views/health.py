"""Liveness and readiness: broker, repository and per-pool workers."""

from __future__ import annotations

from flask import Response, current_app

from server.http.api import Api, json_response
from server.services.auth import ANYONE
from server.core import pools_repo
from server.services import preload

api = Api("health")


def readiness() -> tuple[bool, dict[str, object]]:
    """Check broker, repository and pools; ready means all three can serve the default pool and uploads are warm."""
    ctx = current_app.extensions["modeldeck"]
    checks: dict[str, object] = {"broker": {"ok": ctx.router.connected}}
    try:
        ctx.db.command("ping")
        checks["repository"] = {"ok": True}
        counts = ctx.liveness.live_counts()
        # Pools an operator configured are listed even with no live worker: they are not ready.
        configured = [p["_id"] for p in pools_repo.list_pools(ctx.db)]
    except Exception as exc:  # any repository failure makes us not ready
        checks["repository"] = {"ok": False, "error": type(exc).__name__}
        counts, configured = {}, []
    default = ctx.settings.worker_pool
    pools = {p: {"workers": n, "ok": n > 0} for p, n in sorted(counts.items())}
    for name in [default, *configured]:
        pools.setdefault(name, {"workers": 0, "ok": False})
    checks["pools"] = pools
    # The upload checks' libraries are imported in the background at start; the first upload should not wait for them.
    checks["uploads"] = preload.state()
    ready = bool(checks["broker"]["ok"] and checks["repository"]["ok"] and pools[default]["ok"]  # type: ignore[index]
                 and checks["uploads"]["ok"])
    return ready, checks


@api.route("/healthz", "GET", ANYONE, "Liveness: the API process answers", scope="none")
def healthz() -> Response:
    return json_response({"status": "ok"})


@api.route("/readyz", "GET", ANYONE, "Readiness: broker, repository and per-pool workers", scope="none")
def readyz() -> Response:
    ready, checks = readiness()
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)
