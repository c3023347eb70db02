"""Every KPI of the mission at one moment, gathered from where each is true: the ledger
(delivery, MTTD/MTTR, audit runs, evidence), the serving state and Prefect (% of serving models
monitored), MLflow (teams, production versions and their tags) and the watchdog's utilisation
samples. The CLI, the KPI page and the bridge's ``/metrics`` all read one ``KpiSnapshot``.

A source that does not answer is named in ``unavailable`` and its KPIs are left out; nothing
is filled in for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelyard.catalog import MONITOR_DEPLOYMENT
from modelyard.environments import TAG_TEAM, split_environment
from modelyard.evidence import Evidence, evidence_completeness, evidence_rate, production_lineages
from modelyard.kpis import Scope, audit_pass_rate, delivery_kpis, kpi_cuts, team_of
from modelyard.schedules import schedule_slug
from modelyard.settings import Settings

MONITOR_GRACE = 2  # a monitor run counts within this many intervals
PROBE_TIMEOUT_S = 3.0


# --- % of serving models monitored ------------------------------------------------------------

def monitoring_coverage(serving: Iterable[str], schedules: Mapping[str, Mapping[str, Any]],
                        last_runs: Mapping[str, float], now: float) -> dict[str, Any]:
    """Per serving model: an active monitor schedule, and a monitor run completed within
    ``MONITOR_GRACE`` × its interval; the share of serving models that have both.

    ``schedules``: model → {"active": bool, "interval_s": float}; ``last_runs``: model → end time
    (epoch s) of its latest completed monitor run."""
    rows = []
    for model in sorted(serving):
        schedule = schedules.get(model)
        interval = schedule.get("interval_s") if schedule else None
        last = last_runs.get(model)
        age = now - last if last is not None else None
        if schedule is None:
            reason = "no monitor schedule"
        elif not schedule.get("active"):
            reason = "monitor schedule paused"
        elif last is None:
            reason = "no completed monitor run"
        elif not interval or age > MONITOR_GRACE * interval:
            reason = f"last monitor run {age:.0f} s ago, over {MONITOR_GRACE} × {interval or 0:.0f} s"
        else:
            reason = None
        rows.append({"model": model, "scheduled": bool(schedule and schedule.get("active")), "interval_s": interval,
                     "last_run_at": last, "last_run_age_s": age, "monitored": reason is None, "reason": reason})
    monitored = [row for row in rows if row["monitored"]]
    return {"models": rows, "serving_models": len(rows), "monitored_models": len(monitored),
            "monitored_rate": len(monitored) / len(rows) if rows else None}


def read_monitor_state(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The monitor deployment's schedules (model → active, interval) and, per model, the end of
    its latest monitor run completed within ``MONITOR_GRACE`` × the longest interval (older
    runs count for no model)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterEndTime, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import temporary_settings

    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    with temporary_settings({**settings.prefect_client_settings(), PREFECT_CLIENT_MAX_RETRIES: 1}), \
            get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(MONITOR_DEPLOYMENT)
        schedules = {}
        for schedule in client.read_deployment_schedules(deployment.id):
            model = (schedule.parameters or {}).get("model")
            if model and schedule.slug == schedule_slug(model):
                interval = getattr(schedule.schedule, "interval", None)
                schedules[model] = {"active": bool(schedule.active),
                                    "interval_s": interval.total_seconds() if isinstance(interval, timedelta) else None}
        horizon_s = MONITOR_GRACE * max((s["interval_s"] or 0 for s in schedules.values()), default=0)
        if not horizon_s:
            return schedules, {}
        runs_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                                    end_time=FlowRunFilterEndTime(after_=datetime.now(UTC) - timedelta(seconds=horizon_s)))
        last: dict[str, float] = {}
        offset = 0
        while True:
            runs = client.read_flow_runs(flow_run_filter=runs_filter, sort=FlowRunSort.END_TIME_DESC, limit=200,
                                         offset=offset,
                                         deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            for run in runs:
                model = (run.parameters or {}).get("model")
                if model and run.end_time is not None and model not in last:
                    last[model] = run.end_time.timestamp()
            if len(runs) < 200:
                return schedules, last
            offset += len(runs)


# --- teams --------------------------------------------------------------------------------------

class TeamDirectory:
    """Registered model → team: its registry tag (``TAG_TEAM`` on the model, else on its latest
    version), else the spec the latest version was built from, else unassigned. Specs read are
    kept per version (a version's spec never changes)."""

    def __init__(self, client) -> None:
        self.client = client
        self._from_spec: dict[tuple[str, str], str | None] = {}

    def teams(self, names: Iterable[str]) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        out = {}
        for name in sorted(set(names)):
            try:
                registered = self.client.get_registered_model(name)
            except MlflowException:
                continue
            team = (registered.tags or {}).get(TAG_TEAM)
            latest = max((v for v in (registered.latest_versions or [])), key=lambda v: int(v.version), default=None)
            if not team and latest is not None:
                team = (self.client.get_model_version(name, latest.version).tags or {}).get(TAG_TEAM)
            if not team and latest is not None:
                team = self._spec_team(name, str(latest.version))
            if team:
                out[name] = team
        return out

    def _spec_team(self, name: str, version: str) -> str | None:
        from modelyard.resources.registry import version_spec

        key = (name, version)
        if key not in self._from_spec:
            spec = version_spec(self.client, name, version)
            self._from_spec[key] = getattr(spec, "team", None) if spec is not None else None
        return self._from_spec[key]


# --- the snapshot -------------------------------------------------------------------------------

@dataclass
class KpiSnapshot:
    """Every KPI at ``at``, for ``scope``."""

    at: float
    scope: Scope
    records: int
    teams: dict[str, str]
    delivery: dict[str, Any]
    cuts: dict[str, list[dict[str, Any]]]
    monitoring: dict[str, Any] | None
    audit: dict[str, Any]
    evidence: list[Evidence] | None
    utilisation: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def evidence_summary(self) -> dict[str, Any] | None:
        return evidence_rate(self.evidence) if self.evidence is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"at": datetime.fromtimestamp(self.at, UTC).isoformat(), "scope": asdict(self.scope),
                "records": self.records, "teams": self.teams, "delivery": self.delivery, "cuts": self.cuts,
                "monitoring": self.monitoring, "audit": self.audit,
                "evidence": None if self.evidence is None else {
                    **(self.evidence_summary or {}), "versions": [e.as_dict() for e in self.evidence]},
                "utilisation": self.utilisation, "unavailable": self.unavailable}


