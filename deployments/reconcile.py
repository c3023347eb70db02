"""The reconciler: what the registry says should serve, against what serves.

Webhooks are at-most-once in practice: a bridge that was down, a restart mid-delivery, a
network blip, and an alias change is never heard of. The reconciler runs on a schedule,
compares every model's ``champion`` alias with the version that is serving, and emits the
same Prefect event the bridge would have emitted, so that the same trigger deploys it.
Only versions the deploy path never handled count as missed: one that served before (and
was replaced by hand since) or whose rollout failed is not retried — an operator or a new
version decides — and models with a rollout in progress are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelyard.catalog import (CHAMPION, Action, Event, parse_version_resource_id, registered_model_resource_id,
                               version_resource_id)


@dataclass(frozen=True)
class Missed:
    model: str
    version: str
    serving: str | None


def missed_deploys(champions: dict[str, str], serving: dict[str, str | None],
                   handled: dict[str, set[str]], busy: set[str]) -> list[Missed]:
    """Champions that are not serving, that no rollout ever handled (served or refused), of
    models not being rolled out right now."""
    return [Missed(model, version, serving.get(model)) for model, version in sorted(champions.items())
            if serving.get(model) != version and version not in handled.get(model, set()) and model not in busy]


def alias_event(model: str, version: str) -> dict:
    """The event the bridge emits for an alias set on a version, marked as reconciled."""
    return {
        "event": str(Event.REGISTRY_ALIAS_CREATED),
        "resource": {"prefect.resource.id": version_resource_id(model, version),
                     "prefect.resource.name": f"{model} v{version}", "mlflow.model": model,
                     "mlflow.version": version, "mlflow.alias": CHAMPION, "modelyard.reconciled": "true"},
        "related": [{"prefect.resource.id": registered_model_resource_id(model),
                     "prefect.resource.role": "model", "prefect.resource.name": model}],
        "payload": {"name": model, "version": version, "alias": CHAMPION, "source": "reconciler"},
    }


IN_FLIGHT_ACTIONS = frozenset({Action.REGISTRY_EVENT_EMITTED, Action.REGISTRY_EVENT_RECONCILED, Action.DEPLOY_STARTED})


def recently_in_flight(records: list[dict], now: datetime, grace_s: float) -> dict[str, set[str]]:
    """Versions (model → versions) that the event path picked up within ``grace_s``: an event
    the bridge emitted, one the reconciler emitted, or a deploy that started. Their deploy is
    on its way; emitting again would only queue a duplicate."""
    found: dict[str, set[str]] = {}
    for record in records:
        if record.get("action") not in IN_FLIGHT_ACTIONS:
            continue
        if (now - datetime.fromisoformat(record["time"])).total_seconds() > grace_s:
            continue
        subject = record.get("subject", "")
        model, version = parse_version_resource_id(subject) or (subject.rpartition("/")[0], subject.rpartition("/")[2])
        if model and version:
            found.setdefault(model, set()).add(version)
    return found


def refused_names(records: list[dict], entry: str) -> set[str]:
    """The values ``name.refused`` records of ``entry`` already name: a name refused once is not
    recorded again at every reconcile run."""
    return {str(record.get("details", {}).get("value")) for record in records
            if record.get("action") == Action.NAME_REFUSED and record.get("subject") == entry}
