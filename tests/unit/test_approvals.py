"""Approvers and their one-time codes, and which approval requests are pending or expired, from
records a promote run writes (modelyard/approvals.py); the approver commands as a user runs them."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import typer
from typer.testing import CliRunner

from modelyard.approvals import (
    CODE_DESCRIPTION,
    FAILED_CODES_LIMIT,
    PAUSE_EXPIRED_MESSAGE,
    ApprovalRefused,
    enrol,
    enrolment,
    enrolments,
    expired_requests,
    open_requests,
    remove_enrolment,
    secret_from_file,
    verify_approval,
)
from modelyard.catalog import Action
from modelyard.cli import approvals as approvals_cli
from modelyard.ledger import ledger_from_settings
from modelyard.policy import Approval
from modelyard.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _form(approver: str, code: str, decision: str = "approve", comment: str = "looks good") -> dict:
    return {"approver": approver, "decision": decision, "comment": comment, "code": code}


def _verify(settings: Settings, form: dict, now: datetime = NOW, **kwargs):
    kwargs = {"flow_run_id": "run-1", "environment": "production", "allowed": [], "excluded": set()} | kwargs
    return verify_approval(settings, form, now=now, **kwargs)


def _code(settings: Settings, identity: str, at: datetime = NOW) -> str:
    return enrolment(settings, identity).totp().at(at)


# -- enrolment ----------------------------------------------------------------------------------


def test_enrolment_is_a_0600_file_in_a_0700_directory_and_its_secret_never_printed(settings):
    found, path = enrol(settings, "  Alice@Example.com ", team="risk-ml")
    assert found.identity == "alice@example.com" and found.team == "risk-ml"
    assert path.parent == settings.credentials_dir / "approvers"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(settings.credentials_dir) == 0o700
    assert found.secret not in repr(found) and "secret" not in found.public()
    assert json.loads(path.read_text())["secret"] == found.secret
    assert pyotp.parse_uri(found.provisioning_uri()).secret == found.secret
    assert secret_from_file(path) == found.secret
    assert [e.public() for e in enrolments(settings)] == [found.public()]


def test_enrolling_twice_or_a_bad_identity_is_refused_naming_the_field(settings):
    enrol(settings, "bob")
    with pytest.raises(ValueError, match="already enrolled"):
        enrol(settings, "BOB")
    for bad in ("", "../etc/passwd", "bob smith", "-bob"):
        with pytest.raises(ValueError, match="identity"):
            enrol(settings, bad)


def test_a_removed_approver_no_longer_counts(settings):
    enrol(settings, "carol")
    code = _code(settings, "carol")
    remove_enrolment(settings, "Carol")
    assert enrolment(settings, "carol") is None
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("carol", code))
    assert refused.value.kind == "unknown"
    with pytest.raises(ValueError, match="not an enrolled approver"):
        remove_enrolment(settings, "carol")


# -- codes --------------------------------------------------------------------------------------


def test_a_current_code_approves_and_becomes_a_policy_approval(settings):
    enrol(settings, "alice")
    verified = _verify(settings, _form("Alice ", _code(settings, "alice")), allowed=["alice", "bob"],
                       excluded={"trainer"})
    assert (verified.identity, verified.decision, verified.comment) == ("alice", "approve", "looks good")
    assert verified.as_policy() == Approval("alice", "approve", "looks good", NOW.isoformat(timespec="seconds"))


def test_a_code_of_the_next_or_previous_step_counts_for_clock_drift(settings):
    enrol(settings, "alice")
    _verify(settings, _form("alice", _code(settings, "alice", NOW - timedelta(seconds=30))))
    _verify(settings, _form("alice", _code(settings, "alice", NOW + timedelta(seconds=30))))


def test_a_wrong_code_is_refused_without_echoing_it(settings):
    enrol(settings, "alice")
    wrong = "000000" if _code(settings, "alice") != "000000" else "111111"
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("alice", wrong))
    assert refused.value.kind == "bad_code" and "wrong or expired" in refused.value.reason
    assert wrong not in str(refused.value) and wrong not in json.dumps(refused.value.as_record())


def test_an_expired_code_is_refused(settings):
    enrol(settings, "alice")
    old = _code(settings, "alice", NOW - timedelta(seconds=120))
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("alice", old))
    assert refused.value.kind == "bad_code"


def test_a_used_code_cannot_be_replayed(settings):
    enrol(settings, "alice")
    code = _code(settings, "alice")
    _verify(settings, _form("alice", code))
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("alice", code), now=NOW + timedelta(seconds=5), flow_run_id="run-2")
    assert refused.value.kind == "replayed" and "already used" in refused.value.reason
    book = settings.credentials_dir / "approvers" / ".used-codes"
    assert _mode(book) == 0o600 and code not in book.read_text()


def test_too_many_wrong_codes_lock_the_identity_out_for_a_while(settings):
    enrol(settings, "alice")
    for _ in range(FAILED_CODES_LIMIT):
        with pytest.raises(ApprovalRefused):
            _verify(settings, _form("alice", "999999" if _code(settings, "alice") != "999999" else "888888"))
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("alice", _code(settings, "alice")))
    assert refused.value.kind == "throttled"
    _verify(settings, _form("alice", _code(settings, "alice", NOW + timedelta(minutes=11))),
            now=NOW + timedelta(minutes=11))


def test_an_unknown_identity_is_refused(settings):
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("mallory", "123456"))
    assert refused.value.kind == "unknown" and "mallory is not an enrolled approver" in refused.value.reason


def test_an_identity_the_spec_does_not_allow_is_refused(settings):
    enrol(settings, "dave")
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("dave", _code(settings, "dave")), allowed=[" Alice", "bob"])
    assert refused.value.kind == "not_allowed" and "alice, bob" in refused.value.reason


def test_an_approver_of_another_team_is_refused_and_an_organisation_wide_one_is_not(settings):
    enrol(settings, "erin", team="payments")
    enrol(settings, "olga")  # no team: approves for the whole organisation
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("erin", _code(settings, "erin")), team="risk-ml")
    assert refused.value.kind == "not_allowed" and "team payments" in refused.value.reason
    assert _verify(settings, _form("olga", _code(settings, "olga")), team="risk-ml").identity == "olga"
    later = NOW + timedelta(seconds=60)  # erin's first code was used by the refused attempt
    assert _verify(settings, _form("erin", _code(settings, "erin", later)), team="payments", now=later,
                   flow_run_id="run-3").identity == "erin"


@pytest.mark.parametrize("author", ["alice", " ALICE ", "Alice"])
def test_four_eyes_refuses_the_author_or_requester_whatever_the_case(settings, author):
    enrol(settings, "Alice")
    with pytest.raises(ApprovalRefused) as refused:
        _verify(settings, _form("alice ", _code(settings, "alice")), excluded={author, "ci-bot"})
    assert refused.value.kind == "four_eyes" and "four-eyes" in refused.value.reason
    assert refused.value.as_record()["identity"] == "alice"


def test_a_malformed_decision_is_refused_naming_the_field(settings):
    enrol(settings, "alice")
    with pytest.raises(ApprovalRefused, match="decision"):
        _verify(settings, _form("alice", _code(settings, "alice"), decision="maybe"))


def test_the_form_prefect_renders_has_a_decision_select_and_the_code_help():
    from prefect._internal.pydantic.v2_schema import create_v2_schema

    from modelyard.approvals import ApprovalForm

    schema = create_v2_schema("ApprovalForm", model_base=ApprovalForm)
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert schema["properties"]["code"]["description"] == CODE_DESCRIPTION
    assert set(schema["required"]) == {"approver", "code"}
    assert ApprovalForm.with_initial_data(description="## evidence")._description == "## evidence"
    with pytest.raises(ValueError):
        ApprovalForm(approver="alice", code="12345")


# -- pending and expired ------------------------------------------------------------------------


def _record(seq: int, action: Action, subject: str, flow_run_id: str, **details) -> dict:
    return {"seq": seq, "time": (NOW + timedelta(seconds=seq)).isoformat(), "actor": "flow:promote/x",
            "action": str(action), "subject": subject, "details": {"flow_run_id": flow_run_id, **details}}


def _request(seq: int, subject: str, flow_run_id: str, deadline: datetime = NOW + timedelta(hours=1)) -> dict:
    return _record(seq, Action.APPROVAL_REQUESTED, subject, flow_run_id, environment="production",
                   url=f"http://ui/runs/flow-run/{flow_run_id}", deadline=deadline.isoformat(), required=1,
                   author="trainer", requested_by="trainer", timeout_s=3600)


def test_requests_stay_open_until_a_closing_record_for_their_run():
    records = [
        _request(1, "fraud-staging/1", "a"), _request(2, "fraud-staging/2", "b"), _request(3, "churn-staging/4", "c"),
        _request(4, "loans-staging/1", "d"), _request(5, "ads-staging/1", "e"),
        _record(6, Action.APPROVAL_REFUSED, "fraud-staging/1", "a", kind="four_eyes"),  # still waits
        _record(7, Action.APPROVAL_GIVEN, "fraud-staging/2", "b", identity="alice"),
        _record(8, Action.PROMOTION_COPIED, "fraud-production/1", "b"),
        _record(9, Action.APPROVAL_REJECTED, "churn-staging/4", "c"),
        _record(10, Action.APPROVAL_TIMED_OUT, "loans-staging/1", "d"),
        _record(11, Action.PROMOTION_REFUSED, "ads-staging/1", "e", reason="policy"),
        _request(12, "fraud-staging/1", "a"),  # the same run asks again after a refusal: one request
    ]
    pending = open_requests(records)
    assert [(p.model, p.version, p.flow_run_id) for p in pending] == [("fraud-staging", "1", "a")]
    assert pending[0].environment == "production" and pending[0].author == "trainer"
    assert pending[0].timeout_text() == "60 min"


def test_a_request_expires_when_prefect_failed_its_pause_or_its_deadline_passed():
    from prefect.states import Completed, Failed, Suspended

    records = [_request(1, "m-staging/1", "expired-by-prefect", deadline=NOW + timedelta(hours=1)),
               _request(2, "m-staging/2", "past-deadline", deadline=NOW - timedelta(seconds=1)),
               _request(3, "m-staging/3", "waiting", deadline=NOW + timedelta(hours=1)),
               _request(4, "m-staging/4", "resumed", deadline=NOW - timedelta(seconds=1)),
               _request(5, "m-staging/5", "gone", deadline=NOW - timedelta(seconds=1)),
               _request(6, "m-staging/6", "crashed", deadline=NOW + timedelta(hours=1))]
    states = {"expired-by-prefect": Failed(message=PAUSE_EXPIRED_MESSAGE), "past-deadline": Suspended(),
              "waiting": Suspended(), "resumed": Completed(), "gone": None, "crashed": Failed(message="boom")}
    expired = expired_requests(open_requests(records), states, NOW)
    assert [(r.flow_run_id, how) for r, how in expired] == [
        ("expired-by-prefect", "prefect_pause_timeout"), ("past-deadline", "deadline"), ("gone", "deadline")]


# -- the approver commands ----------------------------------------------------------------------


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.setenv("MODELYARD_STATE_DIR", str(settings.state_dir))
    app = typer.Typer()
    approvals_cli.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_approvers_add_list_remove_record_who_never_the_secret(cli, settings):
    added = cli("approvers", "add", "Alice", "--team", "risk-ml")
    assert added.exit_code == 0, added.output
    secret = enrolment(settings, "alice").secret
    assert "otpauth://totp/" in added.output and str(settings.credentials_dir / "approvers") in added.output
    assert cli("approvers", "add", "alice").exit_code == 2
    listed = cli("approvers", "list", "--json")
    assert [json.loads(line)["identity"] for line in listed.output.splitlines()] == ["alice"]
    assert secret not in listed.output
    assert cli("approvers", "remove", "alice").exit_code == 0
    assert "no approver enrolled" in cli("approvers", "list").output
    records = ledger_from_settings(settings).records()
    assert [(r["action"], r["subject"], r["details"].get("team")) for r in records] == [
        (Action.APPROVER_ENROLLED, "approver:alice", "risk-ml"), (Action.APPROVER_REMOVED, "approver:alice", "risk-ml")]
    assert secret not in settings.ledger_path.read_text()


def test_approve_without_a_pending_request_says_so_and_what_else_waits(cli, settings):
    ledger = ledger_from_settings(settings)
    request = _request(1, "fraud-staging/1", "run-a")
    ledger.append(request["actor"], request["action"], request["subject"], request["details"])
    missing = cli("approve", "fraud-staging", "7", "--env", "production", "--as", "alice", "--code", "123456")
    assert missing.exit_code == 1 and "no pending approval for fraud-staging 7 into production" in missing.output
    wrong_env = cli("approve", "fraud-staging", "1", "--env", "staging", "--as", "alice", "--code", "123456")
    assert wrong_env.exit_code == 1 and "waits for approval into production, not staging" in wrong_env.output
    bad_env = cli("approve", "fraud-staging", "1", "--env", "prod", "--as", "alice", "--code", "123456")
    assert bad_env.exit_code == 2 and "--env" in bad_env.output


def test_approve_after_the_timeout_says_expired(cli, settings):
    ledger = ledger_from_settings(settings)
    for record in (_request(1, "fraud-staging/1", "run-a"),
                   _record(2, Action.APPROVAL_TIMED_OUT, "fraud-staging/1", "run-a", deadline="2026-12-01T13:00:00"),
                   _record(3, Action.PROMOTION_REFUSED, "fraud-staging/1", "run-a", reason="no approval within 60 min")):
        ledger.append(record["actor"], record["action"], record["subject"], record["details"])
    late = cli("approve", "fraud-staging", "1", "--env", "production", "--as", "alice", "--code", "123456")
    assert late.exit_code == 1 and "expired" in late.output and "2026-12-01T13:00:00" in late.output
