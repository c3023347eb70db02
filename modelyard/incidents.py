"""Incidents: every alert opens one; it goes open → acknowledged → resolved.

The audit ledger is the only store. An incident is folded from its records (``incident.opened``,
``incident.acknowledged``, ``incident.resolved``), each transition an explicit record naming the
incident's id, so the incident list, its times and who closed it are as verifiable as the ledger,
and each record has an inclusion proof for the compliance report. Subjects are
``<model>/<version of the incident>`` for every transition, so a version's records hold its
incidents from opening to resolution.

- One open incident per (model, kind) at a time (per replica for ``replica``): a repeated alert
  while one is open writes nothing, so a noisy monitor cannot flood the ledger.
- Resolved either by the recovery that fixed it (a new version at 100%, a rollback, a replica
  back in the route: ``resolved_by == "recovery"``) or by a person with a note (their identity).
- MTTD = opened − first bad signal (the start of the monitoring window that showed it, or the
  replica's last answered probe); MTTR = resolved − opened. A recovery by rollout records the
  moment its switch completed (``recovered_at``): the service recovered then, not when the
  record was written, so MTTR ends there.

The writers take a ``record(action, subject, details)`` callable (``append_audit_record`` in a
flow, the watchdog's own ledger append) and optionally an ``emit(event, incident)`` callable
(``emit_incident_event``: Prefect events that notifications listen to), so this module needs
neither a flow nor a Prefect server to be tested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelyard.catalog import Action, Event, model_resource_id

__all__ = [
    "ACTIVE_STATES", "KINDS", "RECOVERED_BY_ROLLBACK", "RECOVERED_BY_ROLLOUT", "RECOVERY", "STATES", "Emit",
    "Incident", "IncidentError", "Record",
    "acknowledge", "alert_kind", "emit_incident_event", "find_incident", "incident_event", "incident_kpis",
    "incidents_from_records", "open_incident", "open_incidents", "resolve", "resolve_by_recovery",
]

KINDS = ("drift", "data", "performance", "service", "replica")
STATES = ("open", "acknowledged", "resolved")
ACTIVE_STATES = frozenset({"open", "acknowledged"})
RECOVERY = "recovery"  # ``resolved_by`` of an incident the platform's own recovery closed
# What each recovery fixes. A new version at 100% replaces the one the alerts were about (and any
# replica of it still down); a rollback puts back a version that served well, which fixes how it
# serves, not the data it is sent (drift and invalid data stay open).
RECOVERED_BY_ROLLOUT = ("drift", "data", "performance", "service", "replica")
RECOVERED_BY_ROLLBACK = ("performance", "service", "replica")

# Which kind of incident each monitoring alert opens (the ledger action of the alert → kind).
_ALERT_KINDS: dict[Action, str] = {
    Action.MONITOR_DRIFT: "drift",
    Action.MONITOR_INVALID_DATA: "data",
    Action.MONITOR_PERFORMANCE: "performance",
    Action.MONITOR_SERVICE: "service",
    Action.SERVING_REPLICA_DOWN: "replica",
}

Record = Callable[[Action, str, dict[str, Any]], Any]
Emit = Callable[[Event, "Incident"], None]


class IncidentError(ValueError):
    """A transition the incident's state does not allow, or an incident that does not exist."""


def alert_kind(action: Action | str) -> str:
    """The incident kind an alert's ledger action opens (KeyError for one that opens none)."""
    return _ALERT_KINDS[Action(action)]


