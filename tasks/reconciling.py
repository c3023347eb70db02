"""The reconciler's steps: read what the registry wants and what serves, emit the registry
events the bridge missed, keep every serving model's monitor schedule, and bring every model's
running replicas and route back to its desired state (deployments/desired_state.py), and close
approval requests whose time ran out (modelyard/approvals.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from deployments.bridge import emit_prefect_event
from deployments.desired_state import restore
from deployments.reconcile import alias_event, missed_deploys, recently_in_flight, refused_names
from modelyard.approvals import record_expired_approvals
from modelyard.audit import append_audit_record
from modelyard.catalog import CHAMPION, Action
from modelyard.names import InvalidName
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, champions, version_spec
from modelyard.schedules import ensure_monitor_schedule
from tasks.deploying import refuse_invalid_names

RECONCILE = "reconcile"  # the entry point, as a name.refused record names it


@task(name="registry-champions", **INFRA_RETRIES)
def champions_task() -> dict[str, str]:
    """Every registered model with a champion, and the version it points at. MLflow allows names
    modelyard refuses: such a champion is left out (never emitted, scheduled or repaired) and
    recorded once (``name.refused``), not at every run."""
    resources = get_resources()
    refused: set[str] | None = None

    def record_once(action: Action, subject: str, details: dict) -> None:
        nonlocal refused
        refused = refused_names(resources.ledger.records(), subject) if refused is None else refused
        if details["value"] not in refused:
            append_audit_record(action, subject, details)
            refused.add(details["value"])

    valid = {}
    for model, version in champions(resources.registry).items():
        try:
            refuse_invalid_names(RECONCILE, {"model": model, "version": version}, record_once)
        except InvalidName as invalid:
            get_run_logger().warning("champion left out: %s", invalid)
            continue
        valid[model] = version
    return valid


@task(name="compare-registry-with-serving", cache_policy=NO_CACHE)
def compare(champion_versions: dict[str, str], grace_s: float = 600) -> list[dict]:
    """Champions that no rollout handled and none is handling now (see deployments/reconcile.py)."""
    resources = get_resources()
    serving = {model: resources.serving.active_version(model) for model in champion_versions}
    in_flight = recently_in_flight(resources.ledger.records(), datetime.now(UTC), grace_s)
    handled = {model: resources.serving.handled_versions(model) | in_flight.get(model, set())
               for model in champion_versions}
    busy = {model for model in champion_versions if resources.serving.rollout_in_progress(model)}
    return [m.__dict__ for m in missed_deploys(champion_versions, serving, handled, busy)]


@task(name="emit-missed-event", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def emit_missed(model: str, version: str, serving: str | None) -> None:
    """The alias event the bridge missed, recorded only once Prefect accepted it."""
    emit_prefect_event(alias_event(model, version))
    append_audit_record(Action.REGISTRY_EVENT_RECONCILED, f"{model}/{version}", {"alias": CHAMPION, "serving": serving})


@task(name="ensure-monitor-schedules", **INFRA_RETRIES)
def ensure_schedules(models: list[str]) -> dict[str, str]:
    """Every serving model has its monitor schedule (re-created if a re-registration lost it)."""
    resources = get_resources()
    changes = {}
    for model in sorted(models):
        version = resources.serving.active_version(model)
        spec = version_spec(resources.registry, model, version) if version else None
        if spec is not None:
            changes[model] = ensure_monitor_schedule(model, spec.monitoring.interval_s)
    return changes


REPAIR_LOCK_WAIT_S = 5  # a model whose rollout holds its lock longer is left to that rollout


@task(name="repair-serving", cache_policy=NO_CACHE)
def repair_serving() -> list[dict]:
    """Every model with an active version compared with what runs, and the difference repaired:
    a version nothing runs started, replicas their supervisor gave up on started, the route
    applied again, a version an unfinished rollout left behind removed — each proven and
    recorded (``serving.restored``, ``serving.repaired`` or ``serving.restore_failed``)."""
    resources = get_resources()
    repairs = []
    for model in resources.serving.served_models():
        outcome = restore(resources.settings, model, "reconcile", lock_timeout_s=REPAIR_LOCK_WAIT_S)
        if outcome is None:
            continue
        if outcome.action is not None:
            append_audit_record(outcome.action, outcome.subject, outcome.details())
            get_run_logger().info(outcome.describe())
        repairs.append(outcome.summary())
    return repairs


@task(name="close-expired-approvals", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def close_expired_approvals() -> list[dict]:
    """Promotions whose approval did not come within their environment's ``approval_timeout_s``
    refused: ``approval.timed_out`` and ``promotion.refused``, once each (a retry writes nothing
    twice), and the timeout on the source version beside the other decisions (``modelyard.approval.<env>``)."""
    resources = get_resources()
    written = record_expired_approvals(resources.settings)
    for record in written:
        get_run_logger().info("%s %s: %s", record["action"], record["subject"], record["details"].get("reason", ""))
        if record["action"] == Action.APPROVAL_TIMED_OUT:
            tag_timeout(resources.registry, record)
    return [{"action": record["action"], "subject": record["subject"]} for record in written]


def tag_timeout(client, record: dict) -> None:
    """The timeout on the MLflow version, as the promote flow tags the people's decisions; the ledger
    record is the authority, so a registry that fails here is logged, not retried into a second record."""
    from tasks.promoting import APPROVAL_TAG

    model, _, version = record["subject"].rpartition("/")
    details = record["details"]
    summary = {"flow_run_id": details["flow_run_id"], "decisions": [{"identity": identity, "decision": "approve"}
                                                                    for identity in details.get("given") or []],
               "timed_out": {"deadline": details.get("deadline"), "at": record["time"]}}
    try:
        client.set_model_version_tag(model, version, APPROVAL_TAG.format(env=details["environment"]),
                                     json.dumps(summary, sort_keys=True))
    except Exception as error:  # noqa: BLE001 - the ledger already holds the timeout
        get_run_logger().warning("could not tag %s with its approval timeout: %s", record["subject"], error)
