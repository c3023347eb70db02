"""deploy: put a registered version into service with the model's rollout strategy.

Started by the registry event alone: setting the ``champion`` alias in MLflow raises a
webhook, the bridge emits ``modelyard.registry.model_version_alias.created``, and the trigger
in prefect.yaml runs this flow with the model and version from the event. The strategy,
target and gates come from the spec the version was built with (logged with it).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from deployments.strategies import RolloutFailed, model_lock, record_refused, timeline_markdown
from deployments.targets.factory import make_target
from modelyard.settings import get_settings
from modelyard.spec import ServingSpec
from tasks.audit import record_audit_event
from tasks.registry import tracking_client, version_spec


@task(name="rollout-plan")
def rollout_plan(model: str, version: str) -> tuple[ServingSpec, bool]:
    """The serving section of the version's own spec, and whether its answers are classes."""
    spec = version_spec(tracking_client(get_settings()), model, version)
    if spec is None:
        return ServingSpec(strategy="blue_green"), True
    return spec.serving, spec.is_classification


@task(name="rollout")
def run_rollout(model: str, version: str, strategy: str, serving: ServingSpec, categorical: bool):
    from deployments import strategies

    settings = get_settings()
    target = make_target(settings, serving.target)
    with model_lock(settings, model):
        if serving.target == "kubernetes":  # traffic moves by the Service selector
            return strategies.kubernetes_blue_green(settings, model, version, target)
        if strategy == "canary":
            return strategies.canary(settings, model, version, serving.rollout, categorical, target)
        if strategy == "shadow":
            return strategies.shadow(settings, model, version, serving.rollout, categorical, target)
        return strategies.blue_green(settings, model, version, target)


@task(name="ensure-monitor-schedule")
def monitor_schedule_task(model: str, version: str) -> str:
    from modelyard.schedules import ensure_monitor_schedule
    from tasks.registry import version_spec

    spec = version_spec(tracking_client(get_settings()), model, version)
    interval = spec.monitoring.interval_s if spec is not None else 300
    return ensure_monitor_schedule(model, interval)


@task(name="record-recovery")
def record_recovery(model: str, version: str, timeline: list[dict]) -> dict | None:
    """When an alert caused this version (alert → retrain → promotion → here), MTTD and MTTR."""
    import time

    from modelyard.ledger import ledger_from_settings
    from tasks.kpis import recovery_for

    switched = next((s for s in timeline if s["step"] == "switched"), None)
    serving_at = time.time() - (timeline[-1]["t_s"] - switched["t_s"]) if switched and timeline else time.time()
    recovery = recovery_for(ledger_from_settings(get_settings()).records(), model, version, serving_at)
    if recovery is not None:
        record_audit_event("kpi.recovered", f"{model}/{version}", recovery)
    return recovery


@task(name="tag-version")
def tag_version(model: str, version: str, status: str, detail: str) -> None:
    client = tracking_client(get_settings())
    client.set_model_version_tag(model, version, "modelyard.deploy_status", status)
    client.set_model_version_tag(model, version, "modelyard.deploy_detail", detail[:500])


@task(name="rollout-chart")
def chart_task(model: str, version: str, previous: str | None, timeline: list[dict], outcome: str) -> str:
    """The rollout chart, logged to MLflow; markdown that embeds it (empty if it could not be made)."""
    import tempfile
    import time
    from pathlib import Path

    from deployments.rollout_report import log_rollout_chart, rollout_chart

    with tempfile.TemporaryDirectory() as tmp:
        chart = rollout_chart(timeline, model, version, previous, outcome,
                              Path(tmp) / f"v{version}-{int(time.time())}.png")
        url = log_rollout_chart(get_settings(), model, version, chart)
    return f"\n![rollout of {model} v{version}]({url})\n" if url else ""


@task(name="delivery-kpis")
def kpis_task(model: str, version: str) -> None:
    """The delivery KPIs after this rollout, as the Prefect artifact ``delivery-kpis`` (chart and
    HTML page logged on the version's MLflow run). Reporting never fails the rollout."""
    from tasks.kpi_report import publish_kpi_report

    try:
        markdown = publish_kpi_report(get_settings(), model, version)
    except Exception as error:  # noqa: BLE001 - the rollout's outcome stands; say what went wrong
        get_run_logger().warning("delivery KPIs not published: %s", error)
        return
    create_markdown_artifact(key="delivery-kpis", markdown=markdown, description=f"after {model} v{version}")


