"""Delivery KPIs from the audit ledger: deployments, their success rate and frequency, rollbacks
(automatic and manual), and the detection and recovery times of the loops an alert closed.
Every number comes from ledger records, so it is as verifiable as the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelyard.catalog import AUTOMATIC_ROLLBACK_ACTIONS, RETRAIN_ALERT_ACTIONS, ROLLBACK_ACTIONS, Action

MTTD_MEANING = "start of the drifted window → alert"
MTTR_MEANING = "alert → switch to the new version completed"


def record_time(record: dict[str, Any]) -> float:
    """When a ledger record was written (epoch seconds)."""
    return datetime.fromisoformat(record["time"]).timestamp()


def detection_s(alert: dict[str, Any]) -> float | None:
    """MTTD of one loop: the time the alert was recorded in the ledger minus the start of the
    monitoring window that raised it (None when the alert names no window)."""
    window_start = alert["details"].get("window_start")
    return record_time(alert) - datetime.fromisoformat(window_start).timestamp() if window_start else None


def recovery_s(alert: dict[str, Any], switched_at: float) -> float:
    """MTTR of one loop: the moment the switch to the recovered version completed (proven by the
    stable endpoint answering with that version) minus the time the alert was recorded in the ledger."""
    return switched_at - record_time(alert)


def switched_at(timeline: list[dict[str, Any]]) -> float | None:
    """When a rollout's switch completed (epoch seconds): the wall-clock ``at`` of its ``switched``
    step; None for a rollout that switched nothing."""
    return next((step.get("at") for step in timeline if step["step"] == "switched"), None)


def recovery_for(records: list[dict[str, Any]], model: str, version: str, serving_at: float) -> dict[str, Any] | None:
    """If ``model`` v``version`` came from a retrain an alert started, the times of that loop
    (``serving_at``: when the switch to the version completed)."""
    finished = [r for r in records if r["action"] == Action.RETRAIN_FINISHED and r["subject"] == f"{model}/{version}"]
    if not finished:
        return None
    started = [r for r in records if r["action"] == Action.RETRAIN_STARTED and r["subject"] == model
               and record_time(r) <= record_time(finished[-1])]
    if not started:
        return None
    alerts = [r for r in records if r["action"] in RETRAIN_ALERT_ACTIONS and r["subject"].startswith(f"{model}/")
              and record_time(r) <= record_time(started[-1])]
    if not alerts:
        return None
    alert = alerts[-1]
    return {"alert": alert["action"], "alert_at": alert["time"], "mttd_s": detection_s(alert),
            "mttr_s": recovery_s(alert, serving_at), "retrain_s": record_time(finished[-1]) - record_time(started[-1])}


def concerns(record: dict[str, Any], model: str | None) -> bool:
    """Whether a ledger record is about ``model`` (the model or one of its versions); any with None."""
    return model is None or record["subject"] == model or record["subject"].startswith(f"{model}/")


def is_redeploy(record: dict[str, Any]) -> bool:
    """A deploy of the version already serving: no deployment in the KPIs' sense."""
    return any(s.get("step") == "already serving" for s in record["details"].get("timeline", []))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def delivery_kpis(records: list[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    """Deployments, their success rate and frequency, rollbacks (automatic and manual), and mean MTTD/MTTR."""
    records = [r for r in records if concerns(r, model)]
    started = [r for r in records if r["action"] == Action.DEPLOY_STARTED]
    succeeded = [r for r in records if r["action"] == Action.DEPLOY_SUCCEEDED and not is_redeploy(r)]
    rollbacks = [r for r in records if r["action"] in ROLLBACK_ACTIONS]
    automatic = [r for r in rollbacks if r["action"] in AUTOMATIC_ROLLBACK_ACTIONS]
    refused = [r for r in rollbacks if r["action"] == Action.DEPLOY_ROLLED_BACK]  # a failed deployment attempt
    recovered = [r["details"] for r in records if r["action"] == Action.KPI_RECOVERED]
    span_days = ((record_time(records[-1]) - record_time(records[0])) / 86400) if len(records) > 1 else 0.0
    attempts = len(succeeded) + len(refused)
    return {
        "deployments": len(succeeded), "deploy_attempts": attempts, "deploys_started": len(started),
        "success_rate": len(succeeded) / attempts if attempts else None,
        "deployments_per_day": len(succeeded) / span_days if span_days > 0 else None,
        "rollbacks": len(rollbacks),
        "automatic_rollbacks": len(automatic),
        "manual_rollbacks": len(rollbacks) - len(automatic),
        "recoveries": len(recovered),
        "mttd_s": _mean([r.get("mttd_s") for r in recovered]),
        "mttr_s": _mean([r.get("mttr_s") for r in recovered]),
    }