def _admitted(registered: str, scope: Scope, teams: Mapping[str, str]) -> bool:
    model, env = split_environment(registered)
    return ((scope.model is None or scope.model in (registered, model))
            and (scope.environment is None or scope.environment == env)
            and (scope.team is None or team_of(registered, teams) == scope.team))


def build_snapshot(records: list[dict[str, Any]], scope: Scope, teams: Mapping[str, str], *, serving: Iterable[str] = (),
                   monitor_state: tuple[Mapping, Mapping] | None = None, evidence: list[Evidence] | None = None,
                   utilisation: Mapping[str, Any] | None = None, unavailable: Mapping[str, str] | None = None,
                   now: float | None = None) -> KpiSnapshot:
    """The snapshot from what was read: plain values in, so a test builds one from records."""
    now = time.time() if now is None else now
    teams = dict(teams)
    serving = [name for name in serving if _admitted(name, scope, teams)]
    cuts = kpi_cuts(records, teams, serving)
    cuts["model"] = [row for row in cuts["model"] if _admitted(row["registered"], scope, teams)]
    monitoring = None
    if monitor_state is not None:
        schedules, last_runs = monitor_state
        monitoring = monitoring_coverage(serving, schedules, last_runs, now)
        for row in monitoring["models"]:
            row |= {"team": team_of(row["model"], teams), "environment": split_environment(row["model"])[1]}
    if evidence is not None:
        evidence = [e for e in evidence if _admitted(e.subject.partition("/")[0], scope, teams)]
    usage = dict(utilisation or {"replicas": [], "gpu": {"available": False, "reason": "not read"}, "samples": 0})
    usage["replicas"] = [r | {"team": team_of(r["model"], teams), "environment": split_environment(r["model"])[1]}
                         for r in usage.get("replicas", []) if _admitted(r["model"], scope, teams)]
    return KpiSnapshot(now, scope, len(records), teams,
                       delivery_kpis(records, scope.model, team=scope.team, environment=scope.environment, teams=teams),
                       cuts, monitoring, audit_pass_rate(records), evidence, usage, dict(unavailable or {}))


class KpiReader:
    """Reads every source of a stack for a snapshot; one per process (it keeps its MLflow client
    and the teams read from specs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = None
        self._teams: TeamDirectory | None = None

    @property
    def client(self):
        if self._client is None:
            from modelyard.resources.registry import registry_client

            self._client = registry_client(self.settings)
            self._teams = TeamDirectory(self._client)
        return self._client

    def snapshot(self, scope: Scope = Scope(), records: list[dict[str, Any]] | None = None) -> KpiSnapshot:
        from modelyard.kpis import model_environments
        from modelyard.ledger import ledger_from_settings
        from modelyard.resources.serving_state import ServingState
        from modelyard.utilisation import recent_utilisation

        now = time.time()
        records = ledger_from_settings(self.settings, sign=False).records() if records is None else records
        serving = ServingState(self.settings.state_dir).served_models()
        unavailable = {source: problem for source, url in (("mlflow", f"{self.settings.mlflow_url}/health"),
                                                            ("prefect", f"{self.settings.prefect_api_url}/health"))
                       if (problem := _silent(url)) is not None}
        teams: dict[str, str] = {}
        evidence = None
        if "mlflow" not in unavailable:
            try:
                self.client  # noqa: B018 - made once
                teams = self._teams.teams(model_environments(records, serving))
                evidence = [evidence_completeness(lineage, records) for lineage in production_lineages(self.client)]
            except Exception as error:  # noqa: BLE001 - MLflow failing: its KPIs are left out, and said so
                unavailable["mlflow"] = f"{type(error).__name__}: {str(error)[:200]}"
        monitor_state = None
        if "prefect" not in unavailable:
            try:
                monitor_state = read_monitor_state(self.settings)
            except Exception as error:  # noqa: BLE001 - Prefect failing: % monitored unknown, not 0
                unavailable["prefect"] = f"{type(error).__name__}: {str(error)[:200]}"
        return build_snapshot(records, scope, teams, serving=serving, monitor_state=monitor_state, evidence=evidence,
                              utilisation=recent_utilisation(self.settings, now=now), unavailable=unavailable, now=now)


def _silent(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a server does not answer at ``url`` (None when it answers at all, even 401): checked
    first, so that a server that is down costs one short probe, not its client's retries."""
    import httpx

    try:
        httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {str(error)[:200] or 'no answer'}"
    return None
