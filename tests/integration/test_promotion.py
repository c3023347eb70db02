"""Promotion through environments on the real stack: a dev version that serves is copied into
staging by itself (the deploy.succeeded event → promote), served at staging's own endpoint with
the same signed files; its promotion into production suspends for approval and copies nothing;
a spec policy that denies, or does not parse, refuses the promotion with its reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from mlflow.exceptions import MlflowException

from modelyard.catalog import TAG_ARTIFACT_SHA256, Action
from modelyard.cli.stack import Stack
from modelyard.environments import (
    TAG_AUTHOR, TAG_ENVIRONMENT, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_TEAM,
)
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from modelyard.signing import TAG_SIGNATURE_SHA256, TAG_SIGNER
from tests.support.promotion import ALLOW_ALL, SuspendedPromotion, flow_run_state, promote_to_suspended

pytestmark = pytest.mark.stack

NAME = "promo-bc"
STAGING = f"{NAME}-staging"
PRODUCTION = f"{NAME}-production"


@pytest.fixture(scope="module")
def suspended(stack_env: Stack, tmp_path_factory) -> SuspendedPromotion:
    return promote_to_suspended(stack_env, tmp_path_factory.mktemp("promotion"), NAME)


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
