"""Delivery KPIs from ledger records alone: deployments and their success rate, rollbacks (by
themselves or by hand), and for a version an alert caused, the detection and recovery times."""

from __future__ import annotations

from datetime import datetime

import pytest

from tasks.kpis import delivery_kpis, recovery_for


def rec(t: int, action: str, subject: str, **details) -> dict:
    """A ledger record ``t`` seconds after 2026-01-01 00:00 UTC."""
    return {"time": f"2026-01-01T00:{t // 60:02d}:{t % 60:02d}+00:00", "action": action, "subject": subject,
            "details": details}


def at(t: int) -> float:
    return datetime.fromisoformat(rec(t, "", "")["time"]).timestamp()


SWITCHED = [{"step": "switched"}]
LOOP = [
    rec(0, "deploy.started", "m/1"), rec(5, "deploy.succeeded", "m/1", timeline=SWITCHED),
    rec(100, "monitor.drift.detected", "m/1", window_start="2026-01-01T00:01:00+00:00"),
    rec(102, "retrain.started", "m"), rec(160, "retrain.finished", "m/2", outcome="promoted"),
    rec(162, "deploy.started", "m/2"),
]


def test_kpis_follow_the_ledger_alert_to_recovery():
    recovery = recovery_for(LOOP, "m", "2", serving_at=at(190))  # v2 serves all traffic 190 s in
    assert recovery["alert"] == "monitor.drift.detected" and recovery["alert_at"] == LOOP[2]["time"]
    assert recovery["mttd_s"] == 40  # first request of the drifted window (60 s) → alert (100 s)
    assert recovery["mttr_s"] == 90  # alert (100 s) → serving (190 s)
    assert recovery["retrain_s"] == 58
    records = LOOP + [rec(190, "kpi.recovered", "m/2", **recovery), rec(191, "deploy.succeeded", "m/2", timeline=SWITCHED),
                      rec(200, "deploy.rolled_back", "m/3", reason="error_rate")]
    numbers = delivery_kpis(records, "m")
    assert numbers["deployments"] == 2 and numbers["rollbacks"] == 1 and numbers["automatic_rollbacks"] == 1
    assert numbers["success_rate"] == 2 / 3 and numbers["recoveries"] == 1
    assert numbers["mttd_s"] == 40 and numbers["mttr_s"] == 90


def test_version_no_retrain_made_has_no_recovery():
    assert recovery_for(LOOP, "m", "1", serving_at=at(10)) is None


def test_retrain_no_alert_started_has_no_recovery():
    manual = [r for r in LOOP if r["action"] != "monitor.drift.detected"]
    assert recovery_for(manual, "m", "2", serving_at=at(190)) is None


def test_recovery_counts_from_the_last_alert_before_the_retrain():
    records = LOOP[:3] + [rec(101, "monitor.performance.degraded", "m/1")] + LOOP[3:]
    recovery = recovery_for(records, "m", "2", serving_at=at(190))
    assert recovery["alert"] == "monitor.performance.degraded" and recovery["mttr_s"] == 89
    assert recovery["mttd_s"] is None  # that alert names no window start


def test_alerts_of_another_model_start_no_loop():
    other = [rec(100, "monitor.drift.detected", "other/1")] + [r for r in LOOP if r["action"] != "monitor.drift.detected"]
    assert recovery_for(other, "m", "2", serving_at=at(190)) is None


def test_redeploy_of_the_serving_version_is_no_deployment():
    records = [rec(0, "deploy.succeeded", "m/1", timeline=SWITCHED),
               rec(10, "deploy.succeeded", "m/1", timeline=[{"step": "already serving"}])]
    numbers = delivery_kpis(records, "m")
    assert numbers["deployments"] == 1 and numbers["deploy_attempts"] == 1 and numbers["success_rate"] == 1.0


def test_manual_rollback_is_a_rollback_but_not_an_automatic_one():
    records = [rec(0, "deploy.succeeded", "m/2", timeline=SWITCHED), rec(60, "deploy.manual_rollback", "m/1")]
    numbers = delivery_kpis(records, "m")
    assert numbers["rollbacks"] == numbers["manual_rollbacks"] == 1 and numbers["automatic_rollbacks"] == 0
    assert numbers["success_rate"] == 1.0  # the deploy itself succeeded


def test_rollback_the_service_degraded_automation_made_counts_as_automatic():
    records = [rec(0, "deploy.succeeded", "m/2", timeline=SWITCHED), rec(60, "deploy.automatic_rollback", "m/1")]
    numbers = delivery_kpis(records, "m")
    assert numbers["rollbacks"] == numbers["automatic_rollbacks"] == 1 and numbers["manual_rollbacks"] == 0


def test_kpis_of_one_model_leave_the_others_out_and_none_counts_all():
    records = [rec(0, "deploy.succeeded", "m/1", timeline=SWITCHED), rec(10, "deploy.succeeded", "mx/1", timeline=SWITCHED),
               rec(20, "deploy.rolled_back", "other/2")]
    assert delivery_kpis(records, "m")["deployments"] == 1  # "mx" is another model, not a version of "m"
    everything = delivery_kpis(records, None)
    assert everything["deployments"] == 2 and everything["rollbacks"] == 1


def test_deployment_frequency_is_per_day_of_the_ledger_span():
    records = [{"time": f"2026-01-0{day}T10:00:00+00:00", "action": "deploy.succeeded", "subject": "m/1",
                "details": {"timeline": SWITCHED}} for day in (1, 3, 5)]
    assert delivery_kpis(records, "m")["deployments_per_day"] == pytest.approx(3 / 4)


def test_empty_ledger_gives_zero_counts_and_no_rates():
    numbers = delivery_kpis([], None)
    assert numbers["deployments"] == numbers["rollbacks"] == numbers["recoveries"] == 0
    assert numbers["success_rate"] is None and numbers["mttd_s"] is None and numbers["mttr_s"] is None