def _iso(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return datetime.fromtimestamp(value, UTC).isoformat()


def _epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class Incident:
    """One incident as its ledger records tell it."""

    id: str
    model: str
    version: str
    kind: str
    state: str
    first_signal_at: str | None
    opened_at: str
    alert: str  # the ledger action of the alert that opened it
    summary: str = ""  # the alert's reason, in a sentence
    signal: dict[str, Any] = field(default_factory=dict)  # the alert's numbers (window, shares, rates)
    replica: str | None = None  # which replica, for a ``replica`` incident
    acknowledged_at: str | None = None
    acknowledged_by: str | None = None
    acknowledge_note: str | None = None
    resolved_at: str | None = None
    resolved_by: str | None = None  # RECOVERY, or the identity of the person who resolved it
    resolution: str | None = None  # how: "v3 at 100%", "rollback to v2", "replica restored", or a note
    recovery_version: str | None = None  # the version that recovered it (a rollout or a rollback)
    seqs: list[int] = field(default_factory=list)  # ledger seq of every transition (inclusion proofs)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def mttd_s(self) -> float | None:
        """Time to detect: the first bad signal → the incident opened."""
        start = _epoch(self.first_signal_at)
        return None if start is None else round(_epoch(self.opened_at) - start, 3)

    @property
    def mttr_s(self) -> float | None:
        """Time to resolve: the incident opened → resolved (None while it is not)."""
        end = _epoch(self.resolved_at)
        return None if end is None else round(end - _epoch(self.opened_at), 3)

    @property
    def subject(self) -> str:
        return f"{self.model}/{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"mttd_s": self.mttd_s, "mttr_s": self.mttr_s}


# --- reading -----------------------------------------------------------------------------------

def _opened(record: Mapping[str, Any]) -> Incident | None:
    details = record.get("details") or {}
    model, _, version = str(record.get("subject", "")).partition("/")
    if not details.get("incident") or details.get("kind") not in KINDS:
        return None
    return Incident(id=details["incident"], model=details.get("model", model),
                    version=str(details.get("version", version)), kind=details["kind"], state="open",
                    first_signal_at=details.get("first_signal_at"), opened_at=record["time"],
                    alert=details.get("alert", ""), summary=details.get("summary", ""),
                    signal=dict(details.get("signal") or {}), replica=details.get("replica"),
                    seqs=[record["seq"]] if "seq" in record else [])


def incidents_from_records(records: Iterable[Mapping[str, Any]]) -> list[Incident]:
    """Every incident the ledger holds, oldest first, in the state its last transition left it.
    Records about an unknown incident, or a transition its state did not allow, are ignored (the
    writers never make them)."""
    found: dict[str, Incident] = {}
    for record in records:
        action = record.get("action")
        details = record.get("details") or {}
        if action == Action.INCIDENT_OPENED:
            incident = _opened(record)
            if incident is not None and incident.id not in found:
                found[incident.id] = incident
            continue
        incident = found.get(details.get("incident", ""))
        if incident is None or not incident.active:
            continue
        if action == Action.INCIDENT_ACKNOWLEDGED and incident.state == "open":
            incident.state = "acknowledged"
            incident.acknowledged_at = record["time"]
            incident.acknowledged_by = details.get("identity")
            incident.acknowledge_note = details.get("note")
        elif action == Action.INCIDENT_RESOLVED:
            incident.state = "resolved"
            incident.resolved_at = details.get("recovered_at") or record["time"]
            incident.resolved_by = RECOVERY if details.get("by") == RECOVERY else details.get("identity")
            incident.resolution = details.get("how") or details.get("note")
            incident.recovery_version = details.get("recovery_version")
        else:
            continue
        if "seq" in record:
            incident.seqs.append(record["seq"])
    return list(found.values())


def open_incidents(records: list[dict], model: str | None = None) -> list[Incident]:
    """The incidents not resolved yet (open or acknowledged), of ``model`` or of every model."""
    return [i for i in incidents_from_records(records) if i.active and (model is None or i.model == model)]


def find_incident(records: Iterable[Mapping[str, Any]], incident_id: str) -> Incident:
    """The incident ``incident_id`` (a unique prefix will do); IncidentError naming it if none."""
    incidents = incidents_from_records(records)
    exact = [i for i in incidents if i.id == incident_id]
    matches = exact or [i for i in incidents if incident_id and i.id.startswith(incident_id)]
    if len(matches) != 1:
        why = "no incident" if not matches else f"{len(matches)} incidents"
        raise IncidentError(f"incident: {why} with the id {incident_id!r}")
    return matches[0]


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 3) if present else None


