"""Governance on the real stack, one model through its environments, tests in order.

Promotion: a dev version that serves is copied into staging by itself (the deploy.succeeded event
→ promote), served at staging's own endpoint with the same signed files; its promotion into
production suspends for approval and copies nothing; a spec policy that denies, or does not parse,
refuses the promotion with its reason; a newer request supersedes the pending one.

Approval: a promote run suspended for approval is decided from the shell (`modelyard
approve|reject`) and in the real Prefect UI's form by enrolled approvers with one-time codes,
times out into a refusal recorded by the reconciler, and refuses the author (four-eyes) and a
wrong code while it keeps waiting.

One model is trained for the module (its chain dev → staging → suspended takes minutes); each
test after the promotion tests asks again through the promote deployment (seconds).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import typer
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from modelyard.approvals import Enrolment, enrol, enrolment, record_expired_approvals
from modelyard.catalog import TAG_ARTIFACT_SHA256, Action
from modelyard.cli.approvals import register
from modelyard.cli.stack import Stack
from modelyard.environments import (
    TAG_AUTHOR, TAG_ENVIRONMENT, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_TEAM,
)
from modelyard.ledger import ledger_from_settings
from modelyard.resources import get_resources
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from modelyard.signing import TAG_SIGNATURE_SHA256, TAG_SIGNER
from tests.integration.test_ui_browser import CHROMIUM_FLAGS, _chromium
from tests.support.promotion import (
    ALLOW_ALL, SuspendedPromotion, flow_run_state, promote_to_suspended, request_again,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

NAME = MODEL = "gov-bc"
STAGING = f"{NAME}-staging"
PRODUCTION = f"{NAME}-production"
# Long enough for the promotion tests and one decision per request, short enough to wait out once.
TIMEOUT_S = 45
APPROVAL_TAG = "modelyard.approval.production"


@pytest.fixture(scope="module")
def suspended(stack_env: Stack, tmp_path_factory) -> SuspendedPromotion:
    return promote_to_suspended(stack_env, tmp_path_factory.mktemp("governance"), NAME, approval_timeout_s=TIMEOUT_S)


@pytest.fixture(scope="module")
def cli(stack_env: Stack):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(arg) for arg in args])


def _actions(stack: Stack, subject: str) -> list[str]:
    return [r["action"] for r in ledger_from_settings(stack.settings).records(subject=subject)]


def _production_versions(stack: Stack) -> list:
    try:
        return registry_client(stack.settings).search_model_versions(f"name='{PRODUCTION}'")
    except MlflowException:
        return []


def test_a_serving_dev_version_is_copied_into_staging_and_served_there(stack_env: Stack, suspended):
    client = registry_client(stack_env.settings)
    dev, staging = client.get_model_version(NAME, "1"), client.get_model_version(STAGING, "1")

    assert staging.run_id == dev.run_id  # the same run: its spec, card and evidence
    assert staging.tags[TAG_ARTIFACT_SHA256] == dev.tags[TAG_ARTIFACT_SHA256]
    assert staging.tags[TAG_SIGNER] == dev.tags[TAG_SIGNER]
    assert staging.tags[TAG_SIGNATURE_SHA256] == dev.tags[TAG_SIGNATURE_SHA256]
    assert staging.tags["modelyard.data_fingerprint"] == dev.tags["modelyard.data_fingerprint"]
    assert (staging.tags[TAG_ENVIRONMENT], staging.tags[TAG_SOURCE_MODEL], staging.tags[TAG_SOURCE_VERSION],
            staging.tags[TAG_ORIGIN]) == ("staging", NAME, "1", f"{NAME}/1")
    assert staging.tags[TAG_TEAM] == "governance-tests" == client.get_registered_model(STAGING).tags[TAG_TEAM]
    assert staging.tags[TAG_AUTHOR] == "modelyard-service"

    serving = ServingState(stack_env.settings.state_dir)
    staging_endpoint, dev_endpoint = serving.active_record(STAGING)["endpoint"], serving.active_record(NAME)["endpoint"]
    assert staging_endpoint != dev_endpoint
    answer = httpx.get(f"{staging_endpoint}/version", timeout=5).json()
    assert answer["version"] == "1"

    assert {Action.PROMOTION_REQUESTED, Action.POLICY_DECIDED} <= set(_actions(stack_env, f"{NAME}/1"))
    decided = [r for r in ledger_from_settings(stack_env.settings).records(subject=f"{NAME}/1")
               if r["action"] == Action.POLICY_DECIDED]
    assert decided[-1]["details"]["environment"] == "staging" and decided[-1]["details"]["allowed"] is True
    assert {Action.PROMOTION_COPIED, Action.DEPLOY_SUCCEEDED} <= set(_actions(stack_env, f"{STAGING}/1"))


def test_promotion_into_production_waits_for_approval_and_copies_nothing(stack_env: Stack, suspended):
    details = suspended.request["details"]

    assert flow_run_state(stack_env, suspended.flow_run_id) == "PAUSED"
    assert details["environment"] == "production" and details["required"] == 1
    assert suspended.flow_run_id in suspended.url
    assert datetime.fromisoformat(suspended.deadline) > datetime.now(UTC)
    assert details["evidence"]["signature"]["valid"] is True
    assert details["evidence"]["evaluation"]["champion"] is None  # production has no champion yet
    assert len(details["evidence_sha256"]) == 64
    assert _production_versions(stack_env) == []


def _promote_into_production(policy: Path, source: str) -> tuple[str, dict]:
    """Run promote in this process with production's policy file set to ``source``; the refusal."""
    from flows.promote import promote

    policy.write_text(source)
    try:
        with pytest.raises(Exception) as raised:
            promote(STAGING, "1", to="production", requested_by="ops-lead")
    finally:
        policy.write_text(ALLOW_ALL)
    return str(raised.value), raised


