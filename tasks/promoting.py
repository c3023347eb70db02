"""The promote flow's steps: a version serving in one environment copied into the next one's
registered model (MLflow's guidance: ``copy_model_version``), after the organisation's policy and
the spec's allow it and, where the environment asks, enough people other than its author approve.

A suspended flow run is re-run from the top when it resumes (Prefect), so every step here is
idempotent per flow run: a record already in the ledger for this run (and approval key) is reused,
never appended twice, and an approval input already judged is never judged again (its one-time
code would be refused as a replay). What approvers saw (the evidence) is fixed at the first pass
and recorded with the approval request; the decision at the end is taken on that evidence, with
the approvals given and the alerts open at that moment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from modelyard.audit import append_audit_record
from modelyard.catalog import CHAMPION, TAG_ARTIFACT_SHA256, TAG_DEPLOY_DETAIL, TAG_DEPLOY_STATUS, TAG_SPEC_DIR, Action
from modelyard.environments import (
    ENVIRONMENTS, TAG_AUTHOR, TAG_ENVIRONMENT, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_TEAM,
    environment_model, split_environment,
)
from modelyard.policy import (
    ALERT_KINDS, DEFAULT_ORG_POLICY, Alert, Approval, Evaluation, PolicyDecision, PolicyError, PromotionInput,
    Signature, decide,
)
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, alias_version, artifact_url, set_alias, version_spec
from modelyard.settings import Settings
from modelyard.spec import EnvironmentSpec, ModelSpec, SpecError
from tasks.model_pipeline import SERVICE_AUTHOR

TAG_PROMOTION_RUN = "modelyard.promotion.flow_run_id"  # on a copy: the promote run that made it (re-runs reuse it)
TAG_VALIDATION = "modelyard.validation"
APPROVAL_TAG = "modelyard.approval.{env}"
POLICY_TAG = "modelyard.policy.{env}"
FOUR_EYES = "four_eyes"
MODEL_CARD_ARTIFACT = "model_card.md"


class PromotionRefused(RuntimeError):
    """The promotion may not go ahead; ``reason`` says why (and ``rules``, the policy rules that failed)."""

    def __init__(self, reason: str, rules: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rules = rules


class PromotionStopped(Exception):
    """Nothing to promote automatically (a ``manual`` next environment, or none): not an error."""


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionPlan:
    """One version of one registered model going into the next environment's registered model."""

    model: str  # the spec's (dev) name
    source_model: str
    version: str
    source_env: str
    target_env: str
    target_model: str
    spec: ModelSpec
    author: str
    origin: str  # <dev model>/<dev version>
    digest: str | None

    @property
    def subject(self) -> str:
        return f"{self.source_model}/{self.version}"

    @property
    def environment(self) -> EnvironmentSpec:
        return self.spec.environment(self.target_env)

    @property
    def spec_policy(self) -> Path | None:
        """The target environment's own Rego policy, relative to the spec's directory."""
        policy = self.environment.policy
        return None if policy is None else (Path(self.spec.base_dir) / policy)


def target_environment(spec: ModelSpec, source_env: str, to: str | None) -> str:
    """Where a version serving in ``source_env`` goes: the next environment of the spec. Without
    ``to``, a ``manual`` next environment (or none) stops (PromotionStopped); a ``to`` that is not
    that next environment is refused."""
    following = spec.next_environment(source_env)
    if to is None:
        if following is None:
            raise PromotionStopped(f"{spec.name}: {source_env} is its last environment; nothing to promote into")
        if spec.environment(following).promotion == "manual":
            raise PromotionStopped(f"{spec.name}: promotion into {following} is manual; run "
                                   f"`modelyard promote {environment_model(spec.name, source_env)} <version> --to {following}`")
        return following
    if to not in ENVIRONMENTS:
        raise PromotionRefused(f"to: {to!r} is not one of {', '.join(ENVIRONMENTS)}")
    if to not in spec.environments:
        raise PromotionRefused(f"{spec.name}: environment {to!r} is not in its spec "
                               f"(environments: {', '.join(spec.environments)})")
    if to != following:
        raise PromotionRefused(f"{spec.name}: {to} does not receive versions from {source_env} "
                               f"(the next environment after {source_env} is {following or 'none'})")
    return to


def serving_problem(version: str, champion: str | None, deploy_status: str | None, deployed: bool) -> str | None:
    """Why a source version may not be promoted yet (None: it is its environment's champion and serves)."""
    if champion != version:
        return f"v{version} is not the champion of its environment (the champion is {'v' + champion if champion else 'unset'})"
    if not deployed:
        return f"v{version} has no deploy.succeeded record: it was never proven serving"
    if deploy_status != "serving":
        return f"v{version} is not serving (deploy status: {deploy_status or 'none'})"
    return None


