"""The mission's KPIs from ledger records alone: deployments, their success rate and frequency,
lead time (alias set → 100% of traffic), rollbacks (automatic and manual), MTTD and MTTR, and
the audit pass rate; each cut per model, per team and per environment.

Plain functions of records, in the core so that every reader agrees: the CLI, the KPI page,
the deploy flow's artifact and the bridge's ``/metrics`` (which cannot import ``tasks/``).
A number that cannot be known is None, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelyard.catalog import (AUTOMATIC_ROLLBACK_ACTIONS, CHAMPION, ROLLBACK_ACTIONS, Action,
                               parse_version_resource_id)
from modelyard.environments import split_environment

MTTD_MEANING = "start of the drifted window → alert"
MTTR_MEANING = "alert → switch to the new version completed"
INCIDENT_MTTD_MEANING = "first bad signal → incident opened"
INCIDENT_MTTR_MEANING = "incident opened → resolved"
LEAD_TIME_MEANING = "champion alias set → 100% of traffic on the version"
UNASSIGNED = "unassigned"  # the team of a model whose registry tags and spec name none
LEDGER_SUBJECT = "ledger"  # the subject of an ``audit.verified`` record

# Records that set the alias a deploy starts from, in the order their times are trusted: the
# pipeline's promotion, a promotion's copy into an environment, the bridge's or the
# reconciler's event for it. Without one, the deploy's own start stands in.
ALIAS_SET_ACTIONS = frozenset({Action.MODEL_PROMOTED, Action.PROMOTION_COPIED, Action.REGISTRY_EVENT_EMITTED,
                               Action.REGISTRY_EVENT_RECONCILED})


def record_time(record: Mapping[str, Any]) -> float:
    """When a ledger record was written (epoch seconds)."""
    return datetime.fromisoformat(record["time"]).timestamp()


def subject_version(record: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(registered model, version or None) a record is about; None for a record about no model
    (the ledger itself, the bridge). The bridge names a version by its Prefect resource id."""
    subject = str(record.get("subject", ""))
    parsed = parse_version_resource_id(subject)
    if parsed is not None:
        return parsed
    if not subject or subject in {LEDGER_SUBJECT, "registry-bridge"} or subject.startswith("mlflow."):
        return None
    model, _, version = subject.partition("/")
    return model, version or None


def registered_model(record: Mapping[str, Any]) -> str | None:
    found = subject_version(record)
    return found[0] if found else None


def concerns(record: Mapping[str, Any], model: str | None) -> bool:
    """Whether a record is about ``model``: the registered model of that name, or any of the
    spec's environments (``fraud`` covers ``fraud-staging`` and ``fraud-production``); any with None."""
    if model is None:
        return True
    registered = registered_model(record)
    return registered is not None and (registered == model or split_environment(registered)[0] == model)


@dataclass(frozen=True)
class Scope:
    """Which records a KPI counts: one model (spec name or registered name), one team, one
    environment; None for any. ``teams`` maps a registered (or spec) model name to its team."""

    model: str | None = None
    team: str | None = None
    environment: str | None = None

    def admits(self, record: Mapping[str, Any], teams: Mapping[str, str]) -> bool:
        if not concerns(record, self.model):
            return False
        if self.team is None and self.environment is None:
            return True
        registered = registered_model(record)
        if registered is None:
            return False
        if self.environment is not None and split_environment(registered)[1] != self.environment:
            return False
        return self.team is None or team_of(registered, teams) == self.team

    def describe(self) -> str:
        parts = [f"{name} {value}" for name, value in (("model", self.model), ("team", self.team),
                                                        ("environment", self.environment)) if value]
        return ", ".join(parts) or "every model"


def team_of(registered: str, teams: Mapping[str, str]) -> str:
    """The team owning a registered model: its own entry, else its spec model's, else unassigned."""
    return teams.get(registered) or teams.get(split_environment(registered)[0]) or UNASSIGNED


def is_redeploy(record: Mapping[str, Any]) -> bool:
    """A deploy of the version already serving: no deployment in the KPIs' sense."""
    return any(s.get("step") == "already serving" for s in record["details"].get("timeline", []))


def switched_at(timeline: list[dict[str, Any]]) -> float | None:
    """When a rollout's switch completed (epoch seconds): the wall-clock ``at`` of its ``switched``
    step; None for a rollout that switched nothing."""
    return next((step.get("at") for step in timeline if step["step"] == "switched"), None)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _is_alias_set(record: Mapping[str, Any], subject: tuple[str, str | None]) -> bool:
    if record["action"] not in ALIAS_SET_ACTIONS or subject_version(record) != subject:
        return False
    alias = record["details"].get("alias")
    return alias in (None, CHAMPION)


