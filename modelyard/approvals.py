"""Human approval of a promotion by authenticated approvers.

Prefect OSS has one shared UI login and no user identities, so a name typed into a form proves
nothing. An approver is therefore an enrolled identity with a TOTP secret (RFC 6238, ``pyotp``):
``modelyard approvers add`` writes it once into the stack's credentials directory (0600 files in
a 0700 directory) and shows the ``otpauth://`` URI for an authenticator app. An approval input
(``ApprovalForm``, the form of a suspended ``promote`` run in the Prefect UI, or ``modelyard
approve``) carries the identity and a current 6-digit code; the promote flow checks both here
(``verify_approval``). A code lives for one 30 s step (±1 for clock drift), and a used one is
remembered, so the run input Prefect keeps holds nothing that can be replayed.

The ledger holds the requests and decisions (``approval.*``); what is pending is read from it and
from Prefect (``pending_approvals``), and requests whose time ran out are closed by the reconciler
(``record_expired_approvals``). Secrets never reach a log, a message or the ledger.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp

from modelyard.catalog import Action
from modelyard.policy import Approval
from modelyard.settings import Settings

__all__ = [
    "ApprovalForm", "ApprovalRefused", "Enrolment", "PendingApproval", "VerifiedApproval", "approval_outcome",
    "check_identity", "enrol", "enrolment", "enrolments", "expired_requests", "open_requests",
    "pending_approvals", "record_expired_approvals", "remove_enrolment", "secret_from_file", "verify_approval",
]

ISSUER = "modelyard"
CODE_DIGITS = 6
CODE_STEP_S = 30
CLOCK_DRIFT_STEPS = 1  # a code of the step before or after now still counts (phones drift)
USED_CODES_KEPT_S = 600  # longer than any code is valid, so a replay is always caught
FAILED_CODES_LIMIT = 5  # wrong codes per identity within FAILED_CODES_WINDOW_S before it is locked out
FAILED_CODES_WINDOW_S = 600
# Prefect's pause-expiry service (prefect.server.services.pause_expirations, every
# PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS, default 5 s) fails an expired run with this.
PAUSE_EXPIRED_MESSAGE = "The flow was paused and never resumed."
IDENTITY_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,99}")
CODE_PATTERN = r"^[0-9]{6}$"
CODE_DESCRIPTION = ("the 6-digit code from your authenticator app (`modelyard approvers add`); "
                    "not your password")
DECISIONS = ("approve", "reject")
# A person's answer to one approval request, as the promote flow records it.
OUTCOME_ACTIONS = frozenset({Action.APPROVAL_GIVEN, Action.APPROVAL_REJECTED, Action.APPROVAL_REFUSED})
# Records after which a request is no longer pending.
CLOSING_ACTIONS = frozenset({Action.APPROVAL_REJECTED, Action.APPROVAL_TIMED_OUT, Action.APPROVAL_SUPERSEDED,
                             Action.PROMOTION_COPIED, Action.PROMOTION_REFUSED})
PAUSED = "PAUSED"  # Prefect's state type of a suspended (or paused) run


# -- the form -----------------------------------------------------------------------------------


def _build_form() -> type:
    """The typed input a suspended promote run waits for. Built on first use: ``prefect.input``
    takes a second to import, which ``modelyard approvers list`` has no need of."""
    from typing import Literal

    from prefect.input import RunInput
    from pydantic import Field

    class ApprovalForm(RunInput):
        """Who decides (an enrolled approver), what, why, and the proof that it is them."""

        approver: str = Field(min_length=1, max_length=100, description=(
            "your approver identity, as enrolled with `modelyard approvers add`"))
        decision: Literal["approve", "reject"] = Field("approve", description="approve or reject this promotion")
        comment: str = Field("", max_length=2000, description="why (kept in the ledger and on the MLflow version)")
        code: str = Field(pattern=CODE_PATTERN, description=CODE_DESCRIPTION)

    ApprovalForm.__module__ = __name__
    ApprovalForm.__qualname__ = "ApprovalForm"
    return ApprovalForm


def __getattr__(name: str) -> Any:
    if name == "ApprovalForm":
        form = _build_form()
        globals()["ApprovalForm"] = form
        return form
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- enrolment ----------------------------------------------------------------------------------


def check_identity(identity: object, field_name: str = "identity") -> str:
    """An approver identity, trimmed and lower-cased (identities compare without case), or
    ValueError naming the field: letters, digits and ``. _ @ + -``, so that it is a safe file name."""
    text = identity.strip().lower() if isinstance(identity, str) else identity
    if not isinstance(text, str) or not IDENTITY_PATTERN.fullmatch(text):
        raise ValueError(f"{field_name}: {identity!r} is not a valid approver identity (letters, digits and "
                         f"'._@+-', starting with a letter or digit, at most 100 characters)")
    return text


@dataclass(frozen=True)
class Enrolment:
    """One approver: identity, team, when enrolled, and the TOTP secret (never printed by repr)."""

    identity: str
    team: str | None
    enrolled_at: str
    secret: str = field(repr=False)

    def totp(self) -> pyotp.TOTP:
        return pyotp.TOTP(self.secret, digits=CODE_DIGITS, interval=CODE_STEP_S, issuer=ISSUER, name=self.identity)

    def provisioning_uri(self) -> str:
        """The ``otpauth://`` URI an authenticator app scans (it holds the secret: show it once)."""
        return self.totp().provisioning_uri()

    def public(self) -> dict[str, Any]:
        """What may be shown and recorded: everything but the secret."""
        return {"identity": self.identity, "team": self.team, "enrolled_at": self.enrolled_at}


