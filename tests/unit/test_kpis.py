"""KPIs from ledger records alone: deployments and their success rate, lead time, rollbacks (by
themselves or by hand), and for a version an alert caused, the detection and recovery times; cut
per model, team and environment; the audit pass rate; production evidence; % monitored."""

from __future__ import annotations

from datetime import datetime

import pytest

from modelyard.evidence import Lineage, evidence_completeness, evidence_rate
from modelyard.kpi_snapshot import build_snapshot, monitoring_coverage
from modelyard.kpis import Scope, audit_pass_rate, kpi_cuts, lead_times
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


# --- lead time, cuts per model / team / environment, audit pass rate -----------------------------



def switched(t: int) -> list[dict]:
    return [{"step": "started", "at": at(t - 5)}, {"step": "switched", "at": at(t), "weights": {"x": 100}}]


def test_lead_time_runs_from_the_alias_set_to_the_switch_at_100_percent():
    records = [rec(0, "model.promoted", "m/1", alias="champion"), rec(2, "deploy.started", "m/1"),
               rec(31, "deploy.succeeded", "m/1", timeline=switched(30))]
    (lead,) = lead_times(records)
    assert lead["from"] == "model.promoted" and lead["lead_time_s"] == 30
    assert delivery_kpis(records, "m")["lead_time_s"] == 30


def test_lead_time_counts_from_the_bridge_event_or_else_the_deploy_start():
    bridged = [rec(1, "registry.event.emitted", "mlflow.model.m.version.2", alias="champion", name="m", version="2"),
               rec(3, "deploy.started", "m/2"), rec(21, "deploy.succeeded", "m/2", timeline=switched(20))]
    assert lead_times(bridged)[0]["lead_time_s"] == 19 and lead_times(bridged)[0]["from"] == "registry.event.emitted"
    reconciled = [rec(10, "deploy.started", "m/3"), rec(51, "deploy.succeeded", "m/3", timeline=switched(50))]
    assert lead_times(reconciled)[0]["lead_time_s"] == 40 and lead_times(reconciled)[0]["from"] == "deploy.started"


def test_lead_time_ignores_an_alias_set_after_the_deploy_started_and_another_versions_alias():
    records = [rec(0, "model.promoted", "m/1"), rec(5, "model.promoted", "m/9"), rec(10, "deploy.started", "m/2"),
               rec(12, "model.promoted", "m/2"), rec(40, "deploy.succeeded", "m/2", timeline=switched(40))]
    assert lead_times(records)[0]["lead_time_s"] == 30  # from deploy.started: the promotion came after it


def test_redeploy_and_rollout_without_switch_have_no_lead_time():
    records = [rec(0, "deploy.started", "m/1"),
               rec(5, "deploy.succeeded", "m/1", timeline=[{"step": "already serving", "at": at(5)}]),
               rec(9, "deploy.rolled_back", "m/2", timeline=[{"step": "gate failed", "at": at(8)}])]
    assert lead_times(records) == [] and delivery_kpis(records)["lead_time_s"] is None


TEAMS = {"fraud": "risk-ml", "churn": "growth"}
FLEET = [
    rec(0, "model.promoted", "fraud/1"), rec(1, "deploy.started", "fraud/1"),
    rec(11, "deploy.succeeded", "fraud/1", timeline=switched(11)),
    rec(20, "promotion.copied", "fraud-staging/1"), rec(21, "deploy.started", "fraud-staging/1"),
    rec(41, "deploy.succeeded", "fraud-staging/1", timeline=switched(40)),
    rec(50, "deploy.started", "fraud-production/1"),
    rec(60, "deploy.rolled_back", "fraud-production/1", reason="canary gate failed"),
    rec(70, "deploy.manual_rollback", "fraud-staging/1"),
    rec(80, "deploy.succeeded", "churn/4", timeline=switched(79)),
    rec(90, "deploy.succeeded", "orphan/1", timeline=switched(90)),
]


