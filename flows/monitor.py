"""monitor: judge the latest window of a deployed model's traffic; raise events on alerts.

Scheduled per deployed model (set by the deploy flow, interval from the spec); the triggers in
prefect.yaml and the automations turn the alerts into a retrain, a rollback or a notification.
"""

from __future__ import annotations

import tempfile

from prefect import flow, get_run_logger

from tasks import monitoring as m
from tasks.deploying import check_names
from tasks.monitor_steps import (
    drift_task, log_monitoring_task, performance_task, plan_monitoring, publish_verdict_task, raise_alerts_task,
    read_window_task, recent_traffic_task, reference_task, save_state_task, service_task, validate_live_task,
)


@flow(name="monitor", log_prints=True)
def monitor(model: str) -> dict:
    """One window of ``model``'s serving version: validity, drift, performance, service health."""
    check_names("monitor", {"model": model})
    plan = plan_monitoring(model)
    if plan is None:
        get_run_logger().info("%s is not serving (or its version carries no spec): nothing to monitor", model)
        return {"model": model, "status": "not serving"}
    window = read_window_task(plan)
    service, metrics_now = service_task(plan)
    verdict = m.open_verdict(model, plan.version, window, service, plan.spec.monitoring.min_rows)
    with tempfile.TemporaryDirectory() as report_dir:
        if verdict.status != m.INSUFFICIENT_DATA:
            verdict.record_validation(validate_live_task(plan, m.window_inputs(window)))
            if verdict.data_valid:
                verdict.drift = drift_task(plan, reference_task(plan), window, report_dir)
        # Labels arrive late: performance looks back over the whole window horizon, not only
        # at the rows logged since the last run, so a label that came in since still counts.
        verdict.performance = performance_task(plan, recent_traffic_task(plan))
        fresh = m.is_fresh(plan.deployed_at, plan.spec.monitoring.fresh_deploy_s)
        verdict.conclude(m.decide_alerts(verdict, plan.spec, fresh))
        report_url = log_monitoring_task(plan, verdict, report_dir)
    publish_verdict_task(verdict, report_url)
    raise_alerts_task(plan, verdict.alerts)
    save_state_task(plan, verdict, metrics_now)
    print(f"{model} v{plan.version}: {verdict.status} ({verdict.rows} rows; {len(verdict.alerts)} alert(s))")
    return verdict.as_dict()
