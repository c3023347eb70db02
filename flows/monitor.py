"""monitor: judge the latest window of a deployed model's traffic; raise events on alerts.

Scheduled per deployed model (a schedule on the `monitor` deployment with the model as its
parameter, interval from the spec, set by the deploy flow). Alerts become Prefect events that
the automations created by `stack up` turn into a retrain, a rollback or a notification.
"""

from __future__ import annotations

import tempfile
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import monitoring as m
from tasks.monitor_steps import (
    drift_task, log_monitoring_task, performance_task, plan_monitoring, raise_alerts_task,
    read_window_task, recent_traffic_task, reference_task, save_state_task, service_task, validate_live_task,
)


@flow(name="monitor", log_prints=True)
def monitor(model: str) -> dict:
    """One window of ``model``'s serving version: validity, drift, performance, service health."""
    logger = get_run_logger()
    plan = plan_monitoring(model)
    if plan is None:
        logger.info("%s is not serving (or its version carries no spec): nothing to monitor", model)
        return {"model": model, "status": "not serving"}
    window = read_window_task(plan)
    service, metrics_now = service_task(plan)
    end = window["time"].max().isoformat() if not window.empty else None
    verdict = m.WindowVerdict(model, plan.version, window["time"].min().isoformat() if not window.empty else None,
                              end, len(window), "ok", service=service)
    with tempfile.TemporaryDirectory() as report_dir:
        if len(window) < plan.spec.monitoring.min_rows:
            verdict.status = "insufficient data"
        else:
            inputs = m.window_inputs(window)
            verdict.validation = validate_live_task(plan, inputs)
            verdict.data_valid = bool(verdict.validation["success"])
            if verdict.data_valid:
                verdict.drift = drift_task(plan, reference_task(plan), window, report_dir)
        # Labels arrive late: performance looks back over the whole window horizon, not only
        # at the rows logged since the last run, so a label that came in since still counts.
        verdict.performance = performance_task(plan, recent_traffic_task(plan))
        fresh = plan.deployed_at is not None and time.time() - plan.deployed_at < plan.spec.monitoring.fresh_deploy_s
        verdict.alerts = m.decide_alerts(verdict, plan.spec, fresh)
        if verdict.alerts:
            verdict.status = "alert"
        report_url = log_monitoring_task(plan, verdict, report_dir)
    create_markdown_artifact(key=f"{model}-monitor".lower().replace("_", "-").replace(".", "-"),
                             markdown=m.verdict_markdown(verdict, report_url),
                             description=f"{model} v{plan.version}: {verdict.status}")
    raise_alerts_task(plan, verdict.alerts)
    save_state_task(plan, verdict, metrics_now)
    print(f"{model} v{plan.version}: {verdict.status} ({verdict.rows} rows"
          f"{'; ' + ', '.join(a.event for a in verdict.alerts) if verdict.alerts else ''})")
    return verdict.as_dict()