def _last_refusal(stack: Stack) -> dict:
    return [r for r in ledger_from_settings(stack.settings).records(subject=f"{STAGING}/1")
            if r["action"] == Action.PROMOTION_REFUSED][-1]


def test_a_spec_policy_denial_refuses_the_promotion_with_its_rule(stack_env: Stack, suspended):
    message, _ = _promote_into_production(suspended.policy_path, (
        'package modelyard.spec\n\nimport rego.v1\n\n'
        'deny contains {"rule": "change_freeze", "reason": "production is frozen for the audit"} if true\n'))

    assert "change_freeze" in message and "production is frozen" in message
    refusal = _last_refusal(stack_env)
    assert "change_freeze" in refusal["details"]["rules"]
    assert "production is frozen for the audit" in refusal["details"]["reason"]
    assert _production_versions(stack_env) == []
    assert flow_run_state(stack_env, suspended.flow_run_id) == "PAUSED"  # a refusal supersedes nothing


def test_a_policy_that_does_not_parse_stops_the_promotion_with_a_clear_error(stack_env: Stack, suspended):
    message, _ = _promote_into_production(suspended.policy_path, "package modelyard.spec\n\ndeny contains if {\n")

    assert "does not compile" in message and "production.rego" in message
    refusal = _last_refusal(stack_env)
    assert refusal["details"]["rules"] == ["policy_error"]
    assert _production_versions(stack_env) == []


def test_a_new_request_supersedes_the_pending_one(stack_env: Stack, suspended):
    from tests.support.promotion import request_again

    newer = request_again(stack_env, suspended, requested_by="ops-lead")

    assert newer.flow_run_id != suspended.flow_run_id
    assert flow_run_state(stack_env, newer.flow_run_id) == "PAUSED"
    superseded = [r for r in ledger_from_settings(stack_env.settings).records(subject=f"{STAGING}/1")
                  if r["action"] == Action.APPROVAL_SUPERSEDED]
    assert [(r["details"]["flow_run_id"], r["details"]["superseded_by"]) for r in superseded] == \
        [(suspended.flow_run_id, newer.flow_run_id)]
    assert flow_run_state(stack_env, suspended.flow_run_id) == "CANCELLED"
    assert newer.request["details"]["requested_by"] == "ops-lead"
    assert _production_versions(stack_env) == []


