"""The deploy and rollback flows' steps: the names an event brought checked first, the rollout
plan a version carries, the rollout under the model's lock, what the ledger, the registry and the
reports say about it afterwards."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from deployments import strategies
from deployments.bridge import emit_prefect_event
from deployments.strategies import Rollout, RolloutFailed
from deployments.targets.factory import make_target
from modelyard.audit import append_audit_record
from modelyard.catalog import CHAMPION, TAG_DEPLOY_DETAIL, TAG_DEPLOY_STATUS, Action, Event, model_resource_id
from modelyard.environments import split_environment
from modelyard.incidents import (
    RECOVERED_BY_ROLLBACK, RECOVERED_BY_ROLLOUT, emit_incident_event, resolve_by_recovery,
)
from modelyard.names import InvalidName, check_model_name, check_version
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, artifact_url, set_alias, version_spec
from modelyard.resources.serving_state import ModelBusy
from modelyard.schedules import ensure_monitor_schedule
from modelyard.spec import ServingSpec, SpecError
from tasks.kpis import is_redeploy, recovery_for, switched_at
from tasks.reporting import (
    RolloutSummary, kpi_artifact, publish, rollout_artifact, rollout_chart, timeline_markdown, write_kpi_report,
)

DEFAULT_MONITOR_INTERVAL_S = 300  # for a version registered without a spec


def refuse_invalid_names(entry: str, names: Mapping[str, object],
                         record: Callable[[Action, str, dict[str, Any]], Any] = append_audit_record) -> None:
    """Every name a flow was started with (from a Prefect event: anyone who can emit one) checked
    against ``modelyard.names`` before the flow touches a path, a config file or a tag: ``model``
    is a model name, any other field a version, ``None`` (an optional version) passes. The first
    invalid one is recorded once (``name.refused``, subject: the ``entry`` flow) and raised as
    InvalidName, which fails the flow at once."""
    for field, value in names.items():
        if value is None:
            continue
        try:
            check_model_name(value, field) if field == "model" else check_version(value, field)
        except InvalidName as invalid:
            record(Action.NAME_REFUSED, entry, {"field": field, "value": repr(value)[:100],
                                                 "error": str(invalid)[:300]})
            raise


@task(name="check-names", cache_policy=NO_CACHE)
def check_names(entry: str, names: dict[str, object]) -> None:
    """The flow's first step: its names valid, or the flow refused (see ``refuse_invalid_names``)."""
    refuse_invalid_names(entry, names)


def serving_plan(client, model: str, version: str, strict: bool = False) -> tuple[ServingSpec, bool]:
    """The serving section of the version's own spec, and whether its answers are classes (a
    version registered without a spec: blue/green). ``strict``: a version whose spec does not
    validate (any more) is refused with the validation error, never deployed without its gates."""
    try:
        spec = version_spec(client, model, version, strict=strict)
    except SpecError as error:
        raise RolloutFailed(f"{model} v{version} is refused: {error}", []) from error
    if spec is None:
        return ServingSpec(strategy="blue_green"), True
    try:  # each environment's registered model is served as its environment says
        return spec.serving_for(split_environment(model)[1]), spec.is_classification
    except SpecError as error:  # a copy into an environment its spec does not have
        raise RolloutFailed(f"{model} v{version} is refused: {error}", []) from error


def _tag(client, model: str, version: str, status: str, detail: str) -> None:
    client.set_model_version_tag(model, version, TAG_DEPLOY_STATUS, status)
    client.set_model_version_tag(model, version, TAG_DEPLOY_DETAIL, detail[:500])


@task(name="rollout-plan", **INFRA_RETRIES)
def rollout_plan(model: str, version: str) -> tuple[ServingSpec, bool]:
    """The deploy's plan; ``RolloutFailed`` for a version whose spec does not validate."""
    return serving_plan(get_resources().registry, model, version, strict=True)


