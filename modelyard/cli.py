"""The ``modelyard`` command: the user's handle on the stack, the ledger and the lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelyard.ledger import ledger_from_settings
from modelyard.settings import get_settings
from modelyard.stack import Stack, StackError

app = typer.Typer(help="modelyard: build, validate, evaluate, deploy, monitor and retrain models.", no_args_is_help=True)
stack_app = typer.Typer(help="Start, stop and inspect the embedded stack.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit ledger.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(audit_app, name="audit")

console = Console()
errors = Console(stderr=True)


def _stack() -> Stack:
    return Stack(get_settings(), progress=lambda message: console.print(f"[dim]·[/dim] {message}"))


def _print_status(rows) -> None:
    table = Table(title="modelyard stack")
    for column in ("component", "pid", "url", "health"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row.healthy else "red"
        table.add_row(row.name, str(row.pid or "-"), row.url or "-", f"[{colour}]{row.detail}[/{colour}]")
    console.print(table)


@stack_app.command("up")
def stack_up() -> None:
    """Start the Prefect server, MLflow server, worker and deployments (harmless if running)."""
    stack = _stack()
    try:
        rows = stack.up()
    except StackError as error:
        errors.print(f"[red]stack up failed:[/red] {error}")
        raise typer.Exit(1) from error
    _print_status(rows)
    console.print(f"Prefect UI: {stack.settings.prefect_ui_url}\nMLflow UI:  {stack.settings.mlflow_url}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop only what `stack up` started."""
    stopped = _stack().down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each component with its pid, URL and health; exit 1 if any is unhealthy."""
    rows = _stack().status()
    if as_json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        _print_status(rows)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain; name the first record that was edited, deleted, inserted or reordered."""
    settings = get_settings()
    result = ledger_from_settings(settings).verify()
    if result.ok:
        console.print(f"[green]ledger OK[/green]: {result.records} records verified ({settings.ledger_path})")
        return
    errors.print(f"[red]ledger BROKEN[/red] after {result.records} good records: {result.problem}")
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


@app.command("train")
def train(
    spec: Annotated[Path, typer.Argument(help="The model spec (YAML).", exists=True, dir_okay=False)],
    data: Annotated[Path | None, typer.Option(help="Train on this CSV/Parquet instead of the spec's source.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote to champion if it passes the policy.")] = False,
) -> None:
    """Run the model pipeline (validate → build → evaluate → register) on the stack's worker."""
    from modelyard.runs import flow_run_url, run_deployment_and_wait
    from modelyard.spec import SpecError, load_spec

    try:
        load_spec(spec)
    except SpecError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    settings = get_settings()
    parameters = {"spec_path": str(spec.resolve()), "promote_if_better": promote}
    if data is not None:
        parameters["data_path"] = str(data.resolve())
    console.print(f"running model-pipeline for {spec} …")
    from modelyard.work_pools import pipeline_deployment_for

    deployment = pipeline_deployment_for(load_spec(spec), settings)
    flow_run = run_deployment_and_wait(settings, deployment, parameters=parameters, timeout_s=1800)
    ok = bool(flow_run.state and flow_run.state.is_completed())
    console.print(f"{'[green]' if ok else '[red]'}{flow_run.state.name if flow_run.state else 'unknown'}[/] "
                  f"{flow_run_url(settings, flow_run)}")
    if ok:
        from tasks.registry import registry_snapshot, tracking_client

        model = load_spec(spec).name
        snapshot = registry_snapshot(tracking_client(settings), model)
        console.print(f"{model}: versions {snapshot['versions']}, aliases {snapshot['aliases']}")
    else:
        errors.print(str(flow_run.state.message if flow_run.state else ""))
        raise typer.Exit(1)


@app.command("serve")
def serve(
    model: Annotated[str, typer.Argument(help="models:/NAME/VERSION, models:/NAME@ALIAS, or a model directory.")],
    port: Annotated[int, typer.Option(help="Port to listen on (loopback by default).")] = 8080,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not write the prediction log.")] = False,
    uds: Annotated[str | None, typer.Option(help="Also listen on this unix socket (the router's way in).")] = None,
    expected_sha256: Annotated[str | None, typer.Option(help="Refuse a model directory whose files hash otherwise.")] = None,
    name: Annotated[str, typer.Option(help="Model name to report for a model directory.")] = "",
    version: Annotated[str, typer.Option(help="Model version to report for a model directory.")] = "",
) -> None:
    """Serve one model version over the MLflow scoring and Open Inference v2 protocols."""
    from deployments.server.main import serve as run_server

    try:
        run_server(model, get_settings(), port=port, log_predictions=not no_log, uds=uds,
                   expected_digest=expected_sha256, name=name, version=version)
    except ValueError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error


@app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="The model whose previous version should serve again.")],
    to: Annotated[str | None, typer.Option(help="Roll back to this version instead of the previous one.")] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit ledger.")] = "manual",
) -> None:
    """Put the version that served before back in service, now (a Prefect flow run)."""
    import os

    settings = get_settings()
    os.environ.update(settings.prefect_client_env())  # the flow run reports to this stack's Prefect
    from deployments.strategies import RolloutFailed
    from flows.deploy import rollback as rollback_flow

    try:
        result = rollback_flow(model, to_version=to, reason=reason)
    except RolloutFailed as error:
        errors.print(f"[red]rollback failed:[/red] {error.reason}")
        raise typer.Exit(1) from error
    console.print(f"{model}: v{result['from_version']} → v{result['version']} serving again "
                  f"(switch took {result['rollback_s']:.2f} s)")