def _approver(stack: Stack, identity: str) -> Enrolment:
    return enrolment(stack.settings, identity) or enrol(stack.settings, identity, team="governance-tests")[0]


def _records(stack: Stack, flow_run_id: str, action: Action | None = None) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records()
            if str((r.get("details") or {}).get("flow_run_id")) == flow_run_id and action in (None, r["action"])]


def test_an_approval_not_given_in_time_refuses_the_promotion(stack_env: Stack, suspended: SuspendedPromotion, cli):
    run = request_again(stack_env, suspended).flow_run_id
    # Prefect's pause-expiry service fails the run once its deadline passes; the reconciler records it.
    wait_until(lambda: flow_run_state(stack_env, run) == "FAILED", TIMEOUT_S + 30, "the suspended run expired")
    record_expired_approvals(stack_env.settings)
    assert record_expired_approvals(stack_env.settings) == []  # exactly once, whoever ran first
    timed_out = _records(stack_env, run, Action.APPROVAL_TIMED_OUT)
    refused = _records(stack_env, run, Action.PROMOTION_REFUSED)
    assert len(timed_out) == 1 and len(refused) == 1, (timed_out, refused)
    assert refused[0]["details"]["reason"] == f"no approval within {TIMEOUT_S} s"
    assert timed_out[0]["subject"] == f"{suspended.source_model}/1" and timed_out[0]["details"]["given"] == []
    assert _production_versions(stack_env) == []
    late = cli("approve", suspended.source_model, "1", "--env", "production", "--as", "ivy", "--code", "123456")
    assert late.exit_code == 1 and "expired" in late.output, late.output


def test_a_wrong_code_is_refused_and_the_promotion_still_waits(stack_env: Stack, suspended: SuspendedPromotion, cli):
    pending = request_again(stack_env, suspended)
    ivy = _approver(stack_env, "ivy")
    wrong = "000000" if ivy.totp().now() != "000000" else "111111"
    result = cli("approve", suspended.source_model, "1", "--env", "production", "--as", "ivy", "--code", wrong)
    assert result.exit_code == 1 and "wrong or expired" in result.output, result.output
    refusal = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REFUSED)[-1]
    assert refusal["details"]["identity"] == "ivy" and refusal["details"]["kind"] == "bad_code"
    assert wrong not in json.dumps(refusal)
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) == "PAUSED", 60, "the run waits again")
    listed = cli("approvals", "--json")
    assert pending.flow_run_id in [json.loads(line)["flow_run_id"] for line in listed.output.splitlines()]


def test_the_author_approving_is_refused_by_four_eyes_and_it_still_waits(stack_env: Stack, suspended, cli):
    pending = request_again(stack_env, suspended)
    author = pending.request["details"]["author"]
    code = _approver(stack_env, author).totp().now()
    result = cli("approve", suspended.source_model, "1", "--env", "production", "--as", author, "--code", code,
                 "--comment", "my own work")
    assert result.exit_code == 1 and "four-eyes" in result.output, result.output
    refusal = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REFUSED)[-1]
    assert (refusal["details"]["identity"], refusal["details"]["kind"]) == (author, "four_eyes")
    assert not _records(stack_env, pending.flow_run_id, Action.APPROVAL_GIVEN)
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) == "PAUSED", 60, "the run waits again")
    assert _production_versions(stack_env) == []