def _summary(incidents: list[Incident]) -> dict[str, Any]:
    return {
        "incidents": len(incidents),
        "by_state": {state: sum(i.state == state for i in incidents) for state in STATES},
        "by_kind": {kind: sum(i.kind == kind for i in incidents) for kind in KINDS},
        "resolved_by_recovery": sum(i.resolved_by == RECOVERY for i in incidents),
        "resolved_by_person": sum(i.state == "resolved" and i.resolved_by != RECOVERY for i in incidents),
        "mttd_s": _mean(i.mttd_s for i in incidents),
        "mttr_s": _mean(i.mttr_s for i in incidents),
    }


def incident_kpis(incidents: list[Incident]) -> dict[str, Any]:
    """Counts by state and kind, mean MTTD (first signal → opened) and MTTR (opened → resolved),
    over all incidents and per model."""
    models = sorted({i.model for i in incidents})
    return _summary(incidents) | {
        "mttd_meaning": "first bad signal (window start, last good probe) → incident opened",
        "mttr_meaning": "incident opened → resolved (recovery switched, or a person's resolution)",
        "per_model": {model: _summary([i for i in incidents if i.model == model]) for model in models},
    }


# --- writing -----------------------------------------------------------------------------------

def _incident_id(model: str, kind: str, version: str, replica: str | None, opened: str) -> str:
    digest = hashlib.sha256("\0".join((model, kind, version, replica or "", opened)).encode()).hexdigest()
    return f"inc-{digest[:12]}"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise IncidentError(f"kind: {kind!r} is not an incident kind ({', '.join(KINDS)})")
    return kind


def open_incident(record: Record, records: list[dict], *, model: str, version: str, kind: str,
                  alert_action: Action | str, first_signal_at: float | str | None,
                  details: Mapping[str, Any] | None = None, summary: str = "", replica: str | None = None,
                  emit: Emit | None = None) -> Incident | None:
    """Open an incident for an alert, unless one of that kind (and replica) is already open on the
    model: then nothing is written and None returned (the open one covers the repeat).
    ``first_signal_at``: when the bad signal began (ISO or epoch seconds)."""
    _check_kind(kind)
    for incident in open_incidents(records, model):
        if incident.kind == kind and incident.replica == replica:
            return None
    now = datetime.now(UTC).isoformat()
    incident_id = _incident_id(model, kind, str(version), replica, now)
    written = record(Action.INCIDENT_OPENED, f"{model}/{version}", {
        "incident": incident_id, "kind": kind, "model": model, "version": str(version),
        "first_signal_at": _iso(first_signal_at), "alert": str(alert_action), "summary": summary[:500],
        "signal": dict(details or {}), **({"replica": replica} if replica is not None else {})})
    incident = _opened(written) if isinstance(written, Mapping) else None
    if incident is None:  # a writer that returns nothing: the incident as it was recorded
        incident = Incident(incident_id, model, str(version), kind, "open", _iso(first_signal_at), now,
                            str(alert_action), summary[:500], dict(details or {}), replica)
    if emit is not None:
        emit(Event.INCIDENT_OPENED, incident)
    return incident


def acknowledge(record: Record, records: list[dict], incident_id: str, *, identity: str,
                note: str | None = None) -> Incident:
    """Someone has seen the incident and works on it; only an open one can be acknowledged."""
    incident = find_incident(records, incident_id)
    if incident.state != "open":
        raise IncidentError(f"incident {incident.id} is {incident.state}"
                            + (f" (by {incident.acknowledged_by})" if incident.acknowledged_by else "")
                            + ": only an open incident can be acknowledged")
    written = record(Action.INCIDENT_ACKNOWLEDGED, incident.subject,
                     {"incident": incident.id, "identity": identity, "note": note})
    incident.state, incident.acknowledged_by, incident.acknowledge_note = "acknowledged", identity, note
    incident.acknowledged_at = written["time"] if isinstance(written, Mapping) else datetime.now(UTC).isoformat()
    return incident


