"""Decide a pool's replica count from its backlog: a pure function, with bounds, cooldown and hysteresis."""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.core.pools_repo import AutoscalePolicy

# Scale down only when the remaining workers would face at most this share of the target backlog,
# so a load hovering at the threshold does not flap between two replica counts.
SCALE_DOWN_FACTOR = 0.5


@dataclass(frozen=True)
class Load:
    backlog: int  # messages waiting in the pool's queue
    busy: int  # tasks running on the pool's workers


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


def decide(policy: AutoscalePolicy, current: int, load: Load, since_change_s: float) -> Decision:
    """Return the replica count a pool should run now, and why."""
    low, high, target = policy["min"], policy["max"], policy["target_backlog_per_worker"]
    demand = load.backlog + load.busy
    wanted = min(high, max(low, math.ceil(demand / target)))
    if current < low:
        return Decision(low, f"below min {low}")
    if current > high:
        return Decision(high, f"above max {high}")
    if wanted > current:
        # Scaling up is never delayed: a backlog costs callers time now.
        return Decision(wanted, f"backlog {load.backlog} + busy {load.busy} needs {wanted} at {target} per worker")
    calm = min(high, max(low, math.ceil(demand / (target * SCALE_DOWN_FACTOR))))
    if calm < current:
        if since_change_s < policy["cooldown_s"]:
            return Decision(current, f"cooling down ({since_change_s:.0f} of {policy['cooldown_s']:.0f} s)")
        return Decision(calm, f"backlog {load.backlog} + busy {load.busy} needs only {calm} after cooldown")
    return Decision(current, "steady")
