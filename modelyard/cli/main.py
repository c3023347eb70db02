"""The ``modelyard`` command: the user's handle on the stack, the ledger and the lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelyard.catalog import CHAMPION, PIPELINE_DEPLOYMENT, Action
from modelyard.cli.audit import audit_app
from modelyard.cli.approvals import register as register_approvals
from modelyard.cli.incidents import register as register_incidents
from modelyard.cli.kpis import register as register_kpis
from modelyard.cli.promote import register as register_promote
from modelyard.cli.report import register as register_report
from modelyard.cli.stack import Stack, StackError
from modelyard.settings import get_settings

app = typer.Typer(help="modelyard: build, validate, evaluate, deploy, monitor and retrain models.", no_args_is_help=True)
stack_app = typer.Typer(help="Start, stop and inspect the embedded stack.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(audit_app, name="audit")
# Governance commands, each in its own module (imports inside the commands keep `--help` fast).
for _register in (register_promote, register_approvals, register_report, register_kpis, register_incidents):
    _register(app)

console = Console()
errors = Console(stderr=True)


def _resources(settings):
    """The stack's resources, imported on use: MLflow takes seconds to import, and the ledger
    commands do not need it."""
    from modelyard.resources import get_resources

    return get_resources(settings)


def _stack() -> Stack:
    return Stack(get_settings(), progress=lambda message: console.print(f"[dim]·[/dim] {message}"))


def _valid(check, value: str, field: str) -> str:
    """``check(value, field)`` (``modelyard.names``, an approver identity), else the reason on
    stderr and exit 2 (InvalidName is a ValueError)."""
    try:
        return check(value, field)
    except ValueError as error:
        errors.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from error


def _valid_model_reference(model: str) -> None:
    """A ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` with a valid name, version, alias."""
    from modelyard.names import check_model_name, check_version

    if not model.startswith("models:/"):
        return  # a model directory: its name is --name
    reference = model.removeprefix("models:/").strip("/")
    name, alias = reference.split("@", 1) if "@" in reference else (reference, None)
    if alias is not None:
        _valid(check_model_name, name, "MODEL name")
        _valid(check_model_name, alias, "MODEL alias")
        return
    name, _, number = name.rpartition("/")
    _valid(check_model_name, name, "MODEL name")
    _valid(check_version, number, "MODEL version")


def _print_status(rows) -> None:
    table = Table(title="modelyard stack")
    for column in ("component", "pid", "url", "health"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row.healthy else "red"
        table.add_row(row.name, str(row.pid or "-"), row.url or "-", f"[{colour}]{row.detail}[/{colour}]")
    console.print(table)


def _print_serving(rows) -> None:
    """Each serving model: its versions with their traffic share, replicas and restarts."""
    if not rows:
        console.print("serving: no model")
        return
    table = Table(title="serving")
    for column in ("model", "version", "traffic", "replicas alive/desired", "restarts", "endpoint", "health"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row.healthy else "red"
        for index, version in enumerate(row.versions or [{}]):
            first = index == 0
            table.add_row(row.model if first else "", f"v{version['version']}" if version else "-",
                          f"{version.get('weight', 0)}%" if version else "-",
                          f"{version['replicas_alive']}/{version['replicas_desired'] or '?'}" if version else "-",
                          str(version.get("restarts", 0)) if version else "-", (row.url or "-") if first else "",
                          f"[{colour}]{row.detail}[/{colour}]" if first else "")
    console.print(table)


@stack_app.command("up")
def stack_up() -> None:
    """Start the Prefect server, MLflow server, worker and deployments (harmless if running), then
    serve every model again at its versions and traffic split; exit 1 if one cannot be."""
    stack = _stack()
    try:
        rows = stack.up()
    except StackError as error:
        errors.print(f"[red]stack up failed:[/red] {error}")
        raise typer.Exit(1) from error
    _print_status(rows)
    _print_serving(stack.serving_status())
    console.print(f"Prefect UI: {stack.settings.prefect_ui_url}\nMLflow UI:  {stack.settings.mlflow_url}")
    failed = [restore for restore in stack.restores if restore.problem is not None]
    for restore in failed:
        errors.print(f"[red]not serving:[/red] {restore.describe()}")
    if failed:
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop only what `stack up` started."""
    stopped = _stack().down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each component with its pid, URL and health, then each serving model (versions, traffic
    share, replicas alive/desired, restarts, endpoint); exit 1 if any is unhealthy."""
    stack = _stack()
    rows = stack.status()
    serving = stack.serving_status()
    if as_json:
        print(json.dumps([{**row.as_dict(), "kind": "component"} for row in rows]
                         + [row.as_dict() for row in serving], indent=2))
    else:
        _print_status(rows)
        _print_serving(serving)
    if not all(row.healthy for row in [*rows, *serving]):
        raise typer.Exit(1)


@app.command("train")
def train(
    spec: Annotated[Path, typer.Argument(help="The model spec (YAML).", exists=True, dir_okay=False)],
    data: Annotated[Path | None, typer.Option(help="Train on this CSV/Parquet instead of the spec's source.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote to champion if it passes the policy.")] = False,
    requested_by: Annotated[str | None, typer.Option("--as", help=(
        "Who asks for this version (recorded as its author: four-eyes keeps them from approving its "
        "production promotion). Default: the modelyard service identity."))] = None,
) -> None:
    """Run the model pipeline (validate → build → evaluate → register) on the stack's worker."""
    from modelyard.cli.runs import flow_run_url, run_deployment_and_wait
    from modelyard.spec import SpecError, load_spec

    try:
        load_spec(spec)
    except SpecError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    settings = get_settings()
    parameters = {"spec_path": str(spec.resolve()), "promote_if_better": promote}
    if requested_by is not None:
        from modelyard.approvals import check_identity

        parameters["requested_by"] = _valid(check_identity, requested_by, "--as")
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
        from modelyard.resources.registry import registry_snapshot

        model = load_spec(spec).name
        snapshot = registry_snapshot(_resources(settings).registry, model)
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
    from modelyard.names import check_model_name, check_version

    _valid_model_reference(model)
    if name:
        _valid(check_model_name, name, "--name")
    if version:
        _valid(check_version, version, "--version")

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

    from modelyard.names import check_model_name, check_version

    _valid(check_model_name, model, "MODEL")
    if to is not None:
        _valid(check_version, to, "--to")
    settings = get_settings()
    os.environ.update(settings.child_env() | settings.prefect_client_env())  # the flow run reports to this stack's Prefect
    from deployments.strategies import RolloutFailed
    from flows.deploy import rollback as rollback_flow

    try:
        result = rollback_flow(model, to_version=to, reason=reason)
    except RolloutFailed as error:
        errors.print(f"[red]rollback failed:[/red] {error.reason}")
        raise typer.Exit(1) from error
    console.print(f"{model}: v{result['from_version']} → v{result['version']} serving again "
                  f"(switch took {result['rollback_s']} s)")


DEMO_SPEC = "specs/fraud.yaml"


def _wait_for_deploy(settings, model: str, version: str, timeout_s: float = 180) -> str | None:
    """The stable endpoint once the event-triggered deploy serves ``version``, else None."""
    resources = _resources(settings)
    active = resources.serving.wait_active(model, version, timeout_s, poll_s=2)
    if active is None or not resources.inference.wait_serving(active["endpoint"], version, 5):
        return None
    return active["endpoint"]


def _print_timeline(record: dict) -> None:
    from rich.markdown import Markdown

    from tasks.reporting import RolloutSummary, timeline_markdown

    console.print(Markdown(timeline_markdown(RolloutSummary.from_record(record))))


def _wait_ledger(settings, predicate, timeout_s: float, poll_s: float = 1.0) -> dict | None:
    """The first ledger record (newest last) matching ``predicate`` within ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in _resources(settings).ledger.records():
            if predicate(record):
                return record
        time.sleep(poll_s)
    return None


@app.command("demo")
def demo(
    scenario: Annotated[str, typer.Option(help="The drift injected into live traffic (see tasks/demo_data.py).")] = "channel_shift",
) -> None:
    """The closed loop on the embedded stack, by itself: the first champion is trained and
    deployed by the registry event alone; live traffic with delayed labels; drift injected;
    the monitor detects it, the event starts a retrain, the new version is evaluated, promoted
    and rolled out by canary. Ends with MTTD, time to recovery and links."""
    import shutil
    import time

    from modelyard.cli.runs import flow_run_url, run_deployment_and_wait
    from modelyard.spec import load_spec
    from modelyard.cli.demo_traffic import LabelFeeder, TrafficGenerator
    from modelyard.resources.registry import registry_snapshot
    from tasks.demo_data import apply_scenario, generate_transactions
    from tasks.kpis import record_time

    began = time.monotonic()
    stack = _stack()
    settings = stack.settings
    try:
        stack.up()
    except StackError as error:
        errors.print(f"[red]stack up failed:[/red] {error}")
        raise typer.Exit(1) from error
    spec_path = settings.project_dir / DEMO_SPEC
    spec = load_spec(spec_path)
    model = spec.name

    def step(text: str) -> None:
        console.print(f"[bold]{time.monotonic() - began:5.0f} s[/bold]  {text}")

    step(f"model pipeline on {DEMO_SPEC} (validate → build → evaluate → register) …")
    pipeline_run = run_deployment_and_wait(settings, PIPELINE_DEPLOYMENT,
                                           parameters={"spec_path": str(spec_path)}, timeout_s=1800)
    champion = registry_snapshot(_resources(settings).registry, model)["aliases"].get(CHAMPION)
    endpoint = _wait_for_deploy(settings, model, champion) if champion else None
    if not endpoint:
        errors.print(f"[red]{model} v{champion} is not serving; see `modelyard audit show --subject {model}/{champion}`[/red]")
        raise typer.Exit(1)
    step(f"{model} v{champion} deployed by the alias event alone: {endpoint}/invocations")

    population = generate_transactions(n_rows=20000, seed=7, start="2026-02-01").sample(frac=1.0, random_state=1)
    truth = dict(zip(population["transaction_id"].astype(str), population["is_fraud"].astype(int), strict=True))
    labels_dir = settings.state_dir / "labels" / model
    shutil.rmtree(labels_dir, ignore_errors=True)  # an earlier demo's labels name none of this run's predictions
    traffic = TrafficGenerator(endpoint, population, rate=40, id_column="transaction_id").start()
    labels = LabelFeeder(traffic, truth, spec.data.target, labels_dir).start()
    outcome: dict = {}
    try:
        step("live traffic at ~40 requests/s; labels arrive 15 s late; the monitor judges every "
             f"{spec.monitoring.interval_s} s …")
        time.sleep(20)
        drifted = apply_scenario(generate_transactions(n_rows=20000, seed=8, start="2026-02-15"), scenario,
                                 strength=2.5, seed=3)
        labels.add_truth(dict(zip(drifted["transaction_id"].astype(str), drifted["is_fraud"].astype(int), strict=True)))
        injected_at = traffic.switch(drifted)
        step(f"drift injected: '{scenario}' from now on")
        detected = _wait_ledger(settings, lambda r: r["action"] == Action.MONITOR_DRIFT
                                and r["subject"].startswith(f"{model}/") and record_time(r) >= injected_at,
                                timeout_s=spec.monitoring.interval_s * 3 + 60)
        if detected is None:
            errors.print("[red]the monitor did not detect the drift in time[/red]")
            raise typer.Exit(1)
        step(f"drift detected {record_time(detected) - injected_at:.0f} s after it was injected "
             f"({detected['details']['reason']}; top: {', '.join(detected['details']['top_features'])}) → retrain")
        finished = _wait_ledger(settings, lambda r: r["action"] == Action.RETRAIN_FINISHED
                                and r["subject"].startswith(f"{model}/") and record_time(r) >= record_time(detected),
                                timeout_s=600)
        if finished is None:
            errors.print("[red]the retrain did not finish in time[/red]")
            raise typer.Exit(1)
        new_version = finished["subject"].split("/", 1)[1]
        step(f"retrained v{new_version} on source + {finished['details'].get('used_traffic_rows', 0)} labelled live rows: "
             f"{finished['details']['outcome']}")
        if finished["details"]["outcome"] == "promoted":
            rolled = _wait_ledger(settings, lambda r: r["subject"] == f"{model}/{new_version}"
                                  and r["action"] in (Action.DEPLOY_SUCCEEDED, Action.DEPLOY_ROLLED_BACK), timeout_s=300)
            if rolled is not None:
                outcome["rollout"] = rolled
                # The deploy flow records the loop's MTTD and MTTR (tasks/kpis.py) before it reports success.
                recovered = [r for r in _resources(settings).ledger.records(subject=f"{model}/{new_version}")
                             if r["action"] == Action.KPI_RECOVERED]
                if recovered:
                    outcome |= {key: recovered[-1]["details"].get(key) for key in ("mttd_s", "mttr_s")}
                step(f"v{new_version}: {rolled['action']} ({rolled['details'].get('strategy', '')})")
    finally:
        labels.stop()
        traffic.stop()
    _demo_summary(settings, model, pipeline_run, traffic, outcome, flow_run_url)
    if outcome.get("mttr_s") is None:
        raise typer.Exit(1)
    if not _demo_governance(settings, spec, began, step):
        raise typer.Exit(1)
    step("done")


def _demo_governance(settings, spec, began: float, step) -> bool:
    """The environments after the loop: each version that served in dev was copied into staging
    by itself (the org policy allowing), and the newest one waits for a production approval in a
    suspended `promote` flow run. Shown from the ledger, with the link to the approval form."""
    from modelyard.environments import environment_model

    if "staging" not in spec.environments:
        return True
    model, records = spec.name, _resources(settings).ledger.records()
    newest = max((int(r["subject"].split("/", 1)[1]) for r in records
                  if r["action"] == Action.MODEL_PROMOTED and r["subject"].startswith(f"{model}/")), default=None)
    staging = environment_model(model, "staging")

    def staged(record: dict) -> bool:
        return (record["action"] == Action.DEPLOY_SUCCEEDED and record["subject"].startswith(f"{staging}/")
                and record["details"].get("source_version", _source_version(settings, record)) == str(newest))

    step(f"waiting for {model} v{newest} to be promoted into staging by itself …")
    served = _wait_ledger(settings, staged, timeout_s=300, poll_s=2)
    if served is None:
        errors.print(f"[red]{model} v{newest} did not reach staging; see `modelyard audit show --subject {staging}`[/red]")
        return False
    for record in _resources(settings).ledger.records():
        if record["action"] in (Action.POLICY_DECIDED, Action.PROMOTION_COPIED, Action.DEPLOY_SUCCEEDED) \
                and record["subject"].startswith(f"{staging}/") or (
                    record["action"] == Action.POLICY_DECIDED and record["subject"].startswith(f"{model}/")):
            console.print(f"  {record['time'][11:19]}  {record['action']:<18} {record['subject']}")
    step(f"staging serves {served['subject']} at {served['details'].get('endpoint')} (promoted without a person: "
         "the org policy allowed it)")
    if "production" not in spec.environments or spec.environment("production").promotion != "approval":
        return True
    staged_version = served["subject"].split("/", 1)[1]
    pending = _wait_ledger(settings, lambda r: r["action"] == Action.APPROVAL_REQUESTED
                           and r["subject"] == f"{staging}/{staged_version}", timeout_s=180, poll_s=2)
    if pending is None:
        errors.print(f"[red]no production approval was requested for {staging} v{staged_version}[/red]")
        return False
    details = pending["details"]
    console.print(f"[bold]production approval pending[/bold] for {staging} v{staged_version} "
                  f"(needs {details.get('required', 1)} approver(s) other than {details.get('author', 'its author')}, "
                  f"until {details.get('deadline')}):")
    console.print(f"  approve in the Prefect UI: {details.get('url')}")
    console.print(f"  or: modelyard approvers add <you> && modelyard approve {staging} {staged_version} "
                  "--env production --as <you>")
    return True


def _source_version(settings, record: dict) -> str | None:
    """The dev version a staging deploy record serves (its copy's source tag), for the demo's wait."""
    from modelyard.environments import TAG_ORIGIN

    model, version = record["subject"].split("/", 1)
    try:
        origin = _resources(settings).registry.get_model_version(model, version).tags.get(TAG_ORIGIN, "")
    except Exception:  # noqa: BLE001 - not copied (yet): not the one waited for
        return None
    return origin.rsplit("/", 1)[-1] if origin else None


def _demo_summary(settings, model: str, pipeline_run, traffic, outcome: dict, flow_run_url) -> None:
    from modelyard.resources.registry import artifact_url, experiment_url, model_url
    from tasks.kpis import MTTD_MEANING, MTTR_MEANING
    from tasks.reporting import write_kpi_report

    resources = _resources(settings)
    if "rollout" in outcome:
        _print_timeline(outcome["rollout"])
    seconds = {key: outcome.get(key) for key in ("mttd_s", "mttr_s")}
    table = Table(title="closed loop")
    table.add_column("measure")
    table.add_column("value")
    table.add_row(f"MTTD ({MTTD_MEANING})", "-" if seconds["mttd_s"] is None else f"{seconds['mttd_s']:.1f} s")
    table.add_row(f"MTTR ({MTTR_MEANING})", "-" if seconds["mttr_s"] is None else f"{seconds['mttr_s']:.1f} s")
    table.add_row("requests sent / failed", f"{traffic.sent} / {traffic.failed}")
    console.print(table)
    if any(value is not None for value in seconds.values()):
        resources.ledger.append("demo", Action.KPI_CLOSED_LOOP, model,
                                {key: round(value, 3) for key, value in seconds.items() if value is not None})
    client = resources.registry
    experiment = client.get_experiment_by_name(f"{model}-monitoring")
    links = [("Prefect UI (flow runs: monitor, retrain, deploy)", f"{settings.prefect_ui_url}/runs"),
             ("first pipeline run", flow_run_url(settings, pipeline_run)),
             ("MLflow model registry", model_url(settings.mlflow_url, model))]
    if experiment is not None:
        links.append(("MLflow monitoring runs", experiment_url(settings.mlflow_url, experiment.experiment_id)))
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`modelyard.status` = 'alert'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            html = [a.path for a in client.list_artifacts(runs[0].info.run_id, "evidently") if a.path.endswith(".html")]
            if html:
                links.append(("Evidently drift report", artifact_url(settings.mlflow_url, runs[0].info.run_id, html[0])))
    report = write_kpi_report(resources.ledger.records(), model, settings.state_dir / "reports" / "delivery-kpis.html")
    links.append(("delivery KPIs (also the 'delivery-kpis' artifact in the Prefect UI)", f"file://{report.resolve()}"))
    for name, url in links:
        console.print(f"{name}: {url}")
    verification = resources.ledger.verify()
    console.print(f"audit ledger: {verification.records} records, {'verified' if verification.ok else verification.problem}")


if __name__ == "__main__":
    app()
