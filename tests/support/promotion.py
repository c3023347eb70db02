"""Reaching a promotion into production that waits for approval, for the promotion and approval tests.

Written early on purpose (helper H1, issue #14): the approval tests (approve, reject, timeout,
four-eyes, the UI form) start from the state this module makes, so its interface stays put:

- ``promotion_spec(directory, name, ...)`` writes a test spec (breast cancer, quiet, blue/green)
  with dev → staging (automatic) → production (approval) and a production spec policy file
  ``production.rego`` beside it that allows (a test may rewrite it to deny or to not compile).
- ``promote_to_suspended(stack, directory, name, ...)`` trains v1 with the model pipeline and lets
  the real chain run: the champion alias deploys dev, the ``deploy.succeeded`` event starts
  ``promote`` (copy into ``<name>-staging``), its champion alias deploys staging, and the next
  ``promote`` suspends, waiting for approval. Returns a ``SuspendedPromotion`` once that run is
  PAUSED and its ``approval.requested`` is in the ledger (about 2-3 minutes on a quiet machine).
- ``request_again(stack, suspended, requested_by=...)`` starts one more ``promote`` of the same
  staging version into production through the deployment (as ``modelyard promote`` does) and
  returns the new ``SuspendedPromotion``; the older pending request is superseded (its run is
  cancelled, ``approval.superseded`` recorded). Seconds, not minutes: no training, no deploy.

The returned request is the ledger's ``approval.requested`` record; ``flow_run_id``, ``deadline``
and ``url`` come from its details.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard.catalog import Action
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from tests.support.stacks import prefect_client, quiet
from tests.support.waits import wait_until

SPECS = Path(__file__).resolve().parents[2] / "specs"
ALLOW_ALL = "package modelyard.spec\n\nimport rego.v1\n\ndeny := set()\n"


@dataclass(frozen=True)
class SuspendedPromotion:
    """A promote run of ``<name>-staging`` v``version`` into production, suspended for approval."""

    name: str  # the spec's (dev) model name
    source_model: str  # <name>-staging
    source_version: str
    flow_run_id: str
    deadline: str
    url: str
    request: dict[str, Any]  # the approval.requested ledger record
    spec_path: Path
    policy_path: Path  # production's spec policy (allows until a test rewrites it)


def promotion_spec(directory: Path, name: str, *, approvals: int = 1, approval_timeout_s: int = 600,
                   approvers: list[str] | None = None, production_policy: str = ALLOW_ALL) -> Path:
    """A quiet breast-cancer spec named ``name`` with dev → staging → production, all blue/green."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = name
    spec["team"] = "governance-tests"
    spec["serving"] = {"strategy": "blue_green"}
    spec["environments"] = {
        "dev": {},
        "staging": {"promotion": "automatic", "strategy": "blue_green"},
        "production": {"promotion": "approval", "approvals": approvals, "approval_timeout_s": approval_timeout_s,
                       "approvers": approvers or [], "strategy": "blue_green", "policy": "production.rego"},
    }
    quiet(spec, keep_environments=True)
    (directory / "production.rego").write_text(production_policy)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def approval_request(stack: Stack, source_model: str, version: str, after_flow_runs: set[str] = frozenset()) -> dict | None:
    """The newest ``approval.requested`` of ``source_model``/``version`` not made by one of ``after_flow_runs``."""
    records = ledger_from_settings(stack.settings).records(subject=f"{source_model}/{version}")
    found = [r for r in records if r["action"] == Action.APPROVAL_REQUESTED
             and r["details"].get("flow_run_id") not in after_flow_runs]
    return found[-1] if found else None


def flow_run_state(stack: Stack, flow_run_id: str) -> str | None:
    """The Prefect state type of a flow run (PAUSED while it waits for approval)."""
    from uuid import UUID

    with prefect_client(stack.settings) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return None if state is None else str(state.type.value)


def _suspended(stack: Stack, name: str, source_model: str, version: str, spec_path: Path,
               timeout_s: float, after: set[str] = frozenset()) -> SuspendedPromotion:
    request = wait_until(lambda: approval_request(stack, source_model, version, after), timeout_s,
                         f"approval.requested for {source_model}/{version} into production")
    flow_run_id = request["details"]["flow_run_id"]
    wait_until(lambda: flow_run_state(stack, flow_run_id) == "PAUSED", 60, f"promote run {flow_run_id} suspended")
    return SuspendedPromotion(name, source_model, version, flow_run_id, request["details"]["deadline"],
                              request["details"]["url"], request, spec_path, spec_path.parent / "production.rego")


def promote_to_suspended(stack: Stack, directory: Path, name: str, timeout_s: float = 420,
                         **spec_options: Any) -> SuspendedPromotion:
    """Train ``name`` v1 and wait until its staging copy's promotion into production is suspended
    (``spec_options`` go to ``promotion_spec``). Needs ``stack_env`` (flows run in this process)."""
    from flows.pipeline import model_pipeline

    spec_path = promotion_spec(directory, name, **spec_options)
    result = model_pipeline(str(spec_path))
    assert result["champion"] == result["version"] == "1", result
    return _suspended(stack, name, f"{name}-staging", "1", spec_path, timeout_s)


def request_again(stack: Stack, suspended: SuspendedPromotion, requested_by: str | None = None,
                  timeout_s: float = 120) -> SuspendedPromotion:
    """Another promote run of the same staging version into production, through the deployment."""
    from modelyard.catalog import PROMOTE_DEPLOYMENT
    from modelyard.cli.runs import run_deployment_and_wait

    earlier = {r["details"].get("flow_run_id") for r in ledger_from_settings(stack.settings).records(
        subject=f"{suspended.source_model}/{suspended.source_version}") if r["action"] == Action.APPROVAL_REQUESTED}
    run_deployment_and_wait(stack.settings, PROMOTE_DEPLOYMENT, {  # timeout 0: started, not awaited
        "model": suspended.source_model, "version": suspended.source_version, "to": "production",
        "requested_by": requested_by}, timeout_s=0)
    return _suspended(stack, suspended.name, suspended.source_model, suspended.source_version, suspended.spec_path,
                      timeout_s, earlier)