def resolve_plan(client, records: list[dict], source_model: str, version: str, to: str | None) -> PromotionPlan:
    """The plan of promoting ``source_model`` v``version``; PromotionRefused (or PromotionStopped) saying why not."""
    model, source_env = split_environment(source_model)
    try:
        spec = version_spec(client, source_model, version, strict=True)
    except SpecError as error:
        raise PromotionRefused(f"{source_model} v{version}: its spec does not validate: {error}") from error
    if spec is None:
        raise PromotionRefused(f"{source_model} v{version} carries no spec: it cannot be promoted")
    if spec.name != model:
        raise PromotionRefused(f"{source_model} v{version} was built from spec {spec.name!r}, not {model!r}")
    if source_env not in spec.environments:
        raise PromotionRefused(f"{spec.name}: environment {source_env!r} is not in its spec")
    mv = client.get_model_version(source_model, version)
    spec = spec.model_copy(update={"base_dir": Path(mv.tags[TAG_SPEC_DIR]) if mv.tags.get(TAG_SPEC_DIR) else Path(".")})
    target_env = target_environment(spec, source_env, to)
    deployed = any(r["action"] == Action.DEPLOY_SUCCEEDED and r["subject"] == f"{source_model}/{version}" for r in records)
    problem = serving_problem(str(version), alias_version(client, source_model, CHAMPION),
                              mv.tags.get(TAG_DEPLOY_STATUS), deployed)
    if problem is not None:
        raise PromotionRefused(f"{source_model}: {problem}; only the serving champion is promoted")
    return PromotionPlan(model=model, source_model=source_model, version=str(version), source_env=source_env,
                         target_env=target_env, target_model=environment_model(model, target_env), spec=spec,
                         author=mv.tags.get(TAG_AUTHOR) or SERVICE_AUTHOR,
                         origin=mv.tags.get(TAG_ORIGIN) or f"{source_model}/{version}",
                         digest=mv.tags.get(TAG_ARTIFACT_SHA256))


# -- the ledger, once per flow run ----------------------------------------------------------------


def find_record(records: Iterable[Mapping[str, Any]], action: Action, flow_run_id: str,
                key: str | None = None, **details: Any) -> dict | None:
    """The last record of ``action`` this flow run (and approval ``key``, and ``details``) wrote."""
    found = None
    for record in records:
        d = record.get("details") or {}
        if (record.get("action") == action and str(d.get("flow_run_id")) == flow_run_id
                and (key is None or d.get("key") == key) and all(d.get(k) == v for k, v in details.items())):
            found = dict(record)
    return found


def record_once(action: Action, subject: str, details: dict[str, Any], key: str | None = None,
                match: Mapping[str, Any] | None = None) -> dict:
    """Append ``action`` unless this flow run already did (for ``key``, ``match``): a resumed run
    re-runs every step and must not say anything twice."""
    found = find_record(get_resources().ledger.records(), action, str(details["flow_run_id"]), key, **(match or {}))
    if found is not None:
        return found
    return append_audit_record(action, subject, details | ({"key": key} if key is not None else {}))


# -- evidence -------------------------------------------------------------------------------------


@dataclass
class Evidence:
    """What a policy and an approver decide on: everything known about the version against the
    target environment's champion."""

    signature: dict[str, Any]  # valid, signer, reason
    evaluation: dict[str, Any] | None  # metric, candidate, champion, champion_version, higher_is_better, metrics, slices
    evaluation_note: str
    validation: str | None
    drift: str
    open_alerts: list[dict[str, Any]]  # kind, opened_at, summary
    model_card_url: str | None
    compliance: dict[str, Any]  # html_url, json_url, or error
    links: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str, allow_nan=False))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Evidence:
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__ if k in raw})

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def signature_status(settings: Settings, model: str, version: str) -> dict[str, Any]:
    """Whether the version's files hash to their recorded digest and their signature verifies
    against the trusted keys, as the inference server checks them. Any failure is an invalid
    signature with its reason, never an exception that skips the check."""
    try:
        from deployments.server.main import registered_digest, resolve_model_dir
        from modelyard.signing import verify_model_dir

        uri = f"models:/{model}/{version}"
        _, _, expected = registered_digest(uri, settings)
        if expected is None:
            return {"valid": False, "signer": None, "reason": f"no recorded artifact sha256 ({TAG_ARTIFACT_SHA256})"}
        directory = resolve_model_dir(uri, settings, expected)
        info = verify_model_dir(settings, directory, f"{model}/{version}")
        return {"valid": True, "signer": info.signer, "reason": "digest and signature verified"}
    except Exception as error:  # noqa: BLE001 - fail closed: anything but a verified signature is invalid
        return {"valid": False, "signer": None, "reason": f"{type(error).__name__}: {error}"[:500]}


