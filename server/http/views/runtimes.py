"""Runtimes: pools, queue depths, workers and their resources; scale by hand or by policy."""

from __future__ import annotations

import re

from flask import Response, current_app, g
from pydantic import BaseModel, Field

from server.services import audit
from server.http.api import Api, json_response
from server.core import pools_repo
from server.core.errors import InvalidInputError
from server.core.pools_repo import AutoscalePolicy
from server.services.runtimes import check_policy, queue_probe, runtimes

api = Api("runtimes", "/api/v1/runtimes")
POOL_RULE = "/<pool>"
POOL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,49}$"


class ScaleBody(BaseModel):
    model_config = {"extra": "forbid"}

    replicas: int = Field(ge=0, le=100, description="worker processes the controller should run")
    reason: str = Field(default="", max_length=500, description="why; kept in the audit trail")


class AutoscaleBody(BaseModel):
    model_config = {"extra": "forbid"}

    min: int = Field(ge=0, le=100, description="fewest workers; 0 allows scale to zero")
    max: int = Field(ge=1, le=100, description="most workers")
    target_backlog_per_worker: int = Field(default=4, ge=1, le=10000, description="queued tasks one worker should face")
    cooldown_s: float = Field(default=60.0, ge=0, le=86400, description="seconds after a change before scaling down")
    reason: str = Field(default="", max_length=500, description="why; kept in the audit trail")


def _check_replicas(field: str, value: int) -> None:
    limit = current_app.extensions["modeldeck"].settings.max_replicas_per_pool
    if value > limit:
        raise InvalidInputError(f"field '{field}': at most {limit} workers per pool (MODELDECK_MAX_REPLICAS_PER_POOL), got {value}",
                                {"field": field, "value": value, "max": limit})


def _check_name(pool: str) -> None:
    if not re.match(POOL_PATTERN, pool):
        raise InvalidInputError(f"pool name {pool!r} is not valid: expected letters, digits, '_' and '-', at most 50",
                                {"field": "pool", "value": pool})


@api.route("", "GET", "operator", "List pools with queue depth, policy and workers (lost ones marked)")
def list_runtimes() -> Response:
    ctx = current_app.extensions["modeldeck"]
    return json_response(runtimes(ctx, queue_probe()))


@api.route(POOL_RULE + "/scale", "PUT", "operator", "Set a pool's worker count (replaces its autoscale policy)", body=ScaleBody)
def scale_pool(pool: str, body: ScaleBody) -> Response:
    _check_name(pool)
    ctx = current_app.extensions["modeldeck"]
    _check_replicas("replicas", body.replicas)
    doc = pools_repo.set_replicas(ctx.db, pool, body.replicas, g.principal.subject, body.reason)
    audit.record("pool.scale", pool, details={"replicas": body.replicas, "reason": body.reason})
    return json_response({"name": pool, "replicas_desired": doc.get("replicas_desired"), "autoscale": None})


@api.route(POOL_RULE + "/autoscale", "PUT", "operator", "Set a pool's autoscale policy", body=AutoscaleBody)
def autoscale_pool(pool: str, body: AutoscaleBody) -> Response:
    _check_name(pool)
    _check_replicas("max", body.max)
    policy = AutoscalePolicy(min=body.min, max=body.max, target_backlog_per_worker=body.target_backlog_per_worker,
                             cooldown_s=body.cooldown_s)
    check_policy(policy)
    ctx = current_app.extensions["modeldeck"]
    pools_repo.set_autoscale(ctx.db, pool, policy, g.principal.subject, body.reason)
    audit.record("pool.autoscale", pool, details={**policy, "reason": body.reason})
    return json_response({"name": pool, "autoscale": policy})
