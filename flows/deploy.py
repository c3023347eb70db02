"""deploy: put a registered version into service with the rollout plan it was built with, and
record it as deployed only with the proof that it serves (deployments/desired_state.py).

Started by the registry event alone (the ``champion`` alias set in MLflow, bridged to Prefect,
matched by the trigger in prefect.yaml); ``rollback`` puts the previous version back. Each
environment's registered model (``<name>-staging``…) is served as its environment says, and its
``deploy.succeeded`` event offers the version to the next environment (the ``promote`` trigger).
"""

from __future__ import annotations

from prefect import flow

from deployments.strategies import RolloutFailed
from modelyard.catalog import CHAMPION, Action
from tasks.audit import record_audit_event
from tasks.kpis import is_redeploy
from tasks.deploying import (
    announce_deployed, check_names, monitor_schedule_task, record_deployed, record_recovery, record_rollback, record_rollback_failed,
    record_rolled_back, report_kpis, report_rollout, roll_back, rollout_plan, run_rollout,
)


@flow(name="deploy", log_prints=True)
def deploy(model: str, version: str, alias: str = CHAMPION, strategy: str | None = None) -> dict:
    """Roll ``model`` v``version`` out; roll back by itself on any failed gate, saying why."""
    check_names("deploy", {"model": model, "version": version})
    try:
        serving, categorical = rollout_plan(model, version)
    except RolloutFailed as refused:  # its spec no longer validates: refused, recorded, never retried
        report_rollout(record_rolled_back(model, version, strategy or "none", refused.reason, refused.timeline))
        raise
    strategy = strategy or serving.strategy
    record_audit_event(Action.DEPLOY_STARTED, f"{model}/{version}",
                       {"alias": alias, "strategy": strategy, "target": serving.target})
    try:
        rollout = run_rollout(model, version, strategy, serving, categorical)
    except RolloutFailed as failure:
        report_rollout(record_rolled_back(model, version, strategy, failure.reason, failure.timeline))
        report_kpis(model, version)
        raise
    record_recovery(model, version, rollout.timeline)
    report_rollout(record_deployed(rollout))
    if serving.target != "kubernetes":
        monitor_schedule_task(model, version)
    announce_deployed(model, version, is_redeploy({"details": {"timeline": rollout.timeline}}))
    report_kpis(model, version)
    proof = rollout.proof or {}
    print(f"{model} v{version} serving at {rollout.endpoint_url} ({rollout.strategy}); proven at "
          f"{proof.get('endpoint')}: {proof.get('replicas_ready', '-')}/{proof.get('replicas_desired', '-')} replica(s) "
          f"ready, /version answered {proof.get('answer')}")
    return {"model": model, "version": version, "endpoint": rollout.endpoint_url, "strategy": rollout.strategy,
            "proof": rollout.proof, "timeline": rollout.timeline}


@flow(name="rollback", log_prints=True)
def rollback(model: str, to_version: str | None = None, reason: str = "manual", automatic: bool = False) -> dict:
    """Put the version that served before back in service; the registry's champion follows so
    that the reconciler does not redeploy the version that was rolled back. ``automatic``: an
    alert asked (the ``service.degraded`` trigger), not an operator."""
    check_names("rollback", {"model": model, "to_version": to_version})
    try:
        rollout = roll_back(model, to_version)
    except RolloutFailed as failure:
        record_rollback_failed(model, to_version, failure.reason, automatic)
        raise
    report_rollout(record_rollback(rollout, reason, automatic))
    report_kpis(model, rollout.version)
    print(f"{model}: v{rollout.previous} → v{rollout.version} ({rollout.rollback_s} s)")
    return {"model": model, "version": rollout.version, "from_version": rollout.previous, "rollback_s": rollout.rollback_s}
