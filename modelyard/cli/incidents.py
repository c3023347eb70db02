"""`modelyard incidents`: list incidents from the ledger, acknowledge one, resolve one with a note.

Every alert opens an incident (``modelyard.incidents``); the platform's recovery resolves most of
them. What is left needs a person: ``ack`` says someone is on it, ``resolve`` closes it and must
say how. Both are ledger records naming the identity.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.catalog import Action
from modelyard.incidents import Incident, IncidentError, acknowledge, incidents_from_records, resolve
from modelyard.ledger import ledger_from_settings
from modelyard.settings import Settings, get_settings

console = Console()
errors = Console(stderr=True)

STATE_CHOICES = ("open", "acknowledged", "resolved", "all")
Identity = Annotated[str, typer.Option("--as", help="Who you are (your approver identity): kept in the ledger.")]


def duration(seconds: float | None) -> str:
    """A number of seconds as a person reads it: 42.1 s, 3m 05s, 2h 07m; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _table(incidents: list[Incident]) -> Table:
    table = Table(title="incidents")
    table.add_column("id", no_wrap=True)
    for column in ("model", "version", "kind", "state", "opened", "MTTD", "MTTR", "resolution"):
        table.add_column(column)
    colours = {"open": "red", "acknowledged": "yellow", "resolved": "green"}
    for incident in incidents:
        resolution = incident.resolution or ""
        if incident.state == "resolved":
            resolution = f"{resolution} ({incident.resolved_by})"
        elif incident.acknowledged_by:
            resolution = f"acknowledged by {incident.acknowledged_by}"
        table.add_row(incident.id, escape(incident.model), f"v{incident.version}", incident.kind,
                      f"[{colours[incident.state]}]{incident.state}[/{colours[incident.state]}]",
                      incident.opened_at[:19].replace("T", " "), duration(incident.mttd_s), duration(incident.mttr_s),
                      escape(resolution))
    return table


def _identity(value: str) -> str:
    from modelyard.approvals import check_identity

    try:
        return check_identity(value, "--as")
    except ValueError as error:
        errors.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from error


def _writer(settings: Settings):
    from modelyard.audit import append_audit_record

    def record(action: Action, subject: str, details: dict) -> dict:
        return append_audit_record(action, subject, details, settings)

    return record


def list_incidents(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only this model's incidents.")] = None,
    state: Annotated[str, typer.Option(help=f"Which incidents: {'|'.join(STATE_CHOICES)}.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list, MTTD and MTTR in seconds.")] = False,
) -> None:
    """Incidents from the ledger: id, model, kind, state, when opened, MTTD (first bad signal →
    opened), MTTR (opened → resolved) and how each was resolved."""
    if ctx.invoked_subcommand is not None:
        return
    if state not in STATE_CHOICES:
        errors.print(f"--state: {state!r} is not one of {', '.join(STATE_CHOICES)}", style="red", markup=False)
        raise typer.Exit(2)
    incidents = [i for i in incidents_from_records(ledger_from_settings(get_settings()).records())
                 if (model is None or i.model == model) and (state == "all" or i.state == state)]
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in incidents], indent=2))
        return
    if not incidents:
        console.print("no incidents" + (f" of {escape(model)}" if model else "")
                      + (f" in state {state}" if state != "all" else ""))
        return
    Console().print(_table(incidents))  # made now: the terminal's width as it is now


def ack(
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="The incident's id (a unique prefix will do).")],
    identity: Identity,
    note: Annotated[str | None, typer.Option(help="What you are doing about it.")] = None,
) -> None:
    """Acknowledge an open incident: someone is on it."""
    who = _identity(identity)
    settings = get_settings()
    try:
        incident = acknowledge(_writer(settings), ledger_from_settings(settings).records(), incident_id,
                               identity=who, note=note)
    except IncidentError as error:
        errors.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from error
    console.print(f"{incident.id} ({escape(incident.model)} v{incident.version}, {incident.kind}) "
                  f"acknowledged by {escape(who)}")


def resolve_incident(
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="The incident's id (a unique prefix will do).")],
    identity: Identity,
    note: Annotated[str, typer.Option(help="How it was resolved (required).")],
) -> None:
    """Resolve an incident by hand, saying how."""
    who = _identity(identity)
    settings = get_settings()
    try:
        incident = resolve(_writer(settings), ledger_from_settings(settings).records(), incident_id,
                           identity=who, note=note)
    except IncidentError as error:
        errors.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from error
    console.print(f"{incident.id} ({escape(incident.model)} v{incident.version}, {incident.kind}) resolved by "
                  f"{escape(who)} after {duration(incident.mttr_s)}")


def register(app: typer.Typer) -> None:
    """Add ``modelyard incidents`` (with ``ack`` and ``resolve``) to ``app``."""
    incidents_app = typer.Typer(help="Incidents: every alert opens one; list, acknowledge, resolve.")
    incidents_app.callback(invoke_without_command=True)(list_incidents)
    incidents_app.command("ack")(ack)
    incidents_app.command("resolve")(resolve_incident)
    app.add_typer(incidents_app, name="incidents")