def test_kpis_are_cut_per_model_team_and_environment():
    assert delivery_kpis(FLEET, "fraud")["deployments"] == 2  # the spec name covers every environment
    assert delivery_kpis(FLEET, "fraud-staging")["deployments"] == 1
    staging = delivery_kpis(FLEET, environment="staging", teams=TEAMS)
    assert staging["deployments"] == 1 and staging["manual_rollbacks"] == 1 and staging["lead_time_s"] == 20
    production = delivery_kpis(FLEET, environment="production", teams=TEAMS)
    assert production["deployments"] == 0 and production["success_rate"] == 0 and production["automatic_rollbacks"] == 1
    risk = delivery_kpis(FLEET, team="risk-ml", teams=TEAMS)
    assert risk["deployments"] == 2 and risk["deploy_attempts"] == 3 and risk["success_rate"] == pytest.approx(2 / 3)
    assert delivery_kpis(FLEET, team="growth", teams=TEAMS)["deployments"] == 1
    assert delivery_kpis(FLEET, team="unassigned", teams=TEAMS)["deployments"] == 1  # no tag, no spec: unassigned
    assert delivery_kpis(FLEET, "fraud", environment="dev", teams=TEAMS)["lead_time_s"] == 11


def test_cuts_give_one_row_per_registered_model_team_and_environment():
    cuts = kpi_cuts(FLEET, TEAMS)
    rows = {row["registered"]: row for row in cuts["model"]}
    assert set(rows) == {"fraud", "fraud-staging", "fraud-production", "churn", "orphan"}
    assert (rows["fraud-production"]["model"], rows["fraud-production"]["environment"],
            rows["fraud-production"]["team"]) == ("fraud", "production", "risk-ml")
    assert rows["fraud"]["deployments"] == 1  # dev only: the other environments have their own rows
    assert {row["team"]: row["deployments"] for row in cuts["team"]} == {"growth": 1, "risk-ml": 2, "unassigned": 1}
    assert {row["environment"]: row["deployments"] for row in cuts["environment"]} == {
        "dev": 3, "production": 0, "staging": 1}


def test_audit_pass_rate_is_passed_runs_of_all_runs():
    records = [rec(0, "audit.verified", "ledger", ok=True, records=10, problem=None),
               rec(60, "audit.verified", "ledger", ok=False, records=4, problem="line 5: edited"),
               rec(120, "audit.verified", "ledger", ok=True, records=12, problem=None)]
    rate = audit_pass_rate(records)
    assert rate["audit_runs"] == 3 and rate["audit_passed"] == 2 and rate["audit_pass_rate"] == pytest.approx(2 / 3)
    assert rate["audit_last_ok"] is True
    assert audit_pass_rate([])["audit_pass_rate"] is None  # no run yet: unknown, not 0 %


# --- evidence completeness ---------------------------------------------------------------------

SIGNED = {"modelyard.signature.signer": "k1", "modelyard.signature.sha256": "ab" * 32}
LINEAGE = Lineage("fraud-production", "1", {**SIGNED, "modelyard.origin": "fraud/3",
                                            "modelyard.source_model": "fraud-staging", "modelyard.source_version": "2"})
EVIDENCE = [
    {**rec(0, "data.validated", "fraud", fingerprint="f1", success=True), "seq": 1},
    {**rec(1, "model.registered", "fraud/3", data_fingerprint="f1"), "seq": 2},
    {**rec(2, "model.evaluated", "fraud/3", passed=True), "seq": 3},
    {**rec(3, "policy.decided", "fraud-staging/2", environment="production", allowed=True), "seq": 4},
    {**rec(4, "approval.given", "fraud-production/1", environment="production", identity="alice"), "seq": 5},
    {**rec(5, "deploy.succeeded", "fraud-production/1", timeline=switched(5)), "seq": 6},
]


def test_production_version_with_every_record_in_its_lineage_is_complete():
    evidence = evidence_completeness(LINEAGE, EVIDENCE)
    assert evidence.complete and evidence.missing == []
    assert evidence.found["registered"] == 2 and evidence.found["policy_allowed"] == 4 and evidence.found["signature"]