@task(name="rollout", cache_policy=NO_CACHE)
def run_rollout(model: str, version: str, strategy: str, serving: ServingSpec, categorical: bool) -> Rollout:
    """The model's strategy, one rollout of the model at a time."""
    resources = get_resources()
    settings = resources.settings
    target = make_target(settings, serving.target)
    try:
        with resources.serving.lock(model):
            if serving.target == "kubernetes":  # traffic moves by the Service selector
                return strategies.kubernetes_blue_green(settings, model, version, target)
            if strategy == "canary":
                return strategies.canary(settings, model, version, serving.rollout, categorical, target)
            if strategy == "shadow":
                return strategies.shadow(settings, model, version, serving.rollout, categorical, target)
            return strategies.blue_green(settings, model, version, target)
    except ModelBusy as error:
        raise RolloutFailed(str(error), []) from error


@task(name="record-recovery", cache_policy=NO_CACHE)
def record_recovery(model: str, version: str, timeline: list[dict]) -> dict | None:
    """When an alert caused this version (alert → retrain → promotion → here), MTTD and MTTR,
    measured at the moment the rollout's switch completed."""
    serving_at = switched_at(timeline)
    if serving_at is None:
        return None
    recovery = recovery_for(get_resources().ledger.records(), model, version, serving_at)
    if recovery is not None:
        append_audit_record(Action.KPI_RECOVERED, f"{model}/{version}", recovery)
    return recovery


class UnprovenRollout(RuntimeError):
    """A rollout came back without the proof that its version serves: no success is recorded."""


@task(name="record-deployed", **INFRA_RETRIES)
def record_deployed(rollout: Rollout) -> RolloutSummary:
    """The version tagged as serving, and ``deploy.succeeded`` in the ledger with its proof: the
    ``/version`` answer through the stable endpoint and the replicas ready of those desired.
    Without a proof, nothing is recorded as a success."""
    if not (rollout.proof or {}).get("proven"):
        raise UnprovenRollout(f"{rollout.model} v{rollout.version}: the rollout ({rollout.strategy}) ended without "
                              "the proof that the version serves; not recorded as deployed")
    _tag(get_resources().registry, rollout.model, rollout.version, "serving",
         f"{rollout.strategy} via {rollout.endpoint_url}")
    append_audit_record(Action.DEPLOY_SUCCEEDED, f"{rollout.model}/{rollout.version}",
                        {"endpoint": rollout.endpoint_url, "strategy": rollout.strategy, "proof": rollout.proof,
                         "timeline": rollout.timeline})
    if not is_redeploy({"details": {"timeline": rollout.timeline}}):
        resolve_recovered_incidents(rollout.model, rollout.version, f"v{rollout.version} at 100%",
                                    RECOVERED_BY_ROLLOUT, rollout.timeline)
    return RolloutSummary.of(rollout, Action.DEPLOY_SUCCEEDED)


def resolve_recovered_incidents(model: str, version: str, how: str, kinds: tuple[str, ...],
                                timeline: list[dict]) -> list:
    """The model's open incidents of ``kinds`` (on other versions than ``version``, which now
    serves) resolved by this recovery, as of the moment its switch completed. Their MTTR (incident
    opened → switch) matches ``kpi.recovered``'s (the alert record → the same switch) to within the
    instant between an alert's record and its incident's; ``kpi.recovered`` exists only for a
    version a retrain made, an incident for every alert. A failure here is logged, never fails
    or repeats the deploy that already happened."""
    try:
        return resolve_by_recovery(append_audit_record, get_resources().ledger.records(), model=model, how=how,
                                   kinds=kinds, recovery_version=version, recovered_at=switched_at(timeline),
                                   emit=emit_incident_event)
    except Exception as error:  # noqa: BLE001 - the rollout's outcome stands; the incident stays open, said here
        get_run_logger().warning("%s: incidents not resolved by v%s: %s", model, version, error)
        return []