def evaluate_against_champion(settings: Settings, client, plan: PromotionPlan) -> tuple[dict[str, Any] | None, str]:
    """The candidate and the target environment's champion scored on the same holdout (the spec's
    split of its data), loaded as their servers load them. None, with why, when it cannot be done:
    a policy then sees no evaluation (production denies)."""
    from tasks.evaluation import higher_is_better, model_metrics, slice_metrics
    from tasks.model_pipeline import prepare_spec_data
    from tasks.registry import load_version
    from tasks.training import model_inputs

    spec = plan.spec
    try:
        prepared = prepare_spec_data(spec)
        inputs = model_inputs(prepared.holdout, prepared.features)
        y_true = prepared.holdout[spec.data.target]
        candidate = load_version(settings, plan.source_model, plan.version)
        candidate_metrics = model_metrics(candidate, inputs, y_true, spec.is_classification)
        champion_version = alias_version(client, plan.target_model, CHAMPION)
        champion_metrics, champion_slices = None, []
        if champion_version is not None:
            champion = load_version(settings, plan.target_model, champion_version)
            champion_metrics = model_metrics(champion, inputs, y_true, spec.is_classification)
            champion_slices = slice_metrics(prepared.holdout, inputs, y_true, champion, spec.is_classification,
                                            spec.metrics.slices, spec.metrics.primary)
        slices = slice_metrics(prepared.holdout, inputs, y_true, candidate, spec.is_classification,
                               spec.metrics.slices, spec.metrics.primary)
    except Exception as error:  # noqa: BLE001 - fail closed: no evaluation, and why
        return None, f"no evaluation: {type(error).__name__}: {error}"[:500]
    primary = spec.metrics.primary
    by_slice = {(row["slice"], row["value"]): row.get(primary) for row in champion_slices}
    evaluation = {
        "metric": primary, "candidate": candidate_metrics.get(primary),
        "champion": None if champion_metrics is None else champion_metrics.get(primary),
        "champion_version": champion_version, "higher_is_better": higher_is_better(primary),
        "holdout_rows": len(prepared.holdout), "candidate_metrics": candidate_metrics,
        "champion_metrics": champion_metrics,
        "slices": [{"slice": row["slice"], "value": row["value"], "rows": row["rows"], "candidate": row.get(primary),
                    "champion": by_slice.get((row["slice"], row["value"]))} for row in slices],
    }
    note = (f"against {plan.target_model} v{champion_version} on the same {len(prepared.holdout)}-row holdout"
            if champion_version else f"{plan.target_model} has no champion yet: nothing to beat")
    return evaluation, note


def drift_state(records: list[dict], model: str) -> str:
    """The latest drift or data alert on ``model`` in words (the monitor records only alerts)."""
    alerts = [r for r in records if r["action"] in (Action.MONITOR_DRIFT, Action.MONITOR_INVALID_DATA)
              and r["subject"].rpartition("/")[0] == model]
    if not alerts:
        return f"no drift or data alert recorded on {model}"
    last = alerts[-1]
    return f"last {last['action']} on {last['subject']} at {last['time']}: {(last['details'] or {}).get('reason', '')}"[:400]


def open_alerts(records: list[dict], model: str) -> list[dict[str, Any]]:
    """The model's open incidents a policy sees as alerts (kinds drift, data, performance, service)."""
    from modelyard.incidents import open_incidents

    return [{"kind": i.kind, "opened_at": i.opened_at, "summary": getattr(i, "summary", "")}
            for i in open_incidents(records, model) if i.kind in ALERT_KINDS]


def compliance_links(model: str, version: str, env: str | None) -> dict[str, Any]:
    """The version's compliance report (HTML and JSON in MLflow); its failure is shown, never blocks."""
    try:
        from tasks.compliance import publish_compliance_report

        report = publish_compliance_report(model, version, env)
        return {"html_url": report.get("html_url"), "json_url": report.get("json_url")}
    except Exception as error:  # noqa: BLE001 - the report is evidence, not a gate
        return {"error": f"compliance report unavailable: {type(error).__name__}: {error}"[:400]}