def approvers_dir(settings: Settings) -> Path:
    """Where enrolments live: under the stack's credentials directory, 0700."""
    directory = settings.credentials_dir / "approvers"
    directory.mkdir(parents=True, exist_ok=True)
    settings.credentials_dir.chmod(0o700)
    directory.chmod(0o700)
    return directory


def enrolment_path(settings: Settings, identity: str) -> Path:
    return approvers_dir(settings) / f"{check_identity(identity)}.json"


def enrol(settings: Settings, identity: str, team: str | None = None) -> tuple[Enrolment, Path]:
    """A new approver with a fresh secret, written once (0600); ValueError if already enrolled."""
    identity = check_identity(identity)
    if team is not None and not team.strip():
        raise ValueError("team: must not be empty when given")
    enrolment_ = Enrolment(identity, team.strip() if team else None,
                           datetime.now(UTC).isoformat(timespec="seconds"), pyotp.random_base32())
    path = enrolment_path(settings, identity)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"identity: {identity!r} is already enrolled; `modelyard approvers remove {identity}` "
                         "first to give it a new secret") from None
    with os.fdopen(fd, "w") as handle:
        json.dump({**enrolment_.public(), "secret": enrolment_.secret}, handle)
    return enrolment_, path


def _read_enrolment(path: Path) -> Enrolment:
    raw = json.loads(path.read_text())
    return Enrolment(raw["identity"], raw.get("team"), raw["enrolled_at"], raw["secret"])


def enrolment(settings: Settings, identity: str) -> Enrolment | None:
    """The enrolment of ``identity`` (any case), or None."""
    path = enrolment_path(settings, identity)
    return _read_enrolment(path) if path.exists() else None


def enrolments(settings: Settings) -> list[Enrolment]:
    """Every enrolled approver, by identity."""
    return [_read_enrolment(path) for path in sorted(approvers_dir(settings).glob("*.json"))]


def remove_enrolment(settings: Settings, identity: str) -> Enrolment:
    """Remove an approver (its secret is deleted: its codes stop counting); ValueError if unknown."""
    found = enrolment(settings, identity)
    if found is None:
        raise ValueError(f"identity: {check_identity(identity)!r} is not an enrolled approver")
    enrolment_path(settings, identity).unlink()
    return found


def secret_from_file(path: Path) -> str:
    """A TOTP secret from a file: an enrolment file, an ``otpauth://`` URI, or the bare base32 secret."""
    text = Path(path).read_text().strip()
    if text.startswith("{"):
        return str(json.loads(text)["secret"])
    if text.startswith("otpauth://"):
        return pyotp.parse_uri(text).secret
    return text


# -- verification -------------------------------------------------------------------------------


