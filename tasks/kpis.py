"""Delivery KPIs from the audit ledger: what an auditor and a platform team both ask.

Everything is computed from ledger records, so the numbers are as verifiable as the ledger:
deployment frequency and success rate, rollbacks, and — for versions that a monitoring alert
caused — MTTD (first request of the drifted window → alert) and MTTR (alert → the new
version serving all traffic).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

ALERT_ACTIONS = {"monitor.drift.detected", "monitor.performance.degraded"}


def _at(record: dict) -> float:
    return datetime.fromisoformat(record["time"]).timestamp()


def recovery_for(records: list[dict[str, Any]], model: str, version: str, serving_at: float) -> dict[str, Any] | None:
    """If ``model`` v``version`` came from a retrain an alert started, the times of that loop."""
    finished = [r for r in records if r["action"] == "retrain.finished" and r["subject"] == f"{model}/{version}"]
    if not finished:
        return None
    started = [r for r in records if r["action"] == "retrain.started" and r["subject"] == model
               and _at(r) <= _at(finished[-1])]
    if not started:
        return None
    alerts = [r for r in records if r["action"] in ALERT_ACTIONS and r["subject"].startswith(f"{model}/")
              and _at(r) <= _at(started[-1])]
    if not alerts:
        return None
    alert = alerts[-1]
    window_start = alert["details"].get("window_start")
    mttd = _at(alert) - datetime.fromisoformat(window_start).timestamp() if window_start else None
    return {"alert": alert["action"], "alert_at": alert["time"], "mttd_s": mttd,
            "mttr_s": serving_at - _at(alert), "retrain_s": _at(finished[-1]) - _at(started[-1])}


def concerns(record: dict[str, Any], model: str | None) -> bool:
    """Whether a ledger record is about ``model`` (the model or one of its versions); any with None."""
    return model is None or record["subject"] == model or record["subject"].startswith(f"{model}/")


def is_redeploy(record: dict[str, Any]) -> bool:
    """A deploy of the version already serving: no deployment in the KPIs' sense."""
    return any(s.get("step") == "already serving" for s in record["details"].get("timeline", []))


def delivery_kpis(records: list[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    """Deployments, their success rate and frequency, rollbacks, and mean MTTD/MTTR."""
    records = [r for r in records if concerns(r, model)]
    started = [r for r in records if r["action"] == "deploy.started"]
    succeeded = [r for r in records if r["action"] == "deploy.succeeded" and not is_redeploy(r)]
    rolled_back = [r for r in records if r["action"] in ("deploy.rolled_back", "deploy.manual_rollback")]
    recoveries = [r["details"] for r in records if r["action"] == "kpi.recovered"]
    span_days = ((_at(records[-1]) - _at(records[0])) / 86400) if len(records) > 1 else 0.0
    attempts = len(succeeded) + len([r for r in rolled_back if r["action"] == "deploy.rolled_back"])

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        "deployments": len(succeeded), "deploy_attempts": attempts, "deploys_started": len(started),
        "success_rate": len(succeeded) / attempts if attempts else None,
        "deployments_per_day": len(succeeded) / span_days if span_days > 0 else None,
        "rollbacks": len(rolled_back),
        "automatic_rollbacks": len([r for r in rolled_back if r["action"] == "deploy.rolled_back"]),
        "recoveries": len(recoveries),
        "mttd_s": mean([r.get("mttd_s") for r in recoveries]),
        "mttr_s": mean([r.get("mttr_s") for r in recoveries]),
    }
