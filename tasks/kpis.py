"""KPIs as the flows use them: the closed loop's detection and recovery times the deploy flow
records (``kpi.recovered``), and the scheduled ``audit verify`` whose runs make the audit pass
rate. The KPIs themselves are plain functions of ledger records in ``modelyard.kpis`` (the
bridge's ``/metrics`` reads them too, and it cannot import ``tasks/``); they are re-exported
here for the flows and reports that import them from this module."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from modelyard.catalog import RETRAIN_ALERT_ACTIONS, Action
from modelyard.kpis import (
    LEAD_TIME_MEANING, MTTD_MEANING, MTTR_MEANING, Scope, audit_pass_rate, concerns, delivery_kpis, is_redeploy,
    kpi_cuts, lead_times, record_time, switched_at,
)

__all__ = [  # re-exported from modelyard.kpis for the flows and reports that import them from here
    "LEAD_TIME_MEANING", "MTTD_MEANING", "MTTR_MEANING", "Scope", "audit_pass_rate", "concerns", "delivery_kpis",
    "is_redeploy", "kpi_cuts", "lead_times", "record_time", "switched_at",
    "detection_s", "recovery_s", "recovery_for", "verification_record", "verify_ledger_task", "audit_markdown",
    "publish_audit_verify",
]


def detection_s(alert: dict[str, Any]) -> float | None:
    """MTTD of one loop: the time the alert was recorded in the ledger minus the start of the
    monitoring window that raised it (None when the alert names no window)."""
    window_start = alert["details"].get("window_start")
    return record_time(alert) - datetime.fromisoformat(window_start).timestamp() if window_start else None


def recovery_s(alert: dict[str, Any], switched_at: float) -> float:
    """MTTR of one loop: the moment the switch to the recovered version completed (proven by the
    stable endpoint answering with that version) minus the time the alert was recorded in the ledger."""
    return switched_at - record_time(alert)


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


# --- the scheduled audit verify (the audit pass rate) ------------------------------------------

def verification_record(result) -> dict[str, Any]:
    """What the ledger keeps of one ``audit verify``: whether it passed, how many records
    verified, the first problem, the latest signed and witnessed checkpoints."""
    return {"ok": result.ok, "records": result.records,
            "problem": None if result.problem is None else str(result.problem)[:500],
            "problem_kind": None if result.problem is None else result.problem.kind,
            "checkpoint": result.checkpoint.describe() if result.checkpoint is not None else None,
            "witnessed": result.witnessed.source if result.witnessed is not None else None,
            "witness_errors": [error[:200] for error in result.witness_errors]}


@task(name="verify-ledger", cache_policy=NO_CACHE)
def verify_ledger_task() -> dict[str, Any]:
    """``audit verify`` with the MLflow and Prefect witnesses, recorded as ``audit.verified``
    (recorded even when the ledger is broken: that is the finding the pass rate counts)."""
    from modelyard.audit import append_audit_record
    from modelyard.kpis import LEDGER_SUBJECT
    from modelyard.resources import get_resources

    details = verification_record(get_resources().ledger.verify())
    append_audit_record(Action.AUDIT_VERIFIED, LEDGER_SUBJECT, details)
    return details


def audit_markdown(details: dict[str, Any], rate: dict[str, Any]) -> str:
    """The run's finding and the pass rate so far, for the flow run's artifact."""
    verdict = "PASSED" if details["ok"] else "FAILED"
    shown = "–" if rate["audit_pass_rate"] is None else f"{rate['audit_pass_rate']:.1%}"
    lines = [f"# Audit verify: {verdict}", "", f"{details['records']} records verified.", ""]
    if details["problem"]:
        lines += [f"First problem: `{details['problem']}`", ""]
    lines += ["| measure | value |", "|---|---|",
              f"| latest signed checkpoint | {details['checkpoint'] or 'none'} |",
              f"| latest witnessed checkpoint | {details['witnessed'] or 'none'} |",
              f"| audit verify runs | {rate['audit_runs']} |", f"| passed | {rate['audit_passed']} |",
              f"| audit pass rate | {shown} |"]
    return "\n".join(lines) + "\n"


@task(name="publish-audit-verify", cache_policy=NO_CACHE)
def publish_audit_verify(details: dict[str, Any]) -> dict[str, Any]:
    """The pass rate over every recorded run, as the ``audit-verify`` artifact."""
    from prefect.artifacts import create_markdown_artifact

    from modelyard.resources import get_resources

    rate = audit_pass_rate(get_resources().ledger.records())
    create_markdown_artifact(key="audit-verify", markdown=audit_markdown(details, rate),
                             description=f"{'passed' if details['ok'] else 'FAILED'}: {details['records']} records")
    return rate
