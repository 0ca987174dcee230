"""Runtime pools: workers and their resources, queue depth, manual scaling and autoscale policy."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, client, get_or_stop, show_error

st.title("Runtimes")
api = client()
data = get_or_stop("/api/v1/runtimes", "Runtime pools")

for pool in data["pools"]:
    st.subheader(f"Pool {pool['name']}")
    c = st.columns(3)
    live = sum(1 for w in pool["workers"] if w["state"] != "lost")
    c[0].metric("Queue depth", "unknown" if pool.get("queue_depth") is None else pool["queue_depth"])
    c[1].metric("Live workers", live)
    c[2].metric("Replicas wanted", pool.get("replicas_desired", "?"))
    st.dataframe([{"id": w["id"], "state": w["state"], "cpu %": w.get("cpu_percent"), "memory MB": w.get("memory_mb"),
                   "gpus": len(w.get("gpus") or []), "models cached": len(w.get("models") or [])} for w in pool["workers"]],
                 hide_index=True, width="stretch")
    with st.form(f"scale-{pool['name']}"):
        # Without a setting yet, start from what runs now, so pressing Scale by mistake changes nothing.
        wanted = pool.get("replicas_desired")
        replicas = st.number_input("Replicas", min_value=0, value=int(live if wanted is None else wanted), step=1)
        if st.form_submit_button("Scale"):
            try:
                api.put(f"/api/v1/runtimes/{pool['name']}/scale", {"replicas": int(replicas)})
                st.success(f"pool {pool['name']} scaling to {int(replicas)}")
            except ApiError as exc:
                show_error(exc)
    policy = pool.get("autoscale") or {}
    with st.form(f"autoscale-{pool['name']}"):
        cols = st.columns(4)
        lo = cols[0].number_input("min", min_value=0, value=int(policy.get("min", 1)))
        hi = cols[1].number_input("max", min_value=1, value=int(policy.get("max", 4)))
        backlog = cols[2].number_input("target backlog / worker", min_value=1, value=int(policy.get("target_backlog_per_worker", 10)))
        cooldown = cols[3].number_input("cooldown s", min_value=0, value=int(policy.get("cooldown_s", 60)))
        if st.form_submit_button("Set autoscale policy"):
            try:
                api.put(f"/api/v1/runtimes/{pool['name']}/autoscale", {"min": int(lo), "max": int(hi),
                        "target_backlog_per_worker": int(backlog), "cooldown_s": int(cooldown)})
                st.success("policy saved")
            except ApiError as exc:
                show_error(exc)