class ApprovalRefused(Exception):
    """An approval input that does not count, with why (``kind``: malformed, unknown, throttled,
    bad_code, replayed, not_allowed, four_eyes). The message never contains the code."""

    def __init__(self, reason: str, kind: str, identity: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.identity = identity

    def as_record(self) -> dict[str, Any]:
        """The details of an ``approval.refused`` record."""
        return {"identity": self.identity, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class VerifiedApproval:
    """A decision by an authenticated, authorised approver."""

    identity: str
    decision: str  # approve | reject
    comment: str
    time: str  # ISO 8601, when it was verified

    def as_policy(self) -> Approval:
        return Approval(identity=self.identity, decision=self.decision, comment=self.comment, time=self.time)

    def as_record(self) -> dict[str, Any]:
        return {"identity": self.identity, "decision": self.decision, "comment": self.comment, "time": self.time}


def _field(form: object, name: str) -> Any:
    return form.get(name) if isinstance(form, Mapping) else getattr(form, name, None)


@contextmanager
def _code_book(settings: Settings) -> Iterator[dict[str, list]]:
    """The used and failed codes, read and written under an exclusive lock, so that two flow runs
    verifying at once cannot both accept one code."""
    directory = approvers_dir(settings)
    with open(directory / ".codes.lock", "a") as lock:
        os.chmod(lock.name, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / ".used-codes"
        book = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
        book = {"used": book.get("used", []), "failed": book.get("failed", [])}
        try:
            yield book
        finally:  # a refusal is remembered too (a wrong code counts towards the lock-out)
            draft = directory / f".used-codes.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(book, handle)
            os.replace(draft, path)


def _check_code(settings: Settings, found: Enrolment, code: object, flow_run_id: str, now: datetime) -> None:
    """Accept ``code`` once for ``found`` now, or raise ApprovalRefused (wrong, expired, replayed,
    or too many wrong codes lately)."""
    identity = found.identity
    at = now.timestamp()
    with _code_book(settings) as book:
        book["used"] = [entry for entry in book["used"] if at - entry["at"] < USED_CODES_KEPT_S]
        book["failed"] = [entry for entry in book["failed"] if at - entry["at"] < FAILED_CODES_WINDOW_S]
        if sum(entry["identity"] == identity for entry in book["failed"]) >= FAILED_CODES_LIMIT:
            raise ApprovalRefused(f"{identity}: {FAILED_CODES_LIMIT} wrong codes in the last "
                                  f"{FAILED_CODES_WINDOW_S // 60} minutes; try again later", "throttled", identity)
        text = code.strip().replace(" ", "") if isinstance(code, str) else ""
        totp = found.totp()
        step = totp.timecode(now)
        matched = next((step + drift for drift in range(-CLOCK_DRIFT_STEPS, CLOCK_DRIFT_STEPS + 1)
                        if len(text) == CODE_DIGITS and secrets.compare_digest(totp.generate_otp(step + drift), text)),
                       None)
        if matched is None:
            book["failed"].append({"identity": identity, "at": at})
            raise ApprovalRefused(f"{identity}: the code is wrong or expired (a code from the authenticator app "
                                  f"counts for about {CODE_STEP_S} s)", "bad_code", identity)
        if any(entry["identity"] == identity and entry["step"] == matched for entry in book["used"]):
            raise ApprovalRefused(f"{identity}: this code was already used; wait for the next one", "replayed",
                                  identity)
        book["used"].append({"identity": identity, "step": matched, "at": at, "flow_run_id": flow_run_id})


def verify_approval(settings: Settings, form: object, *, flow_run_id: str, environment: str,
                    allowed: Iterable[str] = (), excluded: Iterable[str] = (), team: str | None = None,
                    now: datetime | None = None) -> VerifiedApproval:
    """The decision in ``form`` (an ApprovalForm or a mapping with its fields), if its approver is
    enrolled, its code is current and unused, it is among ``allowed`` (when not empty) and not
    among ``excluded`` (four-eyes: the author and the requester); else ApprovalRefused saying
    which and why. Authentication comes first: a refusal for who someone is needs their code."""
    now = now or datetime.now(UTC)
    what = f"the {environment} promotion (flow run {flow_run_id})"
    try:
        identity = check_identity(_field(form, "approver"), "approver")
    except ValueError as error:
        raise ApprovalRefused(str(error), "malformed") from None
    decision = _field(form, "decision")
    if decision not in DECISIONS:
        raise ApprovalRefused(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}", "malformed", identity)
    comment = _field(form, "comment") or ""
    if not isinstance(comment, str):
        raise ApprovalRefused("comment: must be text", "malformed", identity)
    found = enrolment(settings, identity)
    if found is None:
        raise ApprovalRefused(f"{identity} is not an enrolled approver (`modelyard approvers add {identity}`)",
                              "unknown", identity)
    _check_code(settings, found, _field(form, "code"), flow_run_id, now)
    allowed_ = {_normal(name) for name in allowed if _normal(name)}
    if allowed_ and identity not in allowed_:
        raise ApprovalRefused(f"{identity} may not approve {what}: the spec allows only "
                              f"{', '.join(sorted(allowed_))}", "not_allowed", identity)
    # Permissions are cut by team: an approver enrolled in a team decides that team's models only
    # (unless the spec names them); one enrolled without a team is an organisation-wide approver.
    if not allowed_ and team is not None and found.team is not None and found.team != team:
        raise ApprovalRefused(f"{identity} approves for team {found.team}; {what} is team {team}'s",
                              "not_allowed", identity)
    if identity in {_normal(name) for name in excluded if name}:
        raise ApprovalRefused(f"{identity} may not decide {what}: four-eyes requires someone other than the "
                              "author or requester of the change", "four_eyes", identity)
    return VerifiedApproval(identity, decision, comment, now.isoformat(timespec="seconds"))


def _normal(name: object) -> str:
    return name.strip().lower() if isinstance(name, str) else ""


# -- pending and expired requests -----------------------------------------------------------------


@dataclass(frozen=True)
class PendingApproval:
    """A promotion waiting for a person: the source version, the environment, its suspended run."""

    model: str  # the registered model the version is promoted from (e.g. fraud-detector-staging)
    version: str
    environment: str
    flow_run_id: str
    url: str
    deadline: str | None
    required: int
    author: str | None
    requested_by: str | None
    requested_at: str
    timeout_s: float | None = None
    origin: str | None = None  # <dev model>/<dev version>, when the request names it
    state: str | None = None  # the flow run's Prefect state name, once read

    @property
    def subject(self) -> str:
        return f"{self.model}/{self.version}"

    def timeout_text(self) -> str:
        """How long the approval could take, as the refusal says it."""
        seconds = self.timeout_s
        if seconds is None and self.deadline:
            seconds = (datetime.fromisoformat(self.deadline) - datetime.fromisoformat(self.requested_at)).total_seconds()
        return "its timeout" if seconds is None else _duration(seconds)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:g} h" if seconds % 3600 else f"{seconds // 3600} h"


def _request(record: Mapping[str, Any]) -> PendingApproval | None:
    details = record.get("details") or {}
    model, _, version = str(record.get("subject", "")).rpartition("/")
    flow_run_id = details.get("flow_run_id")
    if not flow_run_id or not model:
        return None
    timeout = details.get("timeout_s")
    return PendingApproval(
        model=str(details.get("source_model") or model), version=str(details.get("source_version") or version),
        environment=str(details.get("environment", "")), flow_run_id=str(flow_run_id), url=str(details.get("url", "")),
        deadline=details.get("deadline"), required=int(details.get("required") or 1), author=details.get("author"),
        requested_by=details.get("requested_by"), requested_at=str(record.get("time", "")),
        timeout_s=float(timeout) if isinstance(timeout, int | float) else None, origin=details.get("origin"))


def open_requests(records: Iterable[Mapping[str, Any]]) -> list[PendingApproval]:
    """Approval requests in the ledger not yet closed (rejected, timed out, superseded, copied or
    refused) for their flow run, oldest first; a run that asked again counts once, as asked last."""
    requests: dict[str, PendingApproval] = {}
    for record in records:
        action = record.get("action")
        flow_run_id = str((record.get("details") or {}).get("flow_run_id", ""))
        if action == Action.APPROVAL_REQUESTED:
            request = _request(record)
            if request is not None:
                requests.pop(request.flow_run_id, None)
                requests[request.flow_run_id] = request
        elif action in CLOSING_ACTIONS:
            requests.pop(flow_run_id, None)
    return list(requests.values())


def flow_run_states(settings: Settings, flow_run_ids: Iterable[str]) -> dict[str, Any]:
    """Each flow run's current Prefect state (None: the run is gone)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import temporary_settings

    states: dict[str, Any] = {}
    with temporary_settings(settings.prefect_client_settings()), get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                states[flow_run_id] = client.read_flow_run(UUID(flow_run_id)).state
            except (ObjectNotFound, ValueError):
                states[flow_run_id] = None
    return states


def pending_approvals(settings: Settings, records: Iterable[Mapping[str, Any]]) -> list[PendingApproval]:
    """Open requests whose Prefect run is still suspended, waiting for a person."""
    requests = open_requests(records)
    states = flow_run_states(settings, [request.flow_run_id for request in requests]) if requests else {}
    return [_with_state(request, states.get(request.flow_run_id)) for request in requests
            if _is_paused(states.get(request.flow_run_id))]


def _with_state(request: PendingApproval, state: Any) -> PendingApproval:
    from dataclasses import replace

    return replace(request, state=getattr(state, "name", None))


def _is_paused(state: Any) -> bool:
    return state is not None and str(getattr(state.type, "value", state.type)) == PAUSED


def _is_pause_expiry(state: Any) -> bool:
    return (state is not None and str(getattr(state.type, "value", state.type)) == "FAILED"
            and (state.message or "").strip() == PAUSE_EXPIRED_MESSAGE)


def expired_requests(requests: Iterable[PendingApproval], states: Mapping[str, Any],
                     now: datetime) -> list[tuple[PendingApproval, str]]:
    """Open requests whose time ran out, with how it shows: Prefect failed the run on its pause
    timeout, or the request's deadline passed (the run still paused, or gone)."""
    expired = []
    for request in requests:
        state = states.get(request.flow_run_id)
        deadline = datetime.fromisoformat(request.deadline) if request.deadline else None
        if _is_pause_expiry(state):
            expired.append((request, "prefect_pause_timeout"))
        elif deadline is not None and now >= deadline and (state is None or _is_paused(state)):
            expired.append((request, "deadline"))
    return expired


@contextmanager
def _approvals_lock(settings: Settings) -> Iterator[None]:
    """One closer of expired requests at a time (two reconciler runs may overlap)."""
    path = settings.run_dir / "approvals.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fail_expired_pause(settings: Settings, flow_run_id: str) -> bool:
    """Fail a run still paused after its deadline, as Prefect's own pause-expiry service would a few
    seconds later, so that nobody can resume it once its timeout is recorded. False: it moved on."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import temporary_settings
    from prefect.states import Failed

    with temporary_settings(settings.prefect_client_settings()), get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        if not _is_paused(run.state):
            return _is_pause_expiry(run.state)
        result = client.set_flow_run_state(UUID(flow_run_id), Failed(message=PAUSE_EXPIRED_MESSAGE), force=True)
        return result.state is not None and result.state.type == StateType.FAILED


def record_expired_approvals(settings: Settings, now: datetime | None = None) -> list[dict[str, Any]]:
    """Close every request whose approval did not come in time: ``approval.timed_out`` and
    ``promotion.refused`` (reason "no approval within <timeout>"), each exactly once."""
    from modelyard.audit import append_audit_record
    from modelyard.ledger import ledger_from_settings

    written: list[dict[str, Any]] = []
    with _approvals_lock(settings):
        requests = open_requests(ledger_from_settings(settings).records())
        if not requests:
            return written
        states = flow_run_states(settings, [request.flow_run_id for request in requests])
        for request, how in expired_requests(requests, states, now or datetime.now(UTC)):
            if how == "deadline" and states.get(request.flow_run_id) is not None \
                    and not _fail_expired_pause(settings, request.flow_run_id):
                continue  # resumed at the last moment: its own outcome will be recorded
            given = _approvals_given(ledger_from_settings(settings).records(), request.flow_run_id)
            base = {"environment": request.environment, "flow_run_id": request.flow_run_id, "url": request.url}
            written.append(append_audit_record(Action.APPROVAL_TIMED_OUT, request.subject, {
                **base, "deadline": request.deadline, "required": request.required, "given": given,
                "detected_by": how}, settings))
            written.append(append_audit_record(Action.PROMOTION_REFUSED, request.subject, {
                **base, "reason": f"no approval within {request.timeout_text()}"}, settings))
    return written


def _approvals_given(records: Iterable[Mapping[str, Any]], flow_run_id: str) -> list[str]:
    return [record["details"].get("identity") for record in records
            if record.get("action") == Action.APPROVAL_GIVEN
            and str((record.get("details") or {}).get("flow_run_id")) == flow_run_id]


def approval_outcome(records: Iterable[Mapping[str, Any]], flow_run_id: str, after_seq: int = 0) -> dict | None:
    """The first decision recorded for ``flow_run_id`` after record ``after_seq``: given, rejected
    or refused (what ``modelyard approve`` waits for), or a closing record if the run ended first."""
    for record in records:
        if record.get("seq", 0) <= after_seq:
            continue
        if str((record.get("details") or {}).get("flow_run_id")) != flow_run_id:
            continue
        if record.get("action") in OUTCOME_ACTIONS or record.get("action") in CLOSING_ACTIONS:
            return dict(record)
    return None

