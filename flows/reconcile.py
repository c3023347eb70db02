"""reconcile: emit the registry events that were missed, so that what serves follows the registry,
repair what runs where it differs from each model's desired state, and refuse the promotions whose
approval did not come in time."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.reconciling import (
    champions_task,
    close_expired_approvals,
    compare,
    emit_missed,
    ensure_schedules,
    repair_serving,
)


@flow(name="reconcile", log_prints=True)
def reconcile(grace_s: float = 600) -> list[dict]:
    """Repair what runs where it differs from each model's desired state; compare every champion
    alias with the serving version and emit what the bridge missed; close expired approval
    requests. ``grace_s``: how long an event already emitted for a version counts as on its way."""
    repairs = repair_serving()
    champions = champions_task()
    missed = compare(champions, grace_s)
    ensure_schedules(list(champions))
    for item in missed:
        emit_missed(item["model"], item["version"], item["serving"])
    close_expired_approvals()
    get_run_logger().info("%d missed deploy(s): %s; %d model(s) repaired: %s", len(missed), missed,
                          sum(1 for r in repairs if r["action"]), [r for r in repairs if r["action"]])
    return missed