def gather_evidence(plan: PromotionPlan) -> Evidence:
    resources = get_resources()
    settings, client, records = resources.settings, resources.registry, resources.ledger.records()
    signature = signature_status(settings, plan.source_model, plan.version)
    evaluation, note = (evaluate_against_champion(settings, client, plan) if signature["valid"]
                        else (None, "no evaluation: the signature did not verify, the version is not loaded"))
    mv = client.get_model_version(plan.source_model, plan.version)
    return Evidence(
        signature=signature, evaluation=evaluation, evaluation_note=note, validation=mv.tags.get(TAG_VALIDATION),
        drift=drift_state(records, plan.source_model), open_alerts=open_alerts(records, plan.source_model),
        model_card_url=artifact_url(settings.mlflow_url, mv.run_id, MODEL_CARD_ARTIFACT) if mv.run_id else None,
        compliance=compliance_links(plan.source_model, plan.version, plan.source_env),
    )


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def evidence_markdown(plan: PromotionPlan, evidence: Evidence, required: int, deadline: str | None) -> str:
    """The evidence as an approver reads it in the Prefect UI form (and in `modelyard approvals`)."""
    signature = evidence.signature
    lines = [
        f"## Promote {plan.source_model} v{plan.version} into {plan.target_env}",
        f"Copies the version (origin {plan.origin}, author **{plan.author}**, team {plan.spec.team}) into "
        f"`{plan.target_model}` and deploys it there. Needs **{required}** approval(s) by enrolled approvers "
        f"other than the author and the requester" + (f", before {deadline}." if deadline else "."),
        "",
        f"- **Signature**: {'valid' if signature.get('valid') else 'INVALID'}"
        f"{' (signer ' + str(signature.get('signer'))[:16] + ')' if signature.get('signer') else ''}: {signature.get('reason')}",
        f"- **Validation**: {evidence.validation or 'not recorded'}",
        f"- **Drift**: {evidence.drift}",
        "- **Open alerts**: " + (", ".join(f"{a['kind']} (since {a['opened_at']})" for a in evidence.open_alerts)
                                  or "none"),
        f"- **Model card**: {evidence.model_card_url or 'not recorded'}",
        "- **Compliance report**: " + (evidence.compliance.get("error") or
                                       f"{evidence.compliance.get('html_url')} (JSON: {evidence.compliance.get('json_url')})"),
        "",
        f"### Evaluation ({evidence.evaluation_note})",
    ]
    evaluation = evidence.evaluation
    if evaluation is None:
        lines.append("No evaluation: the policy treats this as failing.")
    else:
        metrics = sorted(set(evaluation.get("candidate_metrics") or {}) | set(evaluation.get("champion_metrics") or {}))
        lines += ["| metric | candidate | champion |", "|---|---|---|"]
        for metric in metrics:
            mark = " **(primary)**" if metric == evaluation["metric"] else ""
            lines.append(f"| {metric}{mark} | {_number((evaluation.get('candidate_metrics') or {}).get(metric))} | "
                         f"{_number((evaluation.get('champion_metrics') or {}).get(metric))} |")
        if evaluation.get("slices"):
            lines += ["", f"Slices ({evaluation['metric']}):", "", "| slice | value | rows | candidate | champion |",
                      "|---|---|---|---|---|"]
            lines += [f"| {s['slice']} | {s['value']} | {s['rows']} | {_number(s['candidate'])} | {_number(s['champion'])} |"
                      for s in evaluation["slices"]]
    return "\n".join(lines)


# -- policy ---------------------------------------------------------------------------------------


def policy_input(plan: PromotionPlan, evidence: Evidence, approvals: Iterable[Approval],
                 requested_by: str | None, alerts: list[dict[str, Any]] | None = None) -> PromotionInput:
    """The policy's input document for this promotion."""
    evaluation = evidence.evaluation
    candidate = None if evaluation is None else evaluation.get("candidate")
    return PromotionInput(
        model=plan.target_model, version=plan.version, environment=plan.target_env, author=plan.author,
        requested_by=requested_by,
        signature=Signature(valid=bool(evidence.signature.get("valid")), signer=evidence.signature.get("signer")),
        approvals=tuple(approvals),
        open_alerts=tuple(Alert(kind=a["kind"], opened_at=a["opened_at"])
                          for a in (evidence.open_alerts if alerts is None else alerts)),
        evaluation=None if not isinstance(candidate, int | float) else Evaluation(
            metric=evaluation["metric"], candidate=float(candidate),
            champion=None if evaluation.get("champion") is None else float(evaluation["champion"]),
            higher_is_better=bool(evaluation["higher_is_better"])),
        extra={"team": plan.spec.team, "source_model": plan.source_model, "source_version": plan.version,
               "origin": plan.origin, "source_environment": plan.source_env, "validation": evidence.validation,
               "digest": plan.digest},
    )


