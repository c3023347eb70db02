"""`modelyard kpis`: every KPI of the mission, cut by model, team and environment, as a table,
JSON, an HTML page or the Prometheus text format (what the bridge's ``GET /metrics`` serves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelyard.environments import ENVIRONMENTS
from modelyard.kpis import Scope
from modelyard.settings import get_settings

console = Console()
errors = Console(stderr=True)


def _table(title: str, headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    """Add the ``kpis`` command to the modelyard app."""

    @app.command("kpis")
    def kpis(
        model: Annotated[str | None, typer.Option(help="Only this model (its spec name covers every environment).")] = None,
        team: Annotated[str | None, typer.Option(help="Only this team's models.")] = None,
        env: Annotated[str | None, typer.Option(help=f"Only this environment ({', '.join(ENVIRONMENTS)}).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        html_path: Annotated[Path | None, typer.Option("--html", help="Also write the HTML page (chart embedded) here.")] = None,
        prometheus: Annotated[bool, typer.Option("--prometheus", help="Print the Prometheus text format.")] = False,
    ) -> None:
        """Deployment frequency and success rate, lead time, rollbacks, MTTD, MTTR (per model,
        team and environment), % of serving models monitored, audit pass rate, production
        versions with complete evidence, and CPU/memory per serving replica."""
        from modelyard.kpi_snapshot import KpiReader
        from modelyard.ledger import ledger_from_settings

        if env is not None and env not in ENVIRONMENTS:
            errors.print(f"[red]--env:[/red] {env!r} is not one of {', '.join(ENVIRONMENTS)}")
            raise typer.Exit(2)
        settings = get_settings()
        records = ledger_from_settings(settings, sign=False).records()
        snapshot = KpiReader(settings).snapshot(Scope(model, team, env), records)
        for source, reason in snapshot.unavailable.items():
            errors.print(f"[yellow]{source} did not answer[/yellow] ({reason}): its KPIs are left out")
        if html_path is not None:
            from tasks.reporting import write_kpi_report

            html_path.parent.mkdir(parents=True, exist_ok=True)
            errors.print(f"KPI report: {write_kpi_report(records, model, html_path, snapshot=snapshot)}")
        if prometheus:
            from modelyard.kpi_exposition import exposition

            print(exposition(snapshot).decode(), end="")
            return
        if as_json:
            print(json.dumps(snapshot.as_dict(), indent=2, default=str))
            return
        _print(snapshot)


def _print(snapshot) -> None:
    from tasks.reporting import (CUT_HEADERS, cut_rows, evidence_rows, gpu_line, headline, kpi_rows, monitoring_rows,
                                 utilisation_rows)

    console.print(_table(f"KPIs of {snapshot.scope.describe()}", ("KPI", "value"),
                         [list(row) for row in kpi_rows(snapshot.delivery | headline(snapshot))]))
    console.print(_table("per team", ("team", *CUT_HEADERS), cut_rows(snapshot, "team")))
    console.print(_table("per environment", ("environment", *CUT_HEADERS), cut_rows(snapshot, "environment")))
    console.print(_table("per model", ("registered model", "team", "environment", *CUT_HEADERS),
                         cut_rows(snapshot, "model")))
    if snapshot.monitoring is not None:
        console.print(_table("serving models monitored", ("model", "team", "scheduled", "interval s", "last run s ago",
                                                           "monitored", "why not"), monitoring_rows(snapshot)))
    audit = snapshot.audit
    console.print(f"audit verify runs: {audit['audit_runs']}, passed {audit['audit_passed']}; "
                  f"latest {audit['audit_last_at'] or 'never'}")
    if snapshot.evidence is not None:
        console.print(_table("production versions: evidence", ("version", "evidence", "missing"),
                             evidence_rows(snapshot)))
    console.print(_table("resource utilisation (recent samples)",
                         ("replica", "team", "target", "pid", "samples", "CPU % mean", "CPU % max", "RSS MB mean",
                          "RSS MB max", "GPU MB"), utilisation_rows(snapshot)))
    console.print(gpu_line(snapshot))
