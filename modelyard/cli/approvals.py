"""`modelyard approve|reject|approvals` and `modelyard approvers`: decide a pending promotion from
the shell, list what waits for a person, and enrol the people who may decide (modelyard/approvals.py).

A decision from here goes the same way as the Prefect UI's form: it resumes the suspended
``promote`` run with an ``ApprovalForm``, and the flow verifies the approver's code and records
the outcome, which this command then waits for and prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.approvals import (
    CLOSING_ACTIONS,
    CODE_DIGITS,
    PendingApproval,
    check_identity,
    enrol,
    enrolments,
    expired_requests,
    flow_run_states,
    open_requests,
    remove_enrolment,
    secret_from_file,
)
from modelyard.catalog import Action
from modelyard.environments import ENVIRONMENTS, TAG_ORIGIN, split_environment
from modelyard.ledger import ledger_from_settings
from modelyard.settings import Settings, get_settings

console = Console()
errors = Console(stderr=True)

approvers_app = typer.Typer(help="Enrol, list and remove the people who may approve promotions.",
                            no_args_is_help=True)

Model = Annotated[str, typer.Argument(help="The version's registered model being promoted (e.g. "
                                           "fraud-detector-staging), or its dev model name.")]
Version = Annotated[str, typer.Argument(help="The version number in that model.")]
Env = Annotated[str, typer.Option("--env", help="The environment it is promoted into.")]
Identity = Annotated[str, typer.Option("--as", help="Your approver identity (`modelyard approvers add`).")]
Code = Annotated[str | None, typer.Option(help="The current 6-digit code from your authenticator app; "
                                                "asked for when not given.")]
Comment = Annotated[str, typer.Option(help="Why: kept in the ledger and on the MLflow version.")]
SecretFile = Annotated[Path | None, typer.Option(
    "--secret-file", exists=True, dir_okay=False,
    help="Compute the code from this TOTP secret (your enrolment file or otpauth:// URI) instead of asking.")]
Wait = Annotated[float, typer.Option(help="Seconds to wait for the promote run to record the outcome.")]


def register(app: typer.Typer) -> None:
    """Add approve, reject, approvals and approvers to the ``modelyard`` command."""
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.command("approvals")(approvals)
    app.add_typer(approvers_app, name="approvers")


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


# -- deciding -----------------------------------------------------------------------------------


def approve(model: Model, version: Version, env: Env, identity: Identity, code: Code = None, comment: Comment = "",
            secret_file: SecretFile = None, wait: Wait = 180) -> None:
    """Approve the pending promotion of MODEL VERSION into --env, as --as."""
    _decide("approve", model, version, env, identity, code, comment, secret_file, wait)


def reject(model: Model, version: Version, env: Env, identity: Identity, code: Code = None, comment: Comment = "",
           secret_file: SecretFile = None, wait: Wait = 180) -> None:
    """Reject the pending promotion of MODEL VERSION into --env, as --as: the version is not copied."""
    _decide("reject", model, version, env, identity, code, comment, secret_file, wait)


def _decide(decision: str, model: str, version: str, env: str, identity: str, code: str | None, comment: str,
            secret_file: Path | None, wait_s: float) -> None:
    settings = get_settings()
    if env not in ENVIRONMENTS:
        raise _fail(f"--env: {env!r} is not one of {', '.join(ENVIRONMENTS)}", 2)
    try:
        identity = check_identity(identity, "--as")
    except ValueError as error:
        raise _fail(str(error), 2) from error
    request = _pending_request(settings, model, version, env)
    console.print(f"{escape(request.subject)} → {request.environment}: author {escape(request.author or '?')}, "
                  f"requested by {escape(request.requested_by or 'automation')}, due {request.deadline}; "
                  f"the evidence: {request.url}")
    code = _code(code, secret_file)
    ledger = ledger_from_settings(settings)
    records = ledger.records()
    after = records[-1]["seq"] if records else 0
    _resume(settings, request, {"approver": identity, "decision": decision, "comment": comment, "code": code})
    console.print(f"sent to the promote run of {request.subject} → {request.environment}; waiting for its verdict "
                  f"(at most {wait_s:g} s)")
    outcome = _wait_for_outcome(settings, request.flow_run_id, after, wait_s)
    if outcome is None:
        raise _fail(f"no decision recorded within {wait_s:g} s; the run: {request.url}")
    _print_outcome(outcome, request)


def _code(code: str | None, secret_file: Path | None) -> str:
    """The one-time code: given, computed from a secret file, or asked for (hidden)."""
    if code is None and secret_file is not None:
        import pyotp

        try:
            code = pyotp.TOTP(secret_from_file(secret_file)).now()
        except (ValueError, KeyError, TypeError) as error:  # the error's text may quote the secret: not shown
            raise _fail(f"--secret-file: {secret_file} holds no TOTP secret ({type(error).__name__})", 2) from None
    if code is None:
        code = typer.prompt(f"{CODE_DIGITS}-digit code from your authenticator app", hide_input=True)
    code = code.strip().replace(" ", "")
    if len(code) != CODE_DIGITS or not code.isdigit():
        raise _fail(f"--code: must be the {CODE_DIGITS} digits your authenticator app shows", 2)
    return code


def _resume(settings: Settings, request: PendingApproval, run_input: dict[str, Any]) -> None:
    """Resume the suspended run with the form's input, as the UI's Resume button does."""
    from uuid import UUID

    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import temporary_settings

    try:
        with temporary_settings(settings.prefect_client_settings()):
            resume_flow_run(UUID(request.flow_run_id), run_input=run_input)
    except FlowPauseTimeout:
        raise _fail(f"expired: the approval of {request.subject} → {request.environment} timed out "
                    f"(deadline {request.deadline}); promote it again") from None
    except NotPausedError:
        raise _fail(f"the promote run of {request.subject} is no longer waiting for a decision: {request.url}") from None
    except RuntimeError as error:
        raise _fail(f"Prefect refused the input: {error}") from None


def _wait_for_outcome(settings: Settings, flow_run_id: str, after_seq: int, wait_s: float) -> dict | None:
    from modelyard.approvals import approval_outcome

    ledger = ledger_from_settings(settings)
    deadline = time.monotonic() + wait_s
    while True:
        outcome = approval_outcome(ledger.records(), flow_run_id, after_seq)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        time.sleep(1)


def _print_outcome(record: dict, request: PendingApproval) -> None:
    details = record.get("details") or {}
    who = details.get("identity") or "?"
    action = record["action"]
    where = f"{request.subject} → {request.environment}"
    if action == Action.APPROVAL_GIVEN:
        console.print(f"[green]approved[/green] {escape(where)} by {escape(who)} "
                      f"({escape(details.get('comment') or 'no comment')}); the promotion goes on: {request.url}")
    elif action == Action.APPROVAL_REJECTED:
        console.print(f"[yellow]rejected[/yellow] {escape(where)} by {escape(who)} "
                      f"({escape(details.get('comment') or 'no comment')}); it is not promoted: {request.url}")
    elif action == Action.APPROVAL_REFUSED:
        raise _fail(f"refused: {details.get('reason', 'the input did not count')}; {where} still waits: {request.url}")
    else:
        raise _fail(f"{action}: {details.get('reason', '')} ({where}): {request.url}")


# -- finding the request ----------------------------------------------------------------------------


def _pending_request(settings: Settings, model: str, version: str, env: str) -> PendingApproval:
    """The open request for MODEL VERSION into ENV whose run is suspended, else a clear error: none
    (with what is pending), another environment, or expired."""
    records = ledger_from_settings(settings).records()
    requests = open_requests(records)
    matching = _matching(settings, requests, model, version)
    here = [request for request in matching if request.environment == env]
    if not matching:
        closed = _closed(records, model, version, env)
        raise _fail(closed or f"no pending approval for {model} {version} into {env}. "
                              + _pending_summary(requests))
    if not here:
        raise _fail(f"{model} {version} waits for approval into "
                    f"{', '.join(sorted({request.environment for request in matching}))}, not {env}")
    request = here[-1]
    state = flow_run_states(settings, [request.flow_run_id]).get(request.flow_run_id)
    from datetime import UTC, datetime

    if expired_requests([request], {request.flow_run_id: state}, datetime.now(UTC)):
        raise _fail(f"expired: the approval of {request.subject} into {env} was due by {request.deadline}; "
                    "the promotion is refused (promote it again)")
    if state is None or str(state.type.value) != "PAUSED":
        raise _fail(f"the promote run of {request.subject} is {state.name if state else 'gone'}, not waiting for a "
                    f"decision; try again in a few seconds: {request.url}")
    return request


def _matching(settings: Settings, requests: list[PendingApproval], model: str, version: str) -> list[PendingApproval]:
    """Requests for this source version, or for the version first registered as MODEL VERSION in dev."""
    found = [r for r in requests if (r.model, r.version) == (model, version) or r.origin == f"{model}/{version}"]
    if found:
        return found
    unknown_origin = [r for r in requests if r.origin is None and split_environment(r.model)[0] == model]
    if not unknown_origin:
        return []
    from modelyard.resources import get_resources

    registry = get_resources(settings).registry
    return [r for r in unknown_origin
            if registry.get_model_version(r.model, r.version).tags.get(TAG_ORIGIN) == f"{model}/{version}"]


def _closed(records: list[dict], model: str, version: str, env: str) -> str | None:
    """Why the last request for this version into ``env`` is no longer open, if there was one."""
    subject = f"{model}/{version}"
    asked = [str(r["details"].get("flow_run_id")) for r in records
             if r.get("action") == Action.APPROVAL_REQUESTED and r.get("subject") == subject
             and (r.get("details") or {}).get("environment") == env]
    if not asked:
        return None
    closing = [r for r in records if str((r.get("details") or {}).get("flow_run_id")) == asked[-1]
               and r.get("action") in CLOSING_ACTIONS]
    timed_out = [r for r in closing if r["action"] == Action.APPROVAL_TIMED_OUT]
    if timed_out:
        return (f"expired: the approval of {subject} into {env} was due by {timed_out[0]['details'].get('deadline')} "
                "and timed out; the promotion was refused (promote it again)")
    if closing:
        return f"the promotion of {subject} into {env} is already decided: {closing[0]['action']} at {closing[0]['time']}"
    return None


def _pending_summary(requests: list[PendingApproval]) -> str:
    """What the ledger says waits for a decision (``modelyard approvals`` also asks Prefect)."""
    if not requests:
        return "Nothing waits for approval."
    return "Waiting: " + "; ".join(f"{r.model} {r.version} → {r.environment} ({r.url})" for r in requests)


# -- listing ------------------------------------------------------------------------------------------


def approvals(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False) -> None:
    """Promotions waiting for a person: model, version, environment, who asked, until when, and the
    Prefect UI link of the suspended run (its form approves or rejects)."""
    from dataclasses import asdict

    from modelyard.approvals import pending_approvals

    settings = get_settings()
    pending = pending_approvals(settings, ledger_from_settings(settings).records())
    if as_json:
        for item in pending:
            print(json.dumps(asdict(item), sort_keys=True))
        return
    if not pending:
        console.print("nothing waits for approval")
        return
    table = Table(title="pending approvals")
    for column in ("model", "version", "env", "requested by", "author", "needs", "deadline", "Prefect UI"):
        table.add_column(column, overflow="fold")
    for item in pending:
        table.add_row(item.model, item.version, item.environment, item.requested_by or "-", item.author or "-",
                      str(item.required), item.deadline or "-", item.url)
    console.print(table)


# -- approvers ----------------------------------------------------------------------------------------


def _record(settings: Settings, action: Action, subject: str, details: dict) -> None:
    from modelyard.audit import append_audit_record

    append_audit_record(action, subject, details, settings)


@approvers_app.command("add")
def approvers_add(
    identity: Annotated[str, typer.Argument(help="The approver's identity (e.g. alice or alice@example.com).")],
    team: Annotated[str | None, typer.Option(help="The approver's team.")] = None,
) -> None:
    """Enrol an approver: a TOTP secret for an authenticator app, shown once as an otpauth:// URI."""
    settings = get_settings()
    try:
        enrolment, path = enrol(settings, identity, team)
    except ValueError as error:
        raise _fail(str(error), 2) from error
    try:
        _record(settings, Action.APPROVER_ENROLLED, f"approver:{enrolment.identity}", enrolment.public())
    except BaseException:
        remove_enrolment(settings, enrolment.identity)  # not in the ledger: not enrolled
        raise
    console.print(f"enrolled [bold]{escape(enrolment.identity)}[/bold]"
                  + (f" (team {escape(enrolment.team)})" if enrolment.team else ""))
    console.print("Add this to an authenticator app (it is shown only now; it holds the secret):")
    print(enrolment.provisioning_uri())
    print(f"secret file (0600, the stack's credentials): {path}")
    console.print(f"approve with: modelyard approve MODEL VERSION --env ENV --as {escape(enrolment.identity)}")


@approvers_app.command("list")
def approvers_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False) -> None:
    """Enrolled approvers, with team and enrolment time (never a secret)."""
    rows = [enrolment.public() for enrolment in enrolments(get_settings())]
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    if not rows:
        console.print("no approver enrolled: `modelyard approvers add IDENTITY`")
        return
    table = Table(title="approvers")
    for column in ("identity", "team", "enrolled at"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["identity"], row["team"] or "-", row["enrolled_at"])
    console.print(table)


@approvers_app.command("remove")
def approvers_remove(identity: Annotated[str, typer.Argument(help="The approver's identity.")]) -> None:
    """Remove an approver: the secret is deleted, so its codes no longer count."""
    settings = get_settings()
    try:
        removed = remove_enrolment(settings, identity)
    except ValueError as error:
        raise _fail(str(error), 2) from error
    _record(settings, Action.APPROVER_REMOVED, f"approver:{removed.identity}", removed.public())
    console.print(f"removed approver {escape(removed.identity)}")
