"""Whether a production version carries its complete evidence: what an auditor needs before
trusting that it got there by the rules. Complete means a signature on the version and, in the
ledger for its lineage (the version, the versions it was copied from, and its origin in dev):
its registration, a validation of the data it was trained on, its evaluation, a policy decision
that allowed it into production, an approval, and a deploy that succeeded.

``evidence_completeness`` is a plain function of the version's lineage and the ledger records,
so the KPI, the compliance report and a test all ask the same question.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.catalog import Action
from modelyard.environments import (TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, split_environment)
from modelyard.signing import TAG_SIGNATURE_SHA256, TAG_SIGNER

PRODUCTION = "production"
# Each piece of evidence, in the order of the lifecycle, with what it means when missing.
EVIDENCE: dict[str, str] = {
    "signature": "signature tags on the version",
    "registered": "model.registered in the ledger",
    "data_validated": "data.validated for the data it was trained on",
    "evaluated": "model.evaluated in the ledger",
    "policy_allowed": "policy.decided allowing production",
    "approved": "approval.given for production",
    "deployed": "deploy.succeeded of the version",
}


@dataclass(frozen=True)
class Lineage:
    """One version and where it came from: ``subjects`` are every ``model/version`` it was
    copied from (its source, its origin in dev), ``tags`` the version's own registry tags."""

    model: str  # the registered model (e.g. fraud-production)
    version: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"{self.model}/{self.version}"

    @property
    def origin(self) -> str:
        return self.tags.get(TAG_ORIGIN) or self.subject

    @property
    def subjects(self) -> list[str]:
        source = (f"{self.tags[TAG_SOURCE_MODEL]}/{self.tags[TAG_SOURCE_VERSION]}"
                  if self.tags.get(TAG_SOURCE_MODEL) and self.tags.get(TAG_SOURCE_VERSION) else None)
        return list(dict.fromkeys(s for s in (self.subject, source, self.origin) if s))


@dataclass(frozen=True)
class Evidence:
    """What was found for one version: each piece's ledger seq (or True for tags), what is missing."""

    subject: str
    found: dict[str, Any]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "complete": self.complete, "found": self.found,
                "missing": self.missing, "missing_meaning": [EVIDENCE[m] for m in self.missing]}


def _allowed(details: Mapping[str, Any]) -> bool:
    """A policy decision's verdict, whether the decision is recorded flat or under ``decision``."""
    decision = details.get("decision")
    if isinstance(decision, Mapping) and "allowed" in decision:
        return decision["allowed"] is True
    return details.get("allowed") is True


def _for_environment(details: Mapping[str, Any], env: str) -> bool:
    named = details.get("environment") or details.get("to")
    return named in (None, env)


def evidence_completeness(lineage: Lineage, records: Iterable[Mapping[str, Any]]) -> Evidence:
    """Each piece of ``EVIDENCE`` for one version, found (ledger seq) or missing."""
    subjects = set(lineage.subjects)
    origin_model = lineage.origin.partition("/")[0]
    env = split_environment(lineage.model)[1]
    about = [r for r in records if r.get("subject") in subjects]
    registered = next((r for r in about if r["action"] == Action.MODEL_REGISTERED), None)
    fingerprint = registered["details"].get("data_fingerprint") if registered else None

    def seq(record: Mapping[str, Any] | None) -> Any:
        return None if record is None else record.get("seq", record.get("time"))

    def first(action: Action, test=lambda details: True) -> Mapping[str, Any] | None:
        return next((r for r in about if r["action"] == action and test(r["details"])), None)

    validated = next((r for r in records if r["action"] == Action.DATA_VALIDATED and r.get("subject") == origin_model
                      and (fingerprint is None or r["details"].get("fingerprint") == fingerprint)), None)
    found = {
        "signature": bool(lineage.tags.get(TAG_SIGNER) and lineage.tags.get(TAG_SIGNATURE_SHA256)) or None,
        "registered": seq(registered),
        "data_validated": seq(validated),
        "evaluated": seq(first(Action.MODEL_EVALUATED)),
        "policy_allowed": seq(first(Action.POLICY_DECIDED, lambda d: _allowed(d) and _for_environment(d, env))),
        "approved": seq(first(Action.APPROVAL_GIVEN, lambda d: _for_environment(d, env))),
        "deployed": seq(next((r for r in about if r["action"] == Action.DEPLOY_SUCCEEDED
                              and r.get("subject") == lineage.subject), None)),
    }
    return Evidence(lineage.subject, found, [name for name in EVIDENCE if found[name] is None])


def evidence_rate(evidence: list[Evidence]) -> dict[str, Any]:
    """Production versions with complete evidence, of all production versions."""
    complete = [e for e in evidence if e.complete]
    return {"production_versions": len(evidence), "evidence_complete": len(complete),
            "evidence_rate": len(complete) / len(evidence) if evidence else None}


def production_lineages(client) -> list[Lineage]:
    """Every version of every production registered model in MLflow, with its tags."""
    lineages = []
    for registered in client.search_registered_models():
        if split_environment(registered.name)[1] != PRODUCTION:
            continue
        for version in client.search_model_versions(f"name='{registered.name}'"):
            lineages.append(Lineage(registered.name, str(version.version), dict(version.tags or {})))
    return sorted(lineages, key=lambda lineage: (lineage.model, int(lineage.version)))