def blocking(decision: PolicyDecision) -> list[str]:
    """Denials no approval can lift: all but four-eyes."""
    return [f"{d.policy}/{d.rule}: {d.reason}" for d in decision.denials if d.rule != FOUR_EYES]


def needs_approval(plan: PromotionPlan, decision: PolicyDecision) -> bool:
    """Approval is asked for when the environment says so, or when the policy's only objection is
    that nobody but the author approved (a manual promotion into production)."""
    return plan.environment.promotion == "approval" or (not decision.allowed and not blocking(decision))


def decide_promotion(plan: PromotionPlan, request: PromotionInput) -> PolicyDecision:
    """The org policy's decision (and the target environment's own policy's)."""
    return decide(request, DEFAULT_ORG_POLICY, plan.spec_policy)


# -- approvals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """The approval outcomes of one flow run so far."""

    given: tuple[dict, ...] = ()  # VerifiedApproval.as_record()
    rejection: dict | None = None

    def approvers(self) -> set[str]:
        return {a["identity"] for a in self.given}

    def done(self, required: int) -> bool:
        return self.rejection is not None or len(self.approvers()) >= required

    def add(self, record: Mapping[str, Any]) -> Tally:
        details = record.get("details") or {}
        decision = {k: details.get(k) for k in ("identity", "decision", "comment", "time")}
        if record.get("action") == Action.APPROVAL_GIVEN:
            return Tally(self.given + (decision,), self.rejection)
        if record.get("action") == Action.APPROVAL_REJECTED:
            return Tally(self.given, decision)
        return self

    def as_policy(self) -> list[Approval]:
        return [Approval(**a) for a in self.given] + ([Approval(**self.rejection)] if self.rejection else [])


def recorded_outcome(records: Iterable[Mapping[str, Any]], flow_run_id: str, key: str) -> dict | None:
    """The judged input of approval ``key`` of this run (given, rejected or refused), if any."""
    for action in (Action.APPROVAL_GIVEN, Action.APPROVAL_REJECTED, Action.APPROVAL_REFUSED):
        found = find_record(records, action, flow_run_id, key)
        if found is not None:
            return found
    return None


def seconds_left(deadline: str, now: datetime | None = None) -> int:
    """Seconds to the deadline, at least 1 (Prefect expires the pause; the reconciler records it)."""
    return max(1, int((datetime.fromisoformat(deadline) - (now or datetime.now(UTC))).total_seconds()))


def approval_deadline(timeout_s: int, now: datetime | None = None) -> str:
    return ((now or datetime.now(UTC)) + timedelta(seconds=timeout_s)).isoformat(timespec="seconds")


def flow_run_link(settings: Settings, flow_run_id: str) -> str:
    """The run in the Prefect UI, where its form is (as ``modelyard.cli.runs.flow_run_url`` writes it)."""
    return f"{settings.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def approval_form(description: str) -> type:
    """The typed form the suspended run waits for, its description the evidence."""
    from modelyard.approvals import ApprovalForm

    return ApprovalForm.with_initial_data(description=description)


def _cancel_flow_run(flow_run_id: str, message: str) -> None:
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(flow_run_id), Cancelled(message=message), force=True)


def supersede_pending(plan: PromotionPlan, flow_run_id: str) -> list[dict]:
    """Older pending approval requests of the same model into the same environment cancelled and
    recorded superseded: only the newest version waits for people."""
    from modelyard.approvals import open_requests

    written = []
    for request in open_requests(get_resources().ledger.records()):
        if (request.environment != plan.target_env or request.flow_run_id == flow_run_id
                or split_environment(request.model)[0] != plan.model):
            continue
        try:
            _cancel_flow_run(request.flow_run_id, f"superseded by {plan.subject} (flow run {flow_run_id})")
        except Exception as error:  # noqa: BLE001 - the run may be gone; the request is superseded all the same
            get_run_logger().warning("could not cancel superseded run %s: %s", request.flow_run_id, error)
        written.append(append_audit_record(Action.APPROVAL_SUPERSEDED, request.subject, {
            "environment": plan.target_env, "flow_run_id": request.flow_run_id, "superseded_by": flow_run_id,
            "by": plan.subject}))
    return written