def test_a_rejection_refuses_the_promotion_and_copies_nothing(stack_env: Stack, suspended: SuspendedPromotion, cli):
    pending = request_again(stack_env, suspended)
    code = _approver(stack_env, "ivy").totp().now()
    result = cli("reject", suspended.source_model, "1", "--env", "production", "--as", "ivy", "--code", code,
                 "--comment", "recall below target")
    assert result.exit_code == 0 and "rejected" in result.output, result.output
    rejected = _records(stack_env, pending.flow_run_id, Action.APPROVAL_REJECTED)
    assert [(r["details"]["identity"], r["details"]["comment"]) for r in rejected] == [("ivy", "recall below target")]
    refused = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.PROMOTION_REFUSED), 60,
                         "promotion.refused after the rejection")
    assert "rejected by ivy" in refused[-1]["details"]["reason"]
    wait_until(lambda: flow_run_state(stack_env, pending.flow_run_id) in ("FAILED", "COMPLETED"), 60, "the run ended")
    assert _production_versions(stack_env) == []
    tag = get_resources().registry.get_model_version(suspended.source_model, "1").tags[APPROVAL_TAG]
    assert "recall below target" in tag and "reject" in tag


@pytest.mark.browser
def test_an_approver_approves_in_the_prefect_ui_form_and_the_version_reaches_production(
        stack_env: Stack, suspended: SuspendedPromotion, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    settings = stack_env.settings
    pending = request_again(stack_env, suspended)
    approver = enrolment(settings, "uma") or enrol(settings, "uma", team="governance-tests")[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{settings.prefect_ui_url}/runs", wait_until="domcontentloaded")
            login = page.get_by_placeholder("admin:pass")  # Prefect's UI asks for the API auth string
            expect(login).to_be_visible(timeout=60_000)
            login.fill(settings.prefect_auth())
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_role("button", name="Login")).to_be_hidden(timeout=60_000)
            page.goto(pending.url, wait_until="domcontentloaded")  # the link `modelyard approvals` prints
            page.get_by_role("button", name="Resume").first.click()
            form = page.locator(".p-modal")
            # The evidence is the form's description, rendered as markdown above the fields.
            expect(form.get_by_text(f"Promote {pending.source_model} v1 into production")).to_be_visible(timeout=30_000)
            expect(form.get_by_text("Signature", exact=False).first).to_be_visible()
            expect(form.get_by_text("Evaluation", exact=False).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "form.png"))

            def field(label: str):
                name = page.locator(".schema-form-property__label", has_text=re.compile(rf"^{label}( \(Optional\))?$"))
                return form.locator(".schema-form-property").filter(has=name)

            field("Approver").locator("textarea").fill("uma")
            decision = field("Decision").locator("button.p-select-button__control")
            decision.focus()
            page.keyboard.press("ArrowDown")  # the select opens from the keyboard
            page.locator(".p-select-option", has_text=re.compile(r"^approve$")).click()
            expect(decision).to_have_text(re.compile("approve"))
            field("Comment").locator("textarea").fill("evidence reviewed in the UI")
            field("Code").locator("textarea").fill(approver.totp().now())
            page.screenshot(path=str(tmp_path / "filled.png"))
            form.get_by_role("button", name="Submit").click()
            expect(form).to_be_hidden(timeout=30_000)
        finally:
            browser.close()

    given = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.APPROVAL_GIVEN), 120, "approval.given")
    assert (given[0]["details"]["identity"], given[0]["details"]["comment"]) == ("uma", "evidence reviewed in the UI")
    copied = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.PROMOTION_COPIED), 120,
                        "promotion.copied")
    model, _, version = copied[-1]["subject"].rpartition("/")
    assert model == f"{MODEL}-production"
    assert get_resources().registry.get_model_version(model, version).tags[TAG_SOURCE_MODEL] == pending.source_model


def test_an_approval_from_the_shell_copies_and_deploys_into_production(stack_env: Stack, suspended, cli, tmp_path):
    pending = request_again(stack_env, suspended, requested_by="ops-lead")
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
    tag = json.loads(get_resources().registry.get_model_version(suspended.source_model, "1").tags[APPROVAL_TAG])
    assert [(d["identity"], d["decision"], d["comment"]) for d in tag["decisions"]] == [
        ("jon", "approve", "metrics hold on every slice")]
    assert pending.flow_run_id not in cli("approvals", "--json").output
    assert "code" not in given[0]["details"]  # the one-time code was never recorded