def test_missing_evidence_is_listed_per_version():
    denied = [r if r["action"] != "policy.decided" else {**r, "details": {"environment": "production",
                                                                         "decision": {"allowed": False}}}
              for r in EVIDENCE if r["action"] not in ("approval.given",)]
    other_data = [r if r["action"] != "data.validated" else {**r, "details": {"fingerprint": "other"}} for r in denied]
    unsigned = Lineage("fraud-production", "1", {k: v for k, v in LINEAGE.tags.items() if k not in SIGNED})
    evidence = evidence_completeness(unsigned, other_data)
    assert evidence.missing == ["signature", "data_validated", "policy_allowed", "approved"]
    assert not evidence.complete


def test_evidence_of_another_version_does_not_count():
    lonely = Lineage("fraud-production", "7", SIGNED)  # no lineage tags: only its own subject
    evidence = evidence_completeness(lonely, EVIDENCE)
    assert evidence.missing == ["registered", "data_validated", "evaluated", "policy_allowed", "approved", "deployed"]
    rate = evidence_rate([evidence_completeness(LINEAGE, EVIDENCE), evidence])
    assert rate == {"production_versions": 2, "evidence_complete": 1, "evidence_rate": 0.5}


# --- % of serving models monitored -----------------------------------------------------------------

def test_serving_model_is_monitored_with_an_active_schedule_and_a_run_within_two_intervals():
    now = 10_000.0
    coverage = monitoring_coverage(
        ["a", "b", "c", "d", "e"],
        {"a": {"active": True, "interval_s": 300}, "b": {"active": True, "interval_s": 300},
         "c": {"active": False, "interval_s": 300}, "e": {"active": True, "interval_s": 300}},
        {"a": now - 599, "b": now - 601, "c": now - 10, "d": now - 10}, now)
    verdicts = {row["model"]: (row["monitored"], row["reason"]) for row in coverage["models"]}
    assert verdicts["a"] == (True, None)
    assert not verdicts["b"][0] and "601 s ago" in verdicts["b"][1]
    assert verdicts["c"] == (False, "monitor schedule paused")
    assert verdicts["d"] == (False, "no monitor schedule")
    assert verdicts["e"] == (False, "no completed monitor run")
    assert coverage["monitored_rate"] == 0.2
    assert monitoring_coverage([], {}, {}, now)["monitored_rate"] is None


def test_snapshot_scoped_to_a_team_keeps_only_its_models():
    snapshot = build_snapshot(FLEET, Scope(team="risk-ml"), TEAMS, serving=["fraud", "churn"],
                              monitor_state=({"fraud": {"active": True, "interval_s": 60}}, {"fraud": 100.0}),
                              now=150.0)
    assert snapshot.delivery["deployments"] == 2
    assert {row["registered"] for row in snapshot.cuts["model"]} == {"fraud", "fraud-staging", "fraud-production"}
    assert [row["model"] for row in snapshot.monitoring["models"]] == ["fraud"]
    assert snapshot.monitoring["monitored_rate"] == 1.0


def test_mttd_and_mttr_come_from_incidents_once_they_are_recorded():
    opened = rec(100, "incident.opened", "m/1", incident="inc-1", kind="drift", model="m", version="1",
                 first_signal_at="2026-01-01T00:01:00+00:00", alert="monitor.drift.detected")
    resolved = rec(190, "incident.resolved", "m/2", incident="inc-1", by="recovery", how="v2 at 100%")
    other = rec(150, "incident.opened", "other/1", incident="inc-2", kind="service", model="other", version="1",
                first_signal_at="2026-01-01T00:02:00+00:00", alert="monitor.service.degraded")
    numbers = delivery_kpis(LOOP + [opened, other, resolved], "m")
    assert numbers["mttd_source"] == "incidents" and numbers["incidents"] == 1
    assert numbers["mttd_s"] == 40 and numbers["mttr_s"] == 90  # signal 60 s → opened 100 s → resolved 190 s
    assert numbers["incidents_open"] == 0 and numbers["incidents_resolved"] == 1
    assert delivery_kpis(LOOP, "m")["mttd_source"] == "closed loops"  # none recorded: the closed loops stand in