def publish_decisions(client, plan: PromotionPlan, name: str, tag: str, payload: Any) -> None:
    """A decision on the source version (an MLflow tag, a compact summary) and its run (``<name>``, in full)."""
    summary = json.dumps(payload, sort_keys=True, default=str)
    client.set_model_version_tag(plan.source_model, plan.version, tag, summary[:4900])
    run_id = client.get_model_version(plan.source_model, plan.version).run_id
    if run_id:
        client.log_dict(run_id, payload, name)


# -- the copy -------------------------------------------------------------------------------------


def copied_version(client, target_model: str, flow_run_id: str) -> str | None:
    """The copy this flow run already made into ``target_model`` (a re-run reuses it)."""
    try:
        versions = client.search_model_versions(f"name='{target_model}'")
    except Exception:  # noqa: BLE001 - no registered model yet: no copy
        return None
    return next((str(v.version) for v in versions if (v.tags or {}).get(TAG_PROMOTION_RUN) == flow_run_id), None)


def copy_into_environment(client, plan: PromotionPlan, flow_run_id: str) -> str:
    """The version copied into the target environment's registered model with its lineage,
    digest and signature tags and where it came from; its champion alias set (which deploys it)."""
    version = copied_version(client, plan.target_model, flow_run_id)
    if version is None:
        copy = client.copy_model_version(f"models:/{plan.source_model}/{plan.version}", plan.target_model)
        version = str(copy.version)
        source_tags = client.get_model_version(plan.source_model, plan.version).tags
        tags = {**{k: v for k, v in source_tags.items() if k not in (copy.tags or {})},
                TAG_ENVIRONMENT: plan.target_env, TAG_SOURCE_MODEL: plan.source_model, TAG_SOURCE_VERSION: plan.version,
                TAG_ORIGIN: plan.origin, TAG_TEAM: plan.spec.team, TAG_AUTHOR: plan.author,
                TAG_PROMOTION_RUN: flow_run_id}
        for key, value in tags.items():
            client.set_model_version_tag(plan.target_model, version, key, value)
        for key in (TAG_DEPLOY_STATUS, TAG_DEPLOY_DETAIL):  # the source's serving, not the copy's
            if key in (copy.tags or {}):
                client.delete_model_version_tag(plan.target_model, version, key)
        client.set_registered_model_tag(plan.target_model, TAG_TEAM, plan.spec.team)
        client.set_registered_model_tag(plan.target_model, TAG_ENVIRONMENT, plan.target_env)
    if alias_version(client, plan.target_model, CHAMPION) != version:
        set_alias(client, plan.target_model, CHAMPION, version)
    return version


# -- Prefect task wrappers ------------------------------------------------------------------------


def check_requester(requested_by: str | None) -> str | None:
    """Who asked (an approver-style identity, compared without case), or None for automation."""
    from modelyard.approvals import check_identity

    return None if requested_by is None or not requested_by.strip() else check_identity(requested_by, "requested_by")


def refuse(plan_or_subject: PromotionPlan | str, flow_run_id: str, reason: str, environment: str | None,
           rules: Iterable[str] = (), **extra: Any) -> PromotionRefused:
    """``promotion.refused`` recorded once for this run; the exception to raise."""
    subject = plan_or_subject.subject if isinstance(plan_or_subject, PromotionPlan) else plan_or_subject
    record_once(Action.PROMOTION_REFUSED, subject, {"environment": environment, "flow_run_id": flow_run_id,
                                                    "reason": reason[:2000], "rules": list(rules), **extra})
    return PromotionRefused(reason, tuple(rules))


@dataclass(frozen=True)
class Stopped:
    """The promotion stopped without an error (nothing to promote automatically)."""

    why: str


@task(name="promotion-plan", **INFRA_RETRIES)
def plan_task(model: str, version: str, to: str | None, flow_run_id: str) -> PromotionPlan | Stopped:
    """The plan, or the refusal recorded and raised (a manual next environment: Stopped, nothing recorded)."""
    resources = get_resources()
    try:
        return resolve_plan(resources.registry, resources.ledger.records(), model, version, to)
    except PromotionStopped as stopped:
        return Stopped(str(stopped))
    except PromotionRefused as refused:
        raise refuse(f"{model}/{version}", flow_run_id, refused.reason, to) from None


