"""reconcile: emit the registry events that were missed, so that what serves follows the registry."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task

from deployments.bridge import emit_prefect_event
from deployments.reconcile import (
    alias_event, missed_deploys, recently_in_flight, registry_champions,
)
from deployments.strategies import active_version, history, refused_versions, rollout_in_progress
from modelyard.ledger import ledger_from_settings
from modelyard.settings import get_settings
from tasks.audit import record_audit_event


@task(name="compare-registry-with-serving")
def compare(grace_s: float = 600) -> list[dict]:
    settings = get_settings()
    champions = registry_champions(settings)
    serving = {model: active_version(settings, model) for model in champions}
    in_flight = recently_in_flight(ledger_from_settings(settings).records(), datetime.now(UTC), grace_s)
    handled = {model: set(refused_versions(settings, model)) | {h["version"] for h in history(settings, model)}
               | in_flight.get(model, set()) for model in champions}
    busy = {model for model in champions if rollout_in_progress(settings, model)}
    return [m.__dict__ for m in missed_deploys(champions, serving, handled, busy)]


@task(name="emit-missed-event")
def emit_missed(model: str, version: str, serving: str | None) -> None:
    emit_prefect_event(alias_event(model, version))
    record_audit_event("registry.event.reconciled", f"{model}/{version}",
                       {"alias": "champion", "serving": serving})


@task(name="ensure-monitor-schedules")
def ensure_schedules(models: list[str]) -> dict[str, str]:
    """Every serving model has its monitor schedule (re-created if a re-registration lost it)."""
    from modelyard.schedules import ensure_monitor_schedule
    from tasks.registry import tracking_client, version_spec

    settings = get_settings()
    client = tracking_client(settings)
    changes = {}
    for model in models:
        version = active_version(settings, model)
        spec = version_spec(client, model, version) if version else None
        if spec is not None:
            changes[model] = ensure_monitor_schedule(model, spec.monitoring.interval_s)
    return changes


@flow(name="reconcile", log_prints=True)
def reconcile(grace_s: float = 600) -> list[dict]:
    """Compare every champion alias with the serving version; emit what the bridge missed.
    ``grace_s``: how long an event already emitted for a version counts as on its way."""
    missed = compare(grace_s)
    ensure_schedules(sorted(registry_champions(get_settings())))
    for item in missed:
        emit_missed(item["model"], item["version"], item["serving"])
    get_run_logger().info("%d missed deploy(s): %s", len(missed),
                          ", ".join(f"{m['model']} v{m['version']}" for m in missed) or "none")
    return missed
