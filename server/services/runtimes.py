"""The runtimes overview and scaling requests: pools, their queues, workers and policies."""

from __future__ import annotations

from typing import Any

from flask import current_app

from server.services.context import Context
from server.core import pools_repo, workers_repo
from server.core.clock import now_iso
from server.core.errors import InvalidInputError
from server.core.pools_repo import AutoscalePolicy, PoolDoc
from server.core.queues import QueueProbe

WORKER_FIELDS = ("host", "pid", "pool", "concurrency", "busy", "cpu_percent", "memory_mb", "gpus", "environment",
                 "cache_hits", "cache_misses", "cached_models", "started_at", "last_seen")


def worker_view(doc: dict[str, Any], lost_before: str) -> dict[str, Any]:
    """Return a worker as the API shows it; a silent one is "lost" whatever it last said."""
    state = "lost" if doc.get("last_seen", "") < lost_before else doc.get("state", "idle")
    # models: the sha256 of each artifact in the worker's cache, most recently used last.
    return {"id": doc["_id"], "state": state, **{k: doc.get(k) for k in WORKER_FIELDS}, "models": list(doc.get("models") or [])}


def pool_view(name: str, pool: PoolDoc | None, workers: list[dict[str, Any]], depth: Any) -> dict[str, Any]:
    """Return one pool: queue depth, desired replicas, policy and workers."""
    controller = (pool or {}).get("controller") or {}
    view: dict[str, Any] = {
        "name": name,
        "queue_depth": depth.ready if depth else None,
        "consumers": depth.consumers if depth else None,
        "replicas_desired": (pool or {}).get("replicas_desired"),
        "replicas_running": controller.get("replicas"),
        "live_workers": sum(1 for w in workers if w["state"] not in ("lost", "stopping")),
        "workers": sorted(workers, key=lambda w: w["id"]),
    }
    if pool and pool.get("autoscale"):
        view["autoscale"] = pool["autoscale"]
        view["replicas_desired"] = controller.get("desired", view["replicas_desired"])
    if pool:
        view["updated_by"], view["updated_at"], view["reason"] = pool.get("updated_by"), pool.get("updated_at"), pool.get("reason")
    return view


def runtimes(ctx: Context, probe: QueueProbe) -> dict[str, Any]:
    """Return every pool that has a policy or a recorded worker, with queue depths from RabbitMQ."""
    lost_before = now_iso(-ctx.settings.worker_lost_after_s)
    pools = {p["_id"]: p for p in pools_repo.list_pools(ctx.db)}
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for doc in workers_repo.all_workers(ctx.db):
        by_pool.setdefault(doc.get("pool", "?"), []).append(worker_view(doc, lost_before))
    names = sorted(set(pools) | set(by_pool) | {ctx.settings.worker_pool})
    depths = probe.depths([ctx.settings.queue_name(n) for n in names])
    return {"pools": [pool_view(n, pools.get(n), by_pool.get(n, []), depths[ctx.settings.queue_name(n)]) for n in names]}


def pool_snapshot(db: Any, settings: Any, probe: QueueProbe) -> list[dict[str, Any]]:
    """Return each known pool's live and busy workers and its queue depth now (None while the broker is away)."""
    live = workers_repo.live_workers(db, settings.worker_lost_after_s)
    names = sorted({p["_id"] for p in pools_repo.list_pools(db)} | {w["pool"] for w in live} | {settings.worker_pool})
    depths = probe.depths([settings.queue_name(n) for n in names])
    out = []
    for name in names:
        mine = [w for w in live if w["pool"] == name]
        depth = depths.get(settings.queue_name(name))
        out.append({"pool": name, "workers": len(mine), "busy": sum(1 for w in mine if w.get("state") == "busy"),
                    "queue_depth": depth.ready if depth is not None else None})
    return out


def check_policy(policy: AutoscalePolicy) -> None:
    """Refuse a policy whose bounds contradict each other."""
    if policy["min"] > policy["max"]:
        raise InvalidInputError(
            f"field 'min' ({policy['min']}) must not exceed field 'max' ({policy['max']})",
            {"field": "min", "value": policy["min"], "max": policy["max"]},
        )


def queue_probe() -> QueueProbe:
    """Return this API process's queue-depth reader (one broker connection, made on first use)."""
    ext = current_app.extensions
    if "modeldeck_queue_probe" not in ext:
        ext["modeldeck_queue_probe"] = QueueProbe(ext["modeldeck"].settings.broker_url)
    probe: QueueProbe = ext["modeldeck_queue_probe"]
    return probe