@task(name="already-promoted", **INFRA_RETRIES)
def already_promoted(plan: PromotionPlan, flow_run_id: str) -> str | None:
    """Why an automatic promotion has nothing to do (its origin already champion there, or another
    run already waits for approval of this version); None on a re-run of this flow run."""
    from modelyard.approvals import open_requests

    resources = get_resources()
    records = resources.ledger.records()
    if find_record(records, Action.PROMOTION_REQUESTED, flow_run_id) is not None:
        return None
    champion = alias_version(resources.registry, plan.target_model, CHAMPION)
    if champion is not None and \
            resources.registry.get_model_version(plan.target_model, champion).tags.get(TAG_ORIGIN) == plan.origin:
        return f"{plan.origin} already is {plan.target_model}'s champion (v{champion})"
    waiting = [r for r in open_requests(records) if r.subject == plan.subject and r.environment == plan.target_env]
    if waiting:
        return f"{plan.subject} already waits for approval into {plan.target_env} (flow run {waiting[-1].flow_run_id})"
    return None


@task(name="request-promotion", **INFRA_RETRIES)
def request_promotion(plan: PromotionPlan, flow_run_id: str, requested_by: str | None) -> dict:
    return record_once(Action.PROMOTION_REQUESTED, plan.subject, {
        "environment": plan.target_env, "flow_run_id": flow_run_id, "source": plan.subject,
        "source_model": plan.source_model, "source_version": plan.version, "target_model": plan.target_model,
        "origin": plan.origin, "requested_by": requested_by, "automatic": requested_by is None,
        "author": plan.author})


@task(name="promotion-evidence", **INFRA_RETRIES)
def evidence_task(plan: PromotionPlan, flow_run_id: str) -> Evidence:
    """The evidence: as recorded with this run's approval request when there is one (what the
    approvers saw), else gathered now."""
    requested = find_record(get_resources().ledger.records(), Action.APPROVAL_REQUESTED, flow_run_id)
    if requested is not None and isinstance(requested["details"].get("evidence"), dict):
        return Evidence.from_dict(requested["details"]["evidence"])
    return gather_evidence(plan)


@task(name="policy-decision", **INFRA_RETRIES)
def policy_task(plan: PromotionPlan, evidence: Evidence, flow_run_id: str, requested_by: str | None,
                tally: Tally = Tally(), stage: str = "final", fresh_alerts: bool = False) -> PolicyDecision:
    """The policies' decision, recorded (``policy.decided``, and on the version); a denial no
    approval can lift (or, at the final stage, any denial) and a policy that cannot decide are
    recorded as refusals and raised."""
    resources = get_resources()
    alerts = open_alerts(resources.ledger.records(), plan.source_model) if fresh_alerts else None
    try:
        decision = decide_promotion(plan, policy_input(plan, evidence, tally.as_policy(), requested_by, alerts))
    except (PolicyError, ValueError) as error:
        raise refuse(plan, flow_run_id, f"the policy could not decide (promotions stop until it can): {error}",
                     plan.target_env, ("policy_error",)) from None
    denied = blocking(decision) if stage == "precheck" else \
        [f"{d.policy}/{d.rule}: {d.reason}" for d in decision.denials]
    if stage == "final" or denied:
        record_once(Action.POLICY_DECIDED, plan.subject,
                    {"environment": plan.target_env, "flow_run_id": flow_run_id, "stage": stage,
                     **decision.as_record()}, match={"stage": stage})
        publish_decisions(resources.registry, plan, f"policy/{plan.target_env}.json",
                          POLICY_TAG.format(env=plan.target_env),
                          {"allowed": decision.allowed and not denied, "stage": stage, "flow_run_id": flow_run_id,
                           "denials": [asdict(d) for d in decision.denials], "input_sha256": decision.input_sha256,
                           "policies": list(decision.policies)})
    if denied:
        rules = tuple(sorted({d.rule for d in decision.denials if stage == "final" or d.rule != FOUR_EYES}))
        raise refuse(plan, flow_run_id, f"{plan.subject} may not enter {plan.target_env}: " + "; ".join(denied),
                     plan.target_env, rules, denials=denied)
    return decision


@task(name="request-approval", **INFRA_RETRIES)
def request_approval(plan: PromotionPlan, evidence: Evidence, flow_run_id: str, requested_by: str | None) -> dict:
    """Older pending requests superseded, then ``approval.requested`` (once: its deadline is fixed here)."""
    found = find_record(get_resources().ledger.records(), Action.APPROVAL_REQUESTED, flow_run_id)
    if found is not None:
        return found
    supersede_pending(plan, flow_run_id)
    settings = get_resources().settings
    environment = plan.environment
    return record_once(Action.APPROVAL_REQUESTED, plan.subject, {
        "environment": plan.target_env, "flow_run_id": flow_run_id, "url": flow_run_link(settings, flow_run_id),
        "deadline": approval_deadline(environment.approval_timeout_s), "timeout_s": environment.approval_timeout_s,
        "required": environment.approvals, "approvers": list(environment.approvers), "author": plan.author,
        "requested_by": requested_by, "source_model": plan.source_model, "source_version": plan.version,
        "target_model": plan.target_model, "origin": plan.origin, "evidence_sha256": evidence.sha256(),
        "evidence": evidence.as_dict()})


