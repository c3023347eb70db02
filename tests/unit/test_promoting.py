"""The promote flow's plain logic (tasks/promoting.py, and the deploy event in tasks/deploying.py):
where a version goes next, when it may go, what a re-run reuses from the ledger, what an
approver reads and what the policy is asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.catalog import Action, Event
from modelyard.policy import DEFAULT_ORG_POLICY, Approval, Denial, PolicyDecision, load_policy, evaluate
from modelyard.spec import parse_spec
from tasks.deploying import deployed_event, promotes_onwards
from tasks.promoting import (
    Evidence, PromotionPlan, PromotionRefused, PromotionStopped, Tally, approval_deadline, blocking, evidence_markdown,
    find_record, needs_approval, policy_input, recorded_outcome, seconds_left, serving_problem, target_environment,
)

WHEN = "2026-12-01T09:30:00+00:00"


def spec(environments: dict | None = None):
    raw = {"name": "churn", "team": "retention", "task": "binary_classification",
           "data": {"source": "sklearn:breast_cancer", "target": "target"}, "metrics": {"primary": "roc_auc"},
           "policy": {"allow_any": True}}
    if environments is not None:
        raw["environments"] = environments
    return parse_spec(raw)


THREE = {"dev": {}, "staging": {"promotion": "automatic"},
         "production": {"promotion": "approval", "approvals": 2, "policy": "prod.rego"}}


def plan(target_env: str = "production", **environments) -> PromotionPlan:
    chosen = spec(environments or THREE)
    return PromotionPlan(model="churn", source_model="churn-staging", version="3", source_env="staging",
                         target_env=target_env, target_model=f"churn-{target_env}", spec=chosen, author="alice",
                         origin="churn/5", digest="ab" * 32)


def evidence(**changes) -> Evidence:
    base = dict(
        signature={"valid": True, "signer": "3f9a" * 8, "reason": "digest and signature verified"},
        evaluation={"metric": "roc_auc", "candidate": 0.97, "champion": 0.95, "champion_version": "2",
                    "higher_is_better": True, "holdout_rows": 143,
                    "candidate_metrics": {"roc_auc": 0.97, "accuracy": 0.93},
                    "champion_metrics": {"roc_auc": 0.95, "accuracy": 0.92},
                    "slices": [{"slice": "region", "value": "eu", "rows": 60, "candidate": 0.96, "champion": 0.9}]},
        evaluation_note="against churn-production v2 on the same 143-row holdout",
        validation="passed: 40/40 expectations (run abc)", drift="no drift or data alert recorded on churn-staging",
        open_alerts=[], model_card_url="http://mlflow/get-artifact?path=model_card.md",
        compliance={"html_url": "http://mlflow/c.html", "json_url": "http://mlflow/c.json"})
    return Evidence(**(base | changes))


# -- where a version goes -------------------------------------------------------------------------


def test_the_next_environment_is_the_default_target():
    assert target_environment(spec(THREE), "dev", None) == "staging"
    assert target_environment(spec(THREE), "staging", None) == "production"


def test_a_manual_next_environment_stops_an_automatic_promotion_but_not_an_explicit_one():
    manual = spec({"dev": {}, "production": {"promotion": "manual"}})

    with pytest.raises(PromotionStopped, match="manual.*modelyard promote churn <version> --to production"):
        target_environment(manual, "dev", None)
    assert target_environment(manual, "dev", "production") == "production"


def test_the_last_environment_has_nothing_to_promote_into():
    with pytest.raises(PromotionStopped, match="last environment"):
        target_environment(spec(THREE), "production", None)
    with pytest.raises(PromotionStopped, match="last environment"):
        target_environment(spec(), "dev", None)  # a spec without environments: dev only


@pytest.mark.parametrize("to, message", [
    ("qa", "to: 'qa' is not one of dev, staging, production"),
    ("production", "production does not receive versions from dev"),
    ("dev", "dev does not receive versions from dev"),
])
def test_a_target_out_of_order_is_refused(to, message):
    with pytest.raises(PromotionRefused, match=message):
        target_environment(spec(THREE), "dev", to)


def test_a_target_the_spec_does_not_have_is_refused():
    with pytest.raises(PromotionRefused, match="environment 'staging' is not in its spec"):
        target_environment(spec({"dev": {}, "production": {}}), "dev", "staging")


def test_only_the_serving_champion_is_promoted():
    assert serving_problem("3", "3", "serving", True) is None
    assert "not the champion" in serving_problem("3", "4", "serving", True)
    assert "champion is unset" in serving_problem("3", None, None, False)
    assert "never proven serving" in serving_problem("3", "3", "serving", False)
    assert "not serving (deploy status: rolled_back)" in serving_problem("3", "3", "rolled_back", True)


def test_the_spec_policy_is_found_beside_the_spec():
    chosen = plan()
    chosen = PromotionPlan(**{**chosen.__dict__, "spec": chosen.spec.model_copy(update={"base_dir": Path("/specs")})})

    assert chosen.spec_policy == Path("/specs/prod.rego")
    assert plan("staging").spec_policy is None


# -- the deploy event -----------------------------------------------------------------------------


def test_a_deploy_offers_the_version_onwards_only_into_an_automatic_or_approval_environment():
    three = spec(THREE)
    assert promotes_onwards(three, "churn") and promotes_onwards(three, "churn-staging")
    assert not promotes_onwards(three, "churn-production")
    assert not promotes_onwards(spec({"dev": {}, "staging": {"promotion": "manual"}}), "churn")
    assert not promotes_onwards(spec(), "churn") and not promotes_onwards(None, "churn")


def test_the_deploy_event_names_the_model_version_and_environment():
    event = deployed_event("churn-staging", "3", promote=True)

    assert event["event"] == Event.DEPLOY_SUCCEEDED
    assert event["resource"] == {
        "prefect.resource.id": "modelyard.model.churn-staging", "prefect.resource.name": "churn-staging",
        "modelyard.model": "churn-staging", "modelyard.version": "3", "modelyard.environment": "staging",
        "modelyard.promote": "true"}
    assert deployed_event("churn", "3", promote=False)["resource"]["modelyard.promote"] == "false"


# -- what a re-run reuses -------------------------------------------------------------------------


def record(action, flow_run_id, key=None, **details):
    return {"action": str(action), "subject": "churn-staging/3",
            "details": {"flow_run_id": flow_run_id, **({"key": key} if key else {}), **details}}


def test_a_record_is_found_by_action_flow_run_and_key():
    records = [record(Action.APPROVAL_REQUESTED, "run-a"), record(Action.APPROVAL_GIVEN, "run-a", "approval-0"),
               record(Action.APPROVAL_GIVEN, "run-b", "approval-0"), record(Action.POLICY_DECIDED, "run-a", stage="precheck")]

    assert find_record(records, Action.APPROVAL_REQUESTED, "run-a") == records[0]
    assert find_record(records, Action.APPROVAL_GIVEN, "run-b", "approval-0") == records[2]
    assert find_record(records, Action.APPROVAL_GIVEN, "run-a", "approval-1") is None
    assert find_record(records, Action.POLICY_DECIDED, "run-a", stage="final") is None
    assert find_record(records, Action.POLICY_DECIDED, "run-a", stage="precheck") == records[3]


def test_an_answered_approval_key_is_read_back_whatever_its_outcome():
    records = [record(Action.APPROVAL_REFUSED, "run-a", "approval-0", identity="alice", kind="four_eyes"),
               record(Action.APPROVAL_REJECTED, "run-a", "approval-1", identity="bob")]

    assert recorded_outcome(records, "run-a", "approval-0")["action"] == Action.APPROVAL_REFUSED
    assert recorded_outcome(records, "run-a", "approval-1")["action"] == Action.APPROVAL_REJECTED
    assert recorded_outcome(records, "run-a", "approval-2") is None


def test_the_tally_counts_distinct_approvers_and_stops_at_a_rejection():
    given = lambda who: record(Action.APPROVAL_GIVEN, "r", identity=who, decision="approve", comment="", time=WHEN)  # noqa: E731
    tally = Tally().add(given("bob")).add(record(Action.APPROVAL_REFUSED, "r", identity="eve"))

    assert not tally.done(2) and tally.approvers() == {"bob"}
    assert tally.add(given("carol")).done(2)
    rejected = tally.add(record(Action.APPROVAL_REJECTED, "r", identity="dan", decision="reject", comment="no", time=WHEN))
    assert rejected.done(5) and rejected.rejection["identity"] == "dan"
    assert [a.decision for a in rejected.as_policy()] == ["approve", "reject"]


def test_the_deadline_is_fixed_and_the_time_left_never_reaches_zero():
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    deadline = approval_deadline(600, now)

    assert deadline == "2026-12-01T09:10:00+00:00"
    assert seconds_left(deadline, now + timedelta(seconds=100)) == 500
    assert seconds_left(deadline, now + timedelta(hours=1)) == 1


# -- evidence and policy --------------------------------------------------------------------------


def test_the_evidence_shows_metrics_against_the_champion_slices_and_links():
    text = evidence_markdown(plan(), evidence(), required=2, deadline="2026-12-02T09:00:00+00:00")

    assert "Promote churn-staging v3 into production" in text and "author **alice**" in text
    assert "**2** approval(s)" in text and "2026-12-02T09:00:00+00:00" in text
    assert "| roc_auc **(primary)** | 0.9700 | 0.9500 |" in text
    assert "| region | eu | 60 | 0.9600 | 0.9000 |" in text
    assert "passed: 40/40" in text and "http://mlflow/c.html" in text and "model_card.md" in text
    assert "**Signature**: valid" in text


def test_missing_evidence_is_said_not_hidden():
    text = evidence_markdown(plan(), evidence(evaluation=None, evaluation_note="no evaluation: boom",
                                              compliance={"error": "compliance report unavailable: x"},
                                              signature={"valid": False, "signer": None, "reason": "tampered"},
                                              open_alerts=[{"kind": "drift", "opened_at": WHEN}]), 1, None)

    assert "**Signature**: INVALID" in text and "tampered" in text
    assert "No evaluation" in text and "compliance report unavailable: x" in text
    assert f"drift (since {WHEN})" in text


def test_evidence_digest_changes_with_what_it_says():
    assert evidence().sha256() == Evidence.from_dict(evidence().as_dict()).sha256()
    assert evidence().sha256() != evidence(drift="drifted").sha256()


def test_the_policy_input_carries_the_author_requester_and_evidence():
    request = policy_input(plan(), evidence(open_alerts=[{"kind": "drift", "opened_at": WHEN}]),
                           [Approval("bob", "approve", "ok", WHEN)], "carol")

    document = request.as_dict()
    assert (document["model"], document["environment"], document["author"], document["requested_by"]) == \
        ("churn-production", "production", "alice", "carol")
    assert document["evaluation"] == {"metric": "roc_auc", "candidate": 0.97, "champion": 0.95, "higher_is_better": True}
    assert document["open_alerts"] == [{"kind": "drift", "opened_at": WHEN}]
    assert document["extra"]["origin"] == "churn/5"
    assert policy_input(plan(), evidence(evaluation=None), [], None).evaluation is None


def test_only_four_eyes_waits_for_approvers_every_other_denial_refuses_at_once():
    org = load_policy(DEFAULT_ORG_POLICY)
    no_approval = evaluate(policy_input(plan(), evidence(), [], None), org)
    drifted = evaluate(policy_input(plan(), evidence(open_alerts=[{"kind": "drift", "opened_at": WHEN}]), [], None), org)

    assert [d.rule for d in no_approval.denials] == ["four_eyes"] and blocking(no_approval) == []
    assert needs_approval(plan(), no_approval)
    assert [b.split(":")[0] for b in blocking(drifted)] == ["org/open_alerts"]
    manual = plan(dev={}, production={"promotion": "manual"})
    assert needs_approval(manual, no_approval)  # a manual promotion into production still needs four-eyes
    allowed = PolicyDecision(True, (), (), {}, "0" * 64, 0.0)
    assert not needs_approval(plan("staging"), allowed)
    assert blocking(PolicyDecision(False, (Denial("spec", "freeze", "frozen"),), (), {}, "0" * 64, 0.0)) == \
        ["spec/freeze: frozen"]


# -- `modelyard promote --wait` ---------------------------------------------------------------------


def test_the_cli_follows_a_run_by_its_own_records():
    from modelyard.cli.promote import deploy_outcome, run_record

    records = [record(Action.PROMOTION_COPIED, "run-a"), record(Action.PROMOTION_REFUSED, "run-b", reason="no")]
    records[0]["subject"] = "churn-production/1"
    records.append({"action": str(Action.DEPLOY_SUCCEEDED), "subject": "churn-production/1", "details": {}})

    assert run_record(records, "run-a", (Action.PROMOTION_COPIED,))["subject"] == "churn-production/1"
    assert run_record(records, "run-a", (Action.PROMOTION_REFUSED,)) is None
    assert run_record(records, "run-b", (Action.PROMOTION_REFUSED,))["details"]["reason"] == "no"
    assert deploy_outcome(records, "churn-production/1")["action"] == Action.DEPLOY_SUCCEEDED
    assert deploy_outcome(records, "churn-production/2") is None


def test_the_cli_refuses_a_bad_environment_or_identity_before_starting_anything():
    import typer
    from typer.testing import CliRunner

    from modelyard.cli.promote import register

    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)
    runner = CliRunner()

    bad_env = runner.invoke(app, ["promote", "churn", "1", "--to", "qa"])
    bad_identity = runner.invoke(app, ["promote", "churn", "1", "--as", "not an identity!"])

    assert bad_env.exit_code == 2 and "--to: 'qa' is not one of dev, staging, production" in bad_env.output
    assert bad_identity.exit_code == 2 and "--as" in bad_identity.output
