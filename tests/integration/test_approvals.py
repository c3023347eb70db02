"""Production waits for a person: a promote run suspended for approval is decided from the shell
(`modelyard approve|reject`) by enrolled approvers with one-time codes, times out into a refusal
recorded by the reconciler, and refuses the author (four-eyes) and a wrong code while it keeps
waiting. One model is trained for the module; each test after the first asks again (seconds)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from modelyard.approvals import Enrolment, enrol, enrolment, record_expired_approvals
from modelyard.catalog import Action
from modelyard.cli.approvals import register
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources import get_resources
from tests.support.promotion import SuspendedPromotion, flow_run_state, promote_to_suspended, request_again
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

MODEL = "approvals-cli"
TIMEOUT_S = 45  # long enough for one decision per request, short enough to wait out once
APPROVAL_TAG = "modelyard.approval.production"


@pytest.fixture(scope="module")
def first(stack_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> SuspendedPromotion:
    return promote_to_suspended(stack_env, tmp_path_factory.mktemp("approvals"), MODEL, approval_timeout_s=TIMEOUT_S)


@pytest.fixture(scope="module")
def cli(stack_env: Stack):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(arg) for arg in args])


def _approver(stack: Stack, identity: str) -> Enrolment:
    return enrolment(stack.settings, identity) or enrol(stack.settings, identity, team="risk-approvers")[0]


def _records(stack: Stack, flow_run_id: str, action: Action | None = None) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records()
            if str((r.get("details") or {}).get("flow_run_id")) == flow_run_id and action in (None, r["action"])]


def _production_versions(name: str) -> list:
    return get_resources().registry.search_model_versions(f"name='{name}-production'")


def test_an_approval_not_given_in_time_refuses_the_promotion(stack_env: Stack, first: SuspendedPromotion, cli):
    run = first.flow_run_id
    # Prefect's pause-expiry service fails the run once its deadline passes; the reconciler records it.
    wait_until(lambda: flow_run_state(stack_env, run) == "FAILED", TIMEOUT_S + 30, "the suspended run expired")
    record_expired_approvals(stack_env.settings)
    assert record_expired_approvals(stack_env.settings) == []  # exactly once, whoever ran first
    timed_out = _records(stack_env, run, Action.APPROVAL_TIMED_OUT)
    refused = _records(stack_env, run, Action.PROMOTION_REFUSED)
    assert len(timed_out) == 1 and len(refused) == 1, (timed_out, refused)
    assert refused[0]["details"]["reason"] == f"no approval within {TIMEOUT_S} s"
    assert timed_out[0]["subject"] == f"{first.source_model}/1" and timed_out[0]["details"]["given"] == []
    assert _production_versions(first.name) == []
    late = cli("approve", first.source_model, "1", "--env", "production", "--as", "ivy", "--code", "123456")
    assert late.exit_code == 1 and "expired" in late.output, late.output


def test_a_wrong_code_is_refused_and_the_promotion_still_waits(stack_env: Stack, first: SuspendedPromotion, cli):
    pending = request_again(stack_env, first)
    ivy = _approver(stack_env, "ivy")
    wrong = "000000" if ivy.totp().now() != "000000" else "111111"
    result = cli("approve", first.source_model, "1", "--env", "production", "--as", "ivy", "--code", wrong)
    assert result.exit_code == 1 and "wrong or expired" in result.output, result.output
    refusal = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REFUSED)[-1]
    assert refusal["details"]["identity"] == "ivy" and refusal["details"]["kind"] == "bad_code"
    assert wrong not in json.dumps(refusal)
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) == "PAUSED", 60, "the run waits again")
    listed = cli("approvals", "--json")
    assert pending.flow_run_id in [json.loads(line)["flow_run_id"] for line in listed.output.splitlines()]


def test_the_author_approving_is_refused_by_four_eyes_and_it_still_waits(stack_env: Stack, first, cli):
    pending = request_again(stack_env, first)
    author = pending.request["details"]["author"]
    code = _approver(stack_env, author).totp().now()
    result = cli("approve", first.source_model, "1", "--env", "production", "--as", author, "--code", code,
                 "--comment", "my own work")
    assert result.exit_code == 1 and "four-eyes" in result.output, result.output
    refusal = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REFUSED)[-1]
    assert (refusal["details"]["identity"], refusal["details"]["kind"]) == (author, "four_eyes")
    assert not _records(stack_env, pending.flow_run_id, Action.APPROVAL_GIVEN)
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) == "PAUSED", 60, "the run waits again")
    assert _production_versions(first.name) == []


def test_a_rejection_refuses_the_promotion_and_copies_nothing(stack_env: Stack, first: SuspendedPromotion, cli):
    pending = request_again(stack_env, first)
    code = _approver(stack_env, "ivy").totp().now()
    result = cli("reject", first.source_model, "1", "--env", "production", "--as", "ivy", "--code", code,
                 "--comment", "recall below target")
    assert result.exit_code == 0 and "rejected" in result.output, result.output
    rejected = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REJECTED)
    assert [(r["details"]["identity"], r["details"]["comment"]) for r in rejected] == [("ivy", "recall below target")]
    refused = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.PROMOTION_REFUSED), 60,
                         "promotion.refused after the rejection")
    assert "rejected by ivy" in refused[-1]["details"]["reason"]
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) in ("FAILED", "COMPLETED"), 60, "the run ended")
    assert _production_versions(first.name) == []
    tag = get_resources().registry.get_model_version(first.source_model, "1").tags[APPROVAL_TAG]
    assert "recall below target" in tag and "reject" in tag


def test_an_approval_from_the_shell_copies_and_deploys_into_production(stack_env: Stack, first, cli, tmp_path):
    pending = request_again(stack_env, first, requested_by="ops-lead")
    jon = _approver(stack_env, "jon")
    secret_file = tmp_path / "jon.otpauth"  # what the approver keeps: the URI their app scanned
    secret_file.write_text(jon.provisioning_uri())
    result = cli("approve", MODEL, "1", "--env", "production", "--as", "Jon", "--secret-file", secret_file,
                 "--comment", "metrics hold on every slice")  # the dev name: resolved through the origin
    assert result.exit_code == 0 and "approved" in result.output and pending.url in result.output, result.output
    given = _records(stack_env, pending.flow_run_id, Action.APPROVAL_GIVEN)
    assert [(r["details"]["identity"], r["details"]["comment"]) for r in given] == [
        ("jon", "metrics hold on every slice")]
    copied = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.PROMOTION_COPIED), 120,
                        "promotion.copied")[-1]
    target = copied["subject"]
    assert target.startswith(f"{MODEL}-production/")
    wait_until(lambda: any(r["action"] == Action.DEPLOY_SUCCEEDED and r["subject"] == target
                           for r in ledger_from_settings(stack_env.settings).records()), 240, f"deploy.succeeded {target}")
    tag = json.loads(get_resources().registry.get_model_version(first.source_model, "1").tags[APPROVAL_TAG])
    assert [(d["identity"], d["decision"], d["comment"]) for d in tag["decisions"]] == [
        ("jon", "approve", "metrics hold on every slice")]
    assert pending.flow_run_id not in cli("approvals", "--json").output
    assert "code" not in given[0]["details"]  # the one-time code was never recorded
