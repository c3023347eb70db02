"""reconcile: emit the registry events that were missed, so that what serves follows the registry."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.reconciling import champions_task, compare, emit_missed, ensure_schedules


@flow(name="reconcile", log_prints=True)
def reconcile(grace_s: float = 600) -> list[dict]:
    """Compare every champion alias with the serving version; emit what the bridge missed.
    ``grace_s``: how long an event already emitted for a version counts as on its way."""
    champions = champions_task()
    missed = compare(champions, grace_s)
    ensure_schedules(list(champions))
    for item in missed:
        emit_missed(item["model"], item["version"], item["serving"])
    get_run_logger().info("%d missed deploy(s): %s", len(missed), missed)
    return missed
