"""`modelyard audit`: read, verify, prove and repair the audit ledger (docs/ledger.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.ledger import AuditLedger, LedgerError, Verification, ledger_from_settings
from modelyard.settings import Settings, get_settings

audit_app = typer.Typer(help="Read, verify, prove and repair the audit ledger.", no_args_is_help=True)

console = Console()
errors = Console(stderr=True)


def _ledger(settings: Settings, remote_witnesses: bool) -> AuditLedger:
    """The stack's ledger; with its MLflow and Prefect witnesses when ``remote_witnesses``."""
    if not remote_witnesses:
        return ledger_from_settings(settings)
    from modelyard.resources.witness import ledger_witnesses

    return ledger_from_settings(settings, witnesses=ledger_witnesses(settings))


def _print_evidence(result: Verification, offline: bool) -> None:
    if result.checkpoint is not None:
        console.print(f"latest signed checkpoint: {result.checkpoint.describe()} (key {result.checkpoint.key_id})")
        if result.unvouched:
            console.print(f"  {result.unvouched} newer record(s) vouched for by the hash chain only, until the next one")
    else:
        console.print("no signed checkpoint yet: the records are vouched for by the hash chain only")
    if result.witnessed is not None:
        console.print(f"latest witnessed checkpoint: {result.witnessed.checkpoint.describe()} "
                      f"at {escape(result.witnessed.source)}")
    else:
        console.print("no witnessed checkpoint read")
    for name, status in sorted(result.witness_status.items()):
        failure = status.get("last_failure")
        if failure:
            errors.print(f"[yellow]witness {name}[/yellow] last failed at checkpoint {failure['size']} "
                         f"({failure['time']}): {escape(str(failure.get('error', '')))}; it is retried with the next")
    for error in result.witness_errors:
        errors.print(f"[yellow]witness unreadable:[/yellow] {escape(error)}")
    if result.repairs:
        console.print(f"{result.repairs} repair(s) of a torn line recorded (action ledger.repaired)")
    if offline:
        console.print("[yellow]--offline:[/yellow] MLflow and Prefect witnesses not read; "
                      "a restored older ledger cannot be told apart without them")


@audit_app.command("verify")
def audit_verify(
    offline: Annotated[bool, typer.Option(
        "--offline", help="Check only the files on this machine (not the MLflow and Prefect witnesses).")] = False,
) -> None:
    """Check every record, every signed and witnessed checkpoint and every record's inclusion;
    name the first record that was edited, deleted, inserted, reordered, cut or restored."""
    settings = get_settings()
    result = _ledger(settings, remote_witnesses=not offline).verify()
    _print_evidence(result, offline)
    if result.ok:
        console.print(f"[green]ledger OK[/green]: {result.records} records verified ({settings.ledger_path})")
        return
    errors.print(f"[red]ledger BROKEN[/red] after {result.records} good records: {escape(str(result.problem))}")
    if result.problem is not None and result.problem.kind == "unwitnessed":
        errors.print("start the stack (`modelyard stack up`), or pass --offline to check only this machine's files")
    raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    subject: Annotated[str | None, typer.Option(help="Only records about this subject.")] = None,
    limit: Annotated[int, typer.Option(help="Show the last N records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """The ledger's records, newest last."""
    records = ledger_from_settings(get_settings()).records(subject=subject)[-limit:]
    if as_json:
        for record in records:
            print(json.dumps(record, sort_keys=True))
        return
    table = Table(title="audit ledger")
    for column in ("seq", "time", "actor", "action", "subject", "details"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(str(r["seq"]), r["time"], r["actor"], r["action"], r["subject"], json.dumps(r["details"])[:120])
    console.print(table)


@audit_app.command("prove")
def audit_prove(seq: Annotated[int, typer.Argument(help="The record's seq.")]) -> None:
    """Print an inclusion proof of record SEQ in a signed checkpoint (JSON), which
    infra/scripts/verify_inclusion.py checks with only the public key."""
    settings = get_settings()
    try:
        proof = _ledger(settings, remote_witnesses=True).prove(seq)
    except LedgerError as error:
        errors.print(f"[red]cannot prove record {seq}:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    print(json.dumps(proof, indent=2, sort_keys=True))
    errors.print(f"public key: {settings.state_dir / 'keys' / 'ledger-checkpoint.pub'}")


@audit_app.command("repair")
def audit_repair() -> None:
    """Move a torn last line (a write cut short by a crash) to the quarantine directory, where
    it is kept, and record the repair; complete records are never touched."""
    ledger = _ledger(get_settings(), remote_witnesses=True)
    try:
        record = ledger.repair(actor="cli")
    except LedgerError as error:
        errors.print(f"[red]cannot repair:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    if record is None:
        console.print("nothing to repair: the ledger ends with a complete record")
        return
    details = record["details"]
    console.print(f"quarantined {details['bytes']} torn bytes in {details['quarantined']}; "
                  f"recorded as seq {record['seq']} ({record['action']})")
