"""`modelyard promote MODEL VERSION --to ENV`: run the ``promote`` deployment on the stack's worker
and, with ``--wait``, follow it to where it ends: the copy deployed in the target environment, a
refusal with its reasons, or an approval request waiting for people (with its Prefect UI link)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console

from modelyard.catalog import PROMOTE_DEPLOYMENT, Action
from modelyard.settings import Settings, get_settings

console = Console()
errors = Console(stderr=True)

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
PAUSED = "PAUSED"
DEPLOY_OUTCOMES = (Action.DEPLOY_SUCCEEDED, Action.DEPLOY_ROLLED_BACK)


def register(app: typer.Typer) -> None:
    """Add ``promote`` to the ``modelyard`` command."""
    app.command("promote")(promote)


def run_record(records: list[dict], flow_run_id: str, actions: tuple[str, ...]) -> dict | None:
    """The last record of one of ``actions`` that the flow run ``flow_run_id`` wrote."""
    found = [r for r in records if r["action"] in actions
             and str((r.get("details") or {}).get("flow_run_id")) == flow_run_id]
    return found[-1] if found else None


def deploy_outcome(records: list[dict], subject: str) -> dict | None:
    """The first deploy outcome (succeeded, rolled back) recorded for ``subject``."""
    return next((r for r in records if r["subject"] == subject and r["action"] in DEPLOY_OUTCOMES), None)


def _state(settings: Settings, flow_run_id: str) -> tuple[str, str]:
    from uuid import UUID

    from prefect import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(settings.prefect_client_settings()), get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return (str(state.type.value), state.message or "") if state is not None else ("UNKNOWN", "")


def follow(settings: Settings, flow_run_id: str, timeout_s: float, poll_s: float = 2.0) -> tuple[int, str]:
    """Wait for the promote run to end or suspend, then for the copy's deploy; (exit code, what happened)."""
    from modelyard.ledger import ledger_from_settings

    ledger = ledger_from_settings(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        state, message = _state(settings, flow_run_id)
        records = ledger.records()
        if state == PAUSED:
            request = run_record(records, flow_run_id, (Action.APPROVAL_REQUESTED,))
            if request is not None:
                d = request["details"]
                return 0, (f"waiting for {d.get('required')} approval(s) into {d.get('environment')} until "
                           f"{d.get('deadline')}: {d.get('url')} (or `modelyard approve {request['subject'].replace('/', ' ')} "
                           f"--env {d.get('environment')}`)")
        if state in FINAL:
            refused = run_record(records, flow_run_id, (Action.PROMOTION_REFUSED,))
            if refused is not None:
                return 1, f"refused: {refused['details'].get('reason')}"
            copied = run_record(records, flow_run_id, (Action.PROMOTION_COPIED,))
            if copied is None:
                return (0 if state == "COMPLETED" else 1), f"{state.lower()}: {message or 'nothing was promoted'}"
            outcome = deploy_outcome(records, copied["subject"])
            if outcome is not None:
                ok = outcome["action"] == Action.DEPLOY_SUCCEEDED
                detail = outcome["details"].get("endpoint") if ok else outcome["details"].get("reason")
                return (0 if ok else 1), f"{copied['subject']}: {outcome['action']} ({detail})"
        if time.monotonic() > deadline:
            return 1, f"still {state.lower()} after {timeout_s:.0f} s; follow it in the Prefect UI"
        time.sleep(poll_s)


def promote(
    model: Annotated[str, typer.Argument(help="The registered model the version serves in (e.g. fraud-detector, "
                                              "fraud-detector-staging).")],
    version: Annotated[str, typer.Argument(help="Its version (the champion serving there).")],
    to: Annotated[str | None, typer.Option("--to", help="The environment to promote into (default: the next one).")] = None,
    identity: Annotated[str | None, typer.Option("--as", help="Who asks (four-eyes: they may not approve it).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run to the deploy or the pending approval.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait follows the run.")] = 900,
) -> None:
    """Promote MODEL VERSION into the next environment: policy, approval where asked, copy, deploy."""
    from modelyard.cli.runs import flow_run_url, run_deployment_and_wait
    from modelyard.environments import ENVIRONMENTS
    from modelyard.names import InvalidName, check_model_name, check_version

    try:
        check_model_name(model, "MODEL")
        check_version(version, "VERSION")
        if to is not None and to not in ENVIRONMENTS:
            raise InvalidName(f"--to: {to!r} is not one of {', '.join(ENVIRONMENTS)}")
        if identity is not None:
            from modelyard.approvals import check_identity

            identity = check_identity(identity, "--as")
    except ValueError as error:  # InvalidName is a ValueError
        errors.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from error
    settings = get_settings()
    parameters: dict[str, Any] = {"model": model, "version": version, "to": to, "requested_by": identity}
    flow_run = run_deployment_and_wait(settings, PROMOTE_DEPLOYMENT, parameters=parameters, timeout_s=0)
    console.print(f"promote {model} v{version}{' → ' + to if to else ''}: {flow_run_url(settings, flow_run)}",
                  markup=False, highlight=False)
    if not wait:
        return
    code, what = follow(settings, str(flow_run.id), timeout)
    (console if code == 0 else errors).print(what, markup=False, highlight=False)
    raise typer.Exit(code)