def lead_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each deployment's lead time: from the champion alias set on the version (its latest
    record at or before the deploy's start; else the deploy's start) to the ``switched`` step
    that put 100% of traffic on it. Re-deploys and rollouts that switched nothing have none."""
    out = []
    for index, success in enumerate(records):
        if success["action"] != Action.DEPLOY_SUCCEEDED or is_redeploy(success):
            continue
        done = switched_at(success["details"].get("timeline", []))
        subject = subject_version(success)
        if done is None or subject is None:
            continue
        before = records[:index]
        started = next((r for r in reversed(before) if r["action"] == Action.DEPLOY_STARTED
                        and subject_version(r) == subject), None)
        limit = record_time(started) if started is not None else record_time(success)
        alias = next((r for r in reversed(before) if _is_alias_set(r, subject) and record_time(r) <= limit), None)
        anchor = alias or started
        if anchor is None:
            continue
        out.append({"subject": success["subject"], "from": anchor["action"], "from_time": anchor["time"],
                    "switched_at": done, "lead_time_s": done - record_time(anchor)})
    return out


def _incident_numbers(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """MTTD/MTTR from the incidents in ``records`` (``modelyard.incidents``); None while that
    module is absent or no incident is recorded, when the closed loops' ``kpi.recovered`` stand in."""
    try:
        from modelyard.incidents import incident_kpis, incidents_from_records
    except ImportError:
        return None
    incidents = incidents_from_records(records)
    return dict(incident_kpis(incidents)) if incidents else None


def delivery_kpis(records: list[dict[str, Any]], model: str | None = None, *, team: str | None = None,
                  environment: str | None = None, teams: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Deployments, their success rate and frequency, lead time, rollbacks (automatic and
    manual), and mean MTTD/MTTR, over the records in scope (a model, a team, an environment)."""
    scope, teams = Scope(model, team, environment), teams or {}
    records = [r for r in records if scope.admits(r, teams)]
    started = [r for r in records if r["action"] == Action.DEPLOY_STARTED]
    succeeded = [r for r in records if r["action"] == Action.DEPLOY_SUCCEEDED and not is_redeploy(r)]
    rollbacks = [r for r in records if r["action"] in ROLLBACK_ACTIONS]
    automatic = [r for r in rollbacks if r["action"] in AUTOMATIC_ROLLBACK_ACTIONS]
    refused = [r for r in rollbacks if r["action"] == Action.DEPLOY_ROLLED_BACK]  # a failed deployment attempt
    recovered = [r["details"] for r in records if r["action"] == Action.KPI_RECOVERED]
    span_days = ((record_time(records[-1]) - record_time(records[0])) / 86400) if len(records) > 1 else 0.0
    attempts = len(succeeded) + len(refused)
    leads = [lead["lead_time_s"] for lead in lead_times(records)]
    numbers = {
        "deployments": len(succeeded), "deploy_attempts": attempts, "deploys_started": len(started),
        "success_rate": len(succeeded) / attempts if attempts else None,
        "deployments_per_day": len(succeeded) / span_days if span_days > 0 else None,
        "lead_time_s": _mean(leads), "lead_time_max_s": max(leads) if leads else None,
        "rollbacks": len(rollbacks),
        "automatic_rollbacks": len(automatic),
        "manual_rollbacks": len(rollbacks) - len(automatic),
        "recoveries": len(recovered),
        "mttd_s": _mean([r.get("mttd_s") for r in recovered]),
        "mttr_s": _mean([r.get("mttr_s") for r in recovered]),
        "mttd_source": "closed loops",
    }
    incidents = _incident_numbers(records)
    if incidents is not None:
        states = incidents.get("by_state", {})
        numbers |= {"mttd_s": incidents.get("mttd_s"), "mttr_s": incidents.get("mttr_s"), "mttd_source": "incidents",
                    "incidents": incidents.get("incidents"),
                    "incidents_open": states.get("open", 0) + states.get("acknowledged", 0),
                    "incidents_resolved": states.get("resolved", 0)}
    return numbers


# --- cuts -----------------------------------------------------------------------------------

def model_environments(records: list[dict[str, Any]], extra: Iterable[str] = ()) -> list[str]:
    """Every registered model the records (and ``extra``, e.g. what serves) are about."""
    names = {registered_model(r) for r in records} | set(extra)
    return sorted(name for name in names if name)


def kpi_cuts(records: list[dict[str, Any]], teams: Mapping[str, str],
             extra_models: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """The delivery KPIs cut three ways: per registered model (with its spec model, team and
    environment: the Prometheus series), per team and per environment."""
    registered = model_environments(records, extra_models)
    per_model = []
    for name in registered:
        model, env = split_environment(name)
        per_model.append({"registered": name, "model": model, "environment": env, "team": team_of(name, teams),
                          **delivery_kpis(records, name, environment=env, teams=teams)})
    team_names = sorted({row["team"] for row in per_model})
    env_names = sorted({row["environment"] for row in per_model})
    return {
        "model": per_model,
        "team": [{"team": t, **delivery_kpis(records, team=t, teams=teams)} for t in team_names],
        "environment": [{"environment": e, **delivery_kpis(records, environment=e, teams=teams)} for e in env_names],
    }


# --- audit pass rate ------------------------------------------------------------------------

def audit_pass_rate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Scheduled ``audit verify`` runs (``audit.verified``) that passed, of all of them, and the
    latest run's finding."""
    runs = [r for r in records if r["action"] == Action.AUDIT_VERIFIED]
    passed = [r for r in runs if r["details"].get("ok") is True]
    last = runs[-1] if runs else None
    return {"audit_runs": len(runs), "audit_passed": len(passed),
            "audit_pass_rate": len(passed) / len(runs) if runs else None,
            "audit_last_at": last["time"] if last else None,
            "audit_last_ok": last["details"].get("ok") if last else None,
            "audit_last_problem": last["details"].get("problem") if last else None}