def _artifact_key(model: str) -> str:
    return f"{model}-rollout".lower().replace("_", "-").replace(".", "-")


@flow(name="deploy", log_prints=True)
def deploy(model: str, version: str, alias: str = "champion", strategy: str | None = None) -> dict:
    """Roll ``model`` v``version`` out; roll back by itself on any failed gate, saying why."""
    serving, categorical = rollout_plan(model, version)
    strategy = strategy or serving.strategy
    record_audit_event("deploy.started", f"{model}/{version}",
                       {"alias": alias, "strategy": strategy, "target": serving.target})
    try:
        rollout = run_rollout(model, version, strategy, serving, categorical)
    except RolloutFailed as failure:
        record_refused(get_settings(), model, version, failure.reason)
        record_audit_event("deploy.rolled_back", f"{model}/{version}",
                           {"reason": failure.reason, "strategy": strategy, "timeline": failure.timeline})
        tag_version(model, version, "rolled_back", failure.reason)
        rows = "\n".join(f"| {s['t_s']:.3f} | {s['step']} | {'ok' if s['ok'] else '**FAILED**'} | {s['detail']} |"
                         for s in failure.timeline)
        chart = chart_task(model, version, None, failure.timeline, "rolled back")
        create_markdown_artifact(key=_artifact_key(model), description=f"{model} v{version} rolled back",
                                 markdown=f"# Rollout of {model} v{version} ({strategy}): ROLLED BACK\n\n"
                                          f"Reason: {failure.reason}\n{chart}\n| t (s) | step | result | detail |\n"
                                          f"|---|---|---|---|\n{rows}\n")
        kpis_task(model, version)
        raise
    chart = chart_task(model, version, rollout.previous, rollout.timeline, "serving")
    create_markdown_artifact(key=_artifact_key(model), markdown=timeline_markdown(rollout, "serving") + chart,
                             description=f"{model} v{version} rollout timeline")
    record_audit_event("deploy.succeeded", f"{model}/{version}",
                       {"endpoint": rollout.endpoint_url, "strategy": rollout.strategy, "timeline": rollout.timeline})
    tag_version(model, version, "serving", f"{rollout.strategy} via {rollout.endpoint_url}")
    if serving.target != "kubernetes":
        monitor_schedule_task(model, version)
    record_recovery(model, version, rollout.timeline)
    kpis_task(model, version)
    print(f"{model} v{version} serving at {rollout.endpoint_url} ({rollout.strategy})")
    return {"model": model, "version": version, "endpoint": rollout.endpoint_url, "strategy": rollout.strategy,
            "timeline": rollout.timeline}


@task(name="roll-back")
def roll_back_task(model: str, to_version: str | None):
    from deployments import strategies

    settings = get_settings()
    with model_lock(settings, model):
        active = strategies.active_version(settings, model)
        target_kind = "local"
        if active is not None:
            serving, _ = rollout_plan.fn(model, active)
            target_kind = serving.target
        return strategies.roll_back_to_previous(settings, model, make_target(settings, target_kind), to_version=to_version)


@flow(name="rollback", log_prints=True)
def rollback(model: str, to_version: str | None = None, reason: str = "manual") -> dict:
    """Put the version that served before back in service; the registry's champion follows so
    that the reconciler does not redeploy the version that was rolled back."""
    try:
        rollout = roll_back_task(model, to_version)
    except RolloutFailed as failure:
        record_audit_event("deploy.manual_rollback_failed", f"{model}/{to_version or '?'}", {"reason": failure.reason})
        raise
    record_refused(get_settings(), model, rollout.previous, f"rolled back ({reason})")
    record_audit_event("deploy.manual_rollback", f"{model}/{rollout.version}",
                       {"from_version": rollout.previous, "reason": reason, "rollback_s": rollout.rollback_s,
                        "timeline": rollout.timeline})
    tag_version(model, rollout.previous, "rolled_back", f"manual rollback to v{rollout.version}: {reason}")
    client = tracking_client(get_settings())
    client.set_registered_model_alias(model, "champion", rollout.version)
    create_markdown_artifact(key=_artifact_key(model), markdown=timeline_markdown(rollout, f"rolled back ({reason})"),
                             description=f"{model} rolled back to v{rollout.version}")
    kpis_task(model, rollout.version)
    print(f"{model}: v{rollout.previous} → v{rollout.version} in {rollout.rollback_s:.2f} s")
    return {"model": model, "version": rollout.version, "from_version": rollout.previous, "rollback_s": rollout.rollback_s}