def _resolve(record: Record, incident: Incident, details: dict[str, Any], emit: Emit | None) -> Incident:
    written = record(Action.INCIDENT_RESOLVED, incident.subject, {"incident": incident.id, **details})
    at = written["time"] if isinstance(written, Mapping) else datetime.now(UTC).isoformat()
    incident.state = "resolved"
    incident.resolved_at = details.get("recovered_at") or at
    incident.resolved_by = RECOVERY if details["by"] == RECOVERY else details.get("identity")
    incident.resolution = details.get("how") or details.get("note")
    incident.recovery_version = details.get("recovery_version")
    if emit is not None:
        emit(Event.INCIDENT_RESOLVED, incident)
    return incident


def resolve(record: Record, records: list[dict], incident_id: str, *, identity: str, note: str,
            emit: Emit | None = None) -> Incident:
    """A person closes the incident; they must say how (``note``)."""
    if not note or not note.strip():
        raise IncidentError("note: a person resolving an incident says how it was resolved")
    incident = find_incident(records, incident_id)
    if not incident.active:
        raise IncidentError(f"incident {incident.id} is already resolved ({incident.resolution})")
    return _resolve(record, incident, {"by": "person", "identity": identity, "note": note.strip()}, emit)


def resolve_by_recovery(record: Record, records: list[dict], *, model: str, how: str, kinds: Iterable[str],
                        recovery_version: str | None = None, replica: str | None = None,
                        recovered_at: float | str | None = None, emit: Emit | None = None) -> list[Incident]:
    """Every open incident of ``kinds`` on ``model`` resolved by the recovery ``how`` describes.
    ``recovery_version``: the version that now serves (its own incidents are not its to resolve);
    ``replica``: only that replica's incident; ``recovered_at``: when the recovery took effect."""
    kinds = {_check_kind(kind) for kind in kinds}
    resolved = []
    for incident in open_incidents(records, model):
        if incident.kind not in kinds or (recovery_version is not None and incident.version == str(recovery_version)):
            continue
        if replica is not None and incident.replica != replica:
            continue
        details = {"by": RECOVERY, "how": how}
        if recovery_version is not None:
            details["recovery_version"] = str(recovery_version)
        if recovered_at is not None:
            details["recovered_at"] = _iso(recovered_at)
        resolved.append(_resolve(record, incident, details, emit))
    return resolved


# --- Prefect events ------------------------------------------------------------------------------

def incident_event(event: Event, incident: Incident) -> dict[str, Any]:
    """``emit_event`` keyword arguments for an incident transition: the model as the resource,
    labelled with version, incident id and kind (what notifications and automations match)."""
    return {
        "event": str(event),
        "resource": {"prefect.resource.id": model_resource_id(incident.model), "prefect.resource.name": incident.model,
                     "modelyard.model": incident.model, "modelyard.version": incident.version,
                     "modelyard.incident": incident.id, "modelyard.kind": incident.kind},
        "payload": {"incident": incident.id, "kind": incident.kind, "state": incident.state,
                    "summary": incident.summary, "alert": incident.alert, "replica": incident.replica,
                    "first_signal_at": incident.first_signal_at, "opened_at": incident.opened_at,
                    "resolved_at": incident.resolved_at, "resolved_by": incident.resolved_by,
                    "resolution": incident.resolution, "mttd_s": incident.mttd_s, "mttr_s": incident.mttr_s},
    }


def emit_incident_event(event: Event, incident: Incident) -> None:
    """The transition as a Prefect event, where a Prefect client is configured (flows, the watchdog)."""
    from prefect.events import emit_event

    emit_event(**incident_event(event, incident))