@task(name="record-rolled-back", **INFRA_RETRIES)
def record_rolled_back(model: str, version: str, strategy: str, reason: str, timeline: list[dict]) -> RolloutSummary:
    """A rollout its own gates refused: never retried by the reconciler, tagged, in the ledger."""
    resources = get_resources()
    resources.serving.record_refused(model, version, reason)
    _tag(resources.registry, model, version, "rolled_back", reason)
    append_audit_record(Action.DEPLOY_ROLLED_BACK, f"{model}/{version}",
                        {"reason": reason, "strategy": strategy, "timeline": timeline})
    return RolloutSummary(model, version, strategy, Action.DEPLOY_ROLLED_BACK, timeline,
                          previous=resources.serving.active_version(model), reason=reason)


@task(name="ensure-monitor-schedule", **INFRA_RETRIES)
def monitor_schedule_task(model: str, version: str) -> str:
    """The model's monitor schedule, at its environment's interval (each environment's registered
    model is monitored on its own)."""
    spec = version_spec(get_resources().registry, model, version)
    interval = spec.monitor_interval_for(split_environment(model)[1]) if spec is not None else DEFAULT_MONITOR_INTERVAL_S
    return ensure_monitor_schedule(model, interval)


def promotes_onwards(spec, model: str) -> bool:
    """Whether a version now serving ``model`` (a registered model of one environment) is offered
    to the next environment by itself: the spec has one after it, promoted automatically or on
    approval (a ``manual`` one waits for `modelyard promote`)."""
    if spec is None:
        return False
    env = split_environment(model)[1]
    following = spec.next_environment(env) if env in spec.environments else None
    return following is not None and spec.environment(following).promotion in ("automatic", "approval")


def deployed_event(model: str, version: str, promote: bool) -> dict[str, Any]:
    """The ``deploy.succeeded`` Prefect event of a version proven serving; ``modelyard.promote``
    is what the ``promote`` deployment's trigger matches."""
    return {"event": str(Event.DEPLOY_SUCCEEDED),
            "resource": {"prefect.resource.id": model_resource_id(model), "prefect.resource.name": model,
                         "modelyard.model": model, "modelyard.version": str(version),
                         "modelyard.environment": split_environment(model)[1],
                         "modelyard.promote": "true" if promote else "false"},
            "payload": {}}


@task(name="announce-deployed", **INFRA_RETRIES)
def announce_deployed(model: str, version: str, redeploy: bool) -> dict[str, Any]:
    """``deploy.succeeded`` as a Prefect event, confirmed by the server (not queued): the next
    environment's promotion starts from it. A redeploy of the version already serving offers
    nothing onwards (it was offered when it first served)."""
    spec = version_spec(get_resources().registry, model, version)
    event = deployed_event(model, version, promote=not redeploy and promotes_onwards(spec, model))
    emit_prefect_event(event)
    return event


@task(name="rollout-report", **INFRA_RETRIES)
def report_rollout(summary: RolloutSummary) -> None:
    """The timeline and its chart on the version's MLflow run (``rollouts/``), and the model's
    ``rollout`` artifact embedding the chart from there."""
    resources = get_resources()
    client = resources.registry
    run_id = client.get_model_version(summary.model, summary.version).run_id
    chart_url = None
    if run_id:
        with tempfile.TemporaryDirectory() as tmp:
            name = f"v{summary.version}-{int(time.time())}"
            chart = rollout_chart(summary, Path(tmp) / f"{name}.png")
            chart_url = artifact_url(resources.settings.mlflow_url, run_id, f"rollouts/{chart.name}")
            timeline = Path(tmp) / f"{name}.timeline.md"
            timeline.write_text(timeline_markdown(summary, chart_url))
            client.log_artifact(run_id, str(chart), "rollouts")
            client.log_artifact(run_id, str(timeline), "rollouts")
    publish(rollout_artifact(summary, chart_url))