DEMO_SPEC = "specs/fraud.yaml"


def _wait_for_deploy(settings, model: str, version: str, timeout_s: float = 180) -> str | None:
    """The stable endpoint once the event-triggered deploy serves ``version``, else None."""
    import time

    from deployments.strategies import wait_serving

    path = settings.state_dir / "serving" / f"{model}.active.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            active = json.loads(path.read_text())
            if active.get("version") == version and wait_serving(settings, active["endpoint"], version, 5):
                return active["endpoint"]
        time.sleep(2)
    return None


def _rollout_record(settings, model: str, version: str) -> dict | None:
    records = [r for r in ledger_from_settings(settings).records(subject=f"{model}/{version}")
               if r["action"] in ("deploy.succeeded", "deploy.rolled_back")]
    return records[-1] if records else None


def _print_timeline(record: dict) -> None:
    table = Table(title=f"rollout of {record['subject']}: {record['action']}")
    for column in ("t (s)", "step", "traffic", "detail"):
        table.add_column(column, overflow="fold")
    for step in record["details"].get("timeline", []):
        traffic = ", ".join(f"v{v} {w}%" for v, w in step.get("weights", {}).items())
        colour = "green" if step["ok"] else "red"
        table.add_row(f"{step['t_s']:.1f}", f"[{colour}]{step['step']}[/{colour}]", traffic, step["detail"][:160])
    console.print(table)


@app.command("demo")
def demo() -> None:
    """The lifecycle on the embedded stack: smoke flow; first champion trained and deployed by
    the registry event alone; live traffic; a second version trained, promoted and rolled out
    by canary with gates."""
    from modelyard.runs import flow_run_url, run_deployment_and_wait
    from modelyard.spec import load_spec
    from modelyard.traffic import TrafficGenerator
    from tasks.demo_data import generate_transactions
    from tasks.registry import registry_snapshot, tracking_client

    stack = _stack()
    settings = stack.settings
    try:
        stack.up()
    except StackError as error:
        errors.print(f"[red]stack up failed:[/red] {error}")
        raise typer.Exit(1) from error
    runs = []
    spec_path = settings.project_dir / DEMO_SPEC
    model = load_spec(spec_path).name
    console.print("1/4 smoke flow through the worker …")
    runs.append(("smoke", run_deployment_and_wait(settings, "smoke/smoke")))
    console.print(f"2/4 model pipeline on {DEMO_SPEC} (validate → build → evaluate → register) …")
    runs.append(("model-pipeline v1", run_deployment_and_wait(
        settings, "model-pipeline/model-pipeline", parameters={"spec_path": str(spec_path)}, timeout_s=1800)))
    champion = registry_snapshot(tracking_client(settings), model)["aliases"].get("champion")
    endpoint = _wait_for_deploy(settings, model, champion) if champion else None
    if not endpoint:
        errors.print(f"[red]{model} v{champion} is not serving; see `modelyard audit show --subject {model}/{champion}`[/red]")
        raise typer.Exit(1)
    console.print(f"   deployed by the alias event alone: {model} v{champion} at {endpoint}/invocations")

    console.print("3/4 live traffic: transactions scored at ~40 requests/s through the stable endpoint …")
    live = generate_transactions(n_rows=5000, seed=7, start="2026-02-01")
    traffic = TrafficGenerator(endpoint, live, rate=40, id_column="transaction_id").start()
    try:
        console.print("4/4 a second version on fresh data: trained, promoted, rolled out by canary …")
        fresh = settings.state_dir / "demo" / "transactions-2.parquet"
        fresh.parent.mkdir(parents=True, exist_ok=True)
        generate_transactions(n_rows=20000, seed=43, start="2026-01-15").to_parquet(fresh, index=False)
        runs.append(("model-pipeline v2", run_deployment_and_wait(
            settings, "model-pipeline/model-pipeline", timeout_s=1800,
            parameters={"spec_path": str(spec_path), "data_path": str(fresh), "promote_if_better": True})))
        second = registry_snapshot(tracking_client(settings), model)["aliases"].get("champion")
        rollout = None
        if second and second != champion:
            import time

            deadline = time.monotonic() + 300  # the canary bakes; the flow records its outcome last
            while rollout is None and time.monotonic() < deadline:
                time.sleep(2)
                rollout = _rollout_record(settings, model, second)
    finally:
        traffic.stop()
    table = Table(title="modelyard demo")
    for column in ("flow", "run", "state", "link"):
        table.add_column(column)
    for flow_name, flow_run in runs:
        state = flow_run.state.name if flow_run.state else "unknown"
        table.add_row(flow_name, flow_run.name, state, flow_run_url(settings, flow_run))
    console.print(table)
    if rollout is not None:
        _print_timeline(rollout)
    else:
        console.print(f"[yellow]the second version did not become champion (v{second}); champion stays v{champion}[/yellow]")
    console.print(f"traffic: {traffic.sent} requests, {traffic.failed} failed ({dict(traffic.statuses)})")
    verification = ledger_from_settings(settings).verify()
    console.print(f"audit ledger: {verification.records} records, {'verified' if verification.ok else verification.problem}")
    console.print(f"\nPrefect UI: {settings.prefect_ui_url}\nMLflow UI:  {settings.mlflow_url}/#/models/{model}\n"
                  f"endpoint:   {endpoint}/invocations")
    ok = all(r.state and r.state.is_completed() for _, r in runs) and verification.ok
    if not ok or rollout is None or rollout["action"] != "deploy.succeeded":
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