@task(name="recorded-approval", **INFRA_RETRIES)
def recorded_outcome_task(flow_run_id: str, key: str) -> dict | None:
    return recorded_outcome(get_resources().ledger.records(), flow_run_id, key)


@task(name="judge-approval", **INFRA_RETRIES)
def judge_approval(plan: PromotionPlan, flow_run_id: str, key: str, form: Any, requested_by: str | None,
                   tally: Tally) -> dict:
    """One input judged (authenticated, allowed, four-eyes, not a second vote) and recorded, once."""
    from modelyard.approvals import ApprovalRefused, verify_approval

    recorded = recorded_outcome(get_resources().ledger.records(), flow_run_id, key)
    if recorded is not None:
        return recorded
    resources = get_resources()
    base = {"environment": plan.target_env, "flow_run_id": flow_run_id}
    try:
        verified = verify_approval(resources.settings, form, flow_run_id=flow_run_id, environment=plan.target_env,
                                   allowed=list(plan.environment.approvers),
                                   excluded={plan.author, *([requested_by] if requested_by else [])},
                                   team=plan.spec.team)
        if verified.identity in tally.approvers():
            raise ApprovalRefused(f"{verified.identity} already approved this promotion; another approver is needed",
                                  "duplicate", verified.identity)
    except ApprovalRefused as refused:
        return record_once(Action.APPROVAL_REFUSED, plan.subject, base | refused.as_record(), key)
    action = Action.APPROVAL_GIVEN if verified.decision == "approve" else Action.APPROVAL_REJECTED
    record = record_once(action, plan.subject, base | verified.as_record(), key)
    decisions = [*tally.given, *([tally.rejection] if tally.rejection else []), verified.as_record()]
    publish_decisions(resources.registry, plan, f"approvals/{plan.target_env}.json",
                      APPROVAL_TAG.format(env=plan.target_env), {"flow_run_id": flow_run_id, "decisions": decisions})
    return record


def gather_approvals(plan: PromotionPlan, request: dict, description: str, requested_by: str | None,
                     suspend: Callable[..., Any]) -> Tally:
    """Suspend for input until enough distinct approvals or one rejection. Runs in the flow (a task
    cannot suspend); every judged input is read back from the ledger on a re-run, not re-judged."""
    details = request["details"]
    flow_run_id, deadline, required = str(details["flow_run_id"]), details["deadline"], int(details["required"])
    tally, n = Tally(), 0
    while not tally.done(required):
        key = f"approval-{n}"
        record = recorded_outcome_task(flow_run_id, key)
        if record is None:
            form = suspend(wait_for_input=approval_form(description), key=key, timeout=seconds_left(deadline))
            record = judge_approval(plan, flow_run_id, key, form, requested_by, tally)
        tally = tally.add(record)
        n += 1
    return tally


@task(name="refuse-rejected", **INFRA_RETRIES)
def refuse_rejected(plan: PromotionPlan, flow_run_id: str, tally: Tally) -> None:
    rejection = tally.rejection or {}
    raise refuse(plan, flow_run_id, f"rejected by {rejection.get('identity')}: {rejection.get('comment') or 'no comment'}",
                 plan.target_env, ("rejected",))


@task(name="copy-version", **INFRA_RETRIES)
def copy_task(plan: PromotionPlan, decision: PolicyDecision, flow_run_id: str, tally: Tally) -> dict:
    """The copy, its champion alias, and ``promotion.copied`` (once)."""
    version = copy_into_environment(get_resources().registry, plan, flow_run_id)
    record_once(Action.PROMOTION_COPIED, f"{plan.target_model}/{version}", {
        "environment": plan.target_env, "flow_run_id": flow_run_id, "source": plan.subject, "origin": plan.origin,
        "digest": plan.digest, "policy_input_sha256": decision.input_sha256,
        "policies": list(decision.policies), "approvals": list(tally.given)})
    return {"model": plan.target_model, "version": version, "environment": plan.target_env,
            "source": plan.subject, "approvals": list(tally.given), "decision": decision.as_record()}