@task(name="delivery-kpis", cache_policy=NO_CACHE)
def report_kpis(model: str, version: str) -> None:
    """The delivery KPIs after this rollout: the page and chart on the version's MLflow run
    (``kpis/``), and the ``delivery-kpis`` artifact. Reporting never fails the rollout."""
    resources = get_resources()
    try:
        records = resources.ledger.records()
        run_id = resources.registry.get_model_version(model, version).run_id
        chart_url = page_url = None
        if run_id:
            with tempfile.TemporaryDirectory() as tmp:
                page = write_kpi_report(records, model, Path(tmp) / "delivery-kpis.html")
                resources.registry.log_artifact(run_id, str(page), "kpis")
                resources.registry.log_artifact(run_id, str(page.with_suffix(".png")), "kpis")
            chart_url = artifact_url(resources.settings.mlflow_url, run_id, "kpis/delivery-kpis.png")
            page_url = artifact_url(resources.settings.mlflow_url, run_id, "kpis/delivery-kpis.html")
        publish(kpi_artifact(records, model, version, chart_url, page_url))
    except Exception as error:  # noqa: BLE001 - the rollout's outcome stands; say what went wrong
        get_run_logger().warning("delivery KPIs not published: %s", error)


@task(name="roll-back", cache_policy=NO_CACHE)
def roll_back(model: str, to_version: str | None) -> Rollout:
    """The version that served before (or ``to_version``) serving again, on the target the
    serving version runs on."""
    resources = get_resources()
    settings = resources.settings
    try:
        with resources.serving.lock(model):
            active = resources.serving.active_version(model)
            serving = serving_plan(resources.registry, model, active)[0] if active is not None else ServingSpec()
            target = make_target(settings, serving.target)
            if serving.target == "kubernetes":
                return strategies.kubernetes_roll_back(settings, model, target, to_version=to_version)
            return strategies.roll_back_to_previous(settings, model, target, to_version=to_version)
    except ModelBusy as error:
        raise RolloutFailed(str(error), []) from error


def rollback_action(automatic: bool, failed: bool = False) -> Action:
    """How the ledger names a rollback: automatic (an alert) or manual (an operator), done or failed."""
    if automatic:
        return Action.AUTOMATIC_ROLLBACK_FAILED if failed else Action.AUTOMATIC_ROLLBACK
    return Action.MANUAL_ROLLBACK_FAILED if failed else Action.MANUAL_ROLLBACK


@task(name="record-rollback", **INFRA_RETRIES)
def record_rollback(rollout: Rollout, reason: str, automatic: bool) -> RolloutSummary:
    """The version rolled away from refused and tagged, the registry's champion back on the
    version that serves (so the reconciler does not redeploy the other), the rollback in the ledger."""
    resources = get_resources()
    model, action = rollout.model, rollback_action(automatic)
    resources.serving.record_refused(model, rollout.previous, f"rolled back ({reason})")
    _tag(resources.registry, model, rollout.previous, "rolled_back",
         f"{'automatic' if automatic else 'manual'} rollback to v{rollout.version}: {reason}")
    set_alias(resources.registry, model, CHAMPION, rollout.version)
    append_audit_record(action, f"{model}/{rollout.version}",
                        {"from_version": rollout.previous, "reason": reason, "rollback_s": rollout.rollback_s,
                         "strategy": rollout.strategy, "timeline": rollout.timeline})
    resolve_recovered_incidents(model, rollout.version, f"rollback to v{rollout.version}", RECOVERED_BY_ROLLBACK,
                                rollout.timeline)
    return RolloutSummary.of(rollout, action, reason)


@task(name="record-rollback-failed", cache_policy=NO_CACHE)
def record_rollback_failed(model: str, to_version: str | None, reason: str, automatic: bool) -> None:
    append_audit_record(rollback_action(automatic, failed=True), f"{model}/{to_version or '?'}", {"reason": reason})
