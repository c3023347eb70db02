"""Incidents folded from ledger records: open → acknowledged → resolved, one open incident per
model and kind, resolution by the recovery that fixed it or by a person with a note, MTTD and
MTTR from the records' times; and `modelyard incidents` over a real ledger file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import typer
from typer.testing import CliRunner

from modelyard.catalog import Action, Event
from modelyard.incidents import (
    RECOVERED_BY_ROLLBACK, RECOVERED_BY_ROLLOUT, RECOVERY, IncidentError, acknowledge, alert_kind, incident_event,
    incident_kpis, incidents_from_records, open_incident, open_incidents, resolve, resolve_by_recovery,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(t: float) -> str:
    """The ISO time ``t`` seconds after 2026-01-01 00:00 UTC."""
    return (T0 + timedelta(seconds=t)).isoformat()


class Ledger:
    """Records as the audit ledger writes them (seq, time, action, subject, details), on a clock
    the test moves: the writers' ``record`` callable."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.now = 0.0

    def record(self, action, subject, details) -> dict:
        written = {"seq": len(self.records) + 1, "time": at(self.now), "actor": "test", "action": str(action),
                   "subject": subject, "details": json.loads(json.dumps(details))}
        self.records.append(written)
        return written


def drift(ledger: Ledger, model: str = "m", version: str = "1", window_start: float = 60) -> object:
    return open_incident(ledger.record, ledger.records, model=model, version=version, kind="drift",
                         alert_action=Action.MONITOR_DRIFT, first_signal_at=at(window_start),
                         summary="12 of 30 features drifted", details={"drift_share": 0.4})


def test_an_incident_goes_open_acknowledged_resolved_with_every_step_a_record():
    ledger = Ledger()
    ledger.now = 100
    opened = drift(ledger)
    assert opened.id.startswith("inc-") and opened.state == "open"
    ledger.now = 130
    acknowledge(ledger.record, ledger.records, opened.id, identity="alice", note="looking at the feed")
    ledger.now = 400
    resolve(ledger.record, ledger.records, opened.id[:8], identity="alice", note="upstream unit fixed")

    assert [r["action"] for r in ledger.records] == [Action.INCIDENT_OPENED, Action.INCIDENT_ACKNOWLEDGED,
                                                     Action.INCIDENT_RESOLVED]
    assert {r["details"]["incident"] for r in ledger.records} == {opened.id}
    assert all(r["subject"] == "m/1" for r in ledger.records)
    [incident] = incidents_from_records(ledger.records)
    assert incident.state == "resolved" and incident.acknowledged_by == "alice"
    assert incident.acknowledged_at == at(130) and incident.acknowledge_note == "looking at the feed"
    assert incident.resolved_by == "alice" and incident.resolution == "upstream unit fixed"
    assert incident.mttd_s == 40  # window start (60 s) → opened (100 s)
    assert incident.mttr_s == 300  # opened (100 s) → resolved (400 s)
    assert incident.seqs == [1, 2, 3]
    assert open_incidents(ledger.records) == []


def test_a_repeated_alert_while_one_is_open_writes_nothing():
    ledger = Ledger()
    first = drift(ledger)
    ledger.now = 300
    assert drift(ledger, window_start=200) is None
    assert drift(ledger, version="2") is None  # the model's drift incident covers its next version too
    assert len(ledger.records) == 1
    # Another kind on the same model is another incident; so is drift on another model.
    service = open_incident(ledger.record, ledger.records, model="m", version="1", kind="service",
                            alert_action=Action.MONITOR_SERVICE, first_signal_at=at(250))
    other = drift(ledger, model="n")
    assert service is not None and other is not None
    assert {i.id for i in open_incidents(ledger.records)} == {first.id, service.id, other.id}
    assert [i.id for i in open_incidents(ledger.records, model="n")] == [other.id]
    # An acknowledged incident still covers repeats; a resolved one does not.
    acknowledge(ledger.record, ledger.records, first.id, identity="bob")
    assert drift(ledger) is None
    resolve(ledger.record, ledger.records, first.id, identity="bob", note="retrained by hand")
    again = drift(ledger)
    assert again is not None and again.id != first.id


def test_each_replica_has_its_own_incident():
    ledger = Ledger()

    def down(replica: str):
        return open_incident(ledger.record, ledger.records, model="m", version="3", kind="replica",
                             alert_action=Action.SERVING_REPLICA_DOWN, first_signal_at=T0.timestamp(),
                             replica=replica)

    r0, r1 = down("v3 r0"), down("v3 r1")
    assert r0 is not None and r1 is not None and down("v3 r0") is None
    resolved = resolve_by_recovery(ledger.record, ledger.records, model="m", how="replica restored",
                                   kinds=("replica",), replica="v3 r1")
    assert [i.id for i in resolved] == [r1.id]
    assert [i.id for i in open_incidents(ledger.records)] == [r0.id]


def test_a_new_version_at_full_traffic_resolves_what_it_replaced_and_a_rollback_only_how_it_served():
    ledger = Ledger()
    kinds = {}
    for kind, action in (("drift", Action.MONITOR_DRIFT), ("data", Action.MONITOR_INVALID_DATA),
                         ("performance", Action.MONITOR_PERFORMANCE), ("service", Action.MONITOR_SERVICE)):
        kinds[kind] = open_incident(ledger.record, ledger.records, model="m", version="2", kind=kind,
                                    alert_action=action, first_signal_at=at(0)).id
    unrelated = drift(ledger, model="other").id

    ledger.now = 50
    rolled = resolve_by_recovery(ledger.record, ledger.records, model="m", how="rollback to v1",
                                 kinds=RECOVERED_BY_ROLLBACK, recovery_version="1")
    assert {i.kind for i in rolled} == {"performance", "service"}
    assert {i.id for i in open_incidents(ledger.records)} == {kinds["drift"], kinds["data"], unrelated}

    ledger.now = 90
    fixed = resolve_by_recovery(ledger.record, ledger.records, model="m", how="v3 at 100%",
                                kinds=RECOVERED_BY_ROLLOUT, recovery_version="3", recovered_at=at(80))
    assert {i.kind for i in fixed} == {"drift", "data"}
    assert [i.id for i in open_incidents(ledger.records)] == [unrelated]
    by_id = {i.id: i for i in incidents_from_records(ledger.records)}
    assert by_id[kinds["drift"]].resolved_by == RECOVERY and by_id[kinds["drift"]].resolution == "v3 at 100%"
    assert by_id[kinds["drift"]].recovery_version == "3"
    assert by_id[kinds["drift"]].mttr_s == 80  # to the moment the switch completed, not the record's time
    assert by_id[kinds["service"]].resolution == "rollback to v1" and by_id[kinds["service"]].mttr_s == 50


def test_a_recovery_does_not_resolve_incidents_of_the_version_it_put_in_service():
    ledger = Ledger()
    drift(ledger, version="3")
    assert resolve_by_recovery(ledger.record, ledger.records, model="m", how="v3 at 100%",
                               kinds=RECOVERED_BY_ROLLOUT, recovery_version="3") == []
    assert len(open_incidents(ledger.records)) == 1


def test_transitions_the_state_does_not_allow_are_refused_naming_the_incident():
    ledger = Ledger()
    incident = drift(ledger)
    with pytest.raises(IncidentError, match="note"):
        resolve(ledger.record, ledger.records, incident.id, identity="carol", note="  ")
    acknowledge(ledger.record, ledger.records, incident.id, identity="carol")
    with pytest.raises(IncidentError, match="acknowledged .by carol."):
        acknowledge(ledger.record, ledger.records, incident.id, identity="dave")
    resolve(ledger.record, ledger.records, incident.id, identity="carol", note="done")
    with pytest.raises(IncidentError, match="already resolved"):
        resolve(ledger.record, ledger.records, incident.id, identity="carol", note="again")
    with pytest.raises(IncidentError, match="no incident with the id 'inc-nope'"):
        acknowledge(ledger.record, ledger.records, "inc-nope", identity="carol")
    with pytest.raises(IncidentError, match="kind"):
        open_incident(ledger.record, ledger.records, model="m", version="1", kind="weather",
                      alert_action="x", first_signal_at=None)
    assert len(ledger.records) == 3


def test_every_alert_action_opens_an_incident_kind():
    from modelyard.catalog import ALERT_ACTIONS

    assert {alert_kind(action) for action in ALERT_ACTIONS.values()} == {"drift", "data", "performance", "service"}
    assert alert_kind(Action.SERVING_REPLICA_DOWN) == "replica"


def test_kpis_count_by_state_and_kind_and_average_the_times_per_model():
    ledger = Ledger()
    ledger.now = 100
    a = drift(ledger)  # mttd 40
    ledger.now = 200
    b = drift(ledger, model="n", window_start=180)  # mttd 20
    ledger.now = 300
    resolve_by_recovery(ledger.record, ledger.records, model="m", how="v2 at 100%", kinds=("drift",),
                        recovery_version="2")  # mttr 200
    ledger.now = 260
    resolve(ledger.record, ledger.records, b.id, identity="erin", note="false alarm")  # mttr 60
    ledger.now = 400
    open_incident(ledger.record, ledger.records, model="n", version="1", kind="service",
                  alert_action=Action.MONITOR_SERVICE, first_signal_at=None)  # no window: no MTTD
    kpis = incident_kpis(incidents_from_records(ledger.records))
    assert kpis["incidents"] == 3
    assert kpis["by_state"] == {"open": 1, "acknowledged": 0, "resolved": 2}
    assert kpis["by_kind"]["drift"] == 2 and kpis["by_kind"]["service"] == 1
    assert kpis["resolved_by_recovery"] == 1 and kpis["resolved_by_person"] == 1
    assert kpis["mttd_s"] == 30 and kpis["mttr_s"] == 130
    assert kpis["per_model"]["m"]["mttr_s"] == 200 and kpis["per_model"]["n"]["mttr_s"] == 60
    assert kpis["per_model"]["n"]["by_state"]["open"] == 1
    assert a.id in {i.id for i in incidents_from_records(ledger.records)}


def test_the_prefect_event_of_an_incident_names_model_version_incident_and_kind():
    ledger = Ledger()
    seen = []
    incident = open_incident(ledger.record, ledger.records, model="m", version="4", kind="service",
                             alert_action=Action.MONITOR_SERVICE, first_signal_at=at(0),
                             emit=lambda event, inc: seen.append((event, inc.id)))
    assert seen == [(Event.INCIDENT_OPENED, incident.id)]
    event = incident_event(Event.INCIDENT_OPENED, incident)
    assert event["event"] == "modelyard.incident.opened"
    assert event["resource"] == {"prefect.resource.id": "modelyard.model.m", "prefect.resource.name": "m",
                                 "modelyard.model": "m", "modelyard.version": "4",
                                 "modelyard.incident": incident.id, "modelyard.kind": "service"}
    resolve_by_recovery(ledger.record, ledger.records, model="m", how="rollback to v3", kinds=("service",),
                        recovery_version="3", emit=lambda event, inc: seen.append((event, inc.resolution)))
    assert seen[-1] == (Event.INCIDENT_RESOLVED, "rollback to v3")


def test_notification_automations_expect_the_incident_events_of_the_catalog():
    from uuid import uuid4

    from modelyard.automations import CHANNELS, INCIDENT_EVENTS, incident_automation, notification_block

    automation = incident_automation(uuid4(), "teams")
    assert automation.trigger.expect == {str(e) for e in INCIDENT_EVENTS} == {"modelyard.incident.opened",
                                                                             "modelyard.incident.resolved"}
    assert "modelyard.incident" in automation.actions[0].subject and "modelyard.kind" in automation.actions[0].subject
    assert len({c.alert_automation for c in CHANNELS} | {c.incident_automation for c in CHANNELS}) == 2 * len(CHANNELS)
    slack, teams = CHANNELS[1], CHANNELS[2]
    assert type(notification_block(slack, "https://hooks.slack.com/services/T0/B0/XYZ")).__name__ == "SlackWebhook"
    secret = "https://example.invalid/not-a-workflow?sig=SECRET123"
    with pytest.raises(ValueError, match="notify_teams_url") as refused:
        notification_block(teams, secret)
    assert "SECRET123" not in str(refused.value)


# --- the command line, over a real ledger file ----------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch):
    from modelyard.cli.incidents import register
    from modelyard.ledger import ledger_from_settings
    from modelyard.settings import Settings

    monkeypatch.setenv("MODELYARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the table shows every cell whole
    settings = Settings()
    ledger = ledger_from_settings(settings)

    def record(action, subject, details):
        return ledger.append("monitor", str(action), subject, details)

    now = datetime.now(UTC)
    opened = open_incident(record, ledger.records(), model="fraud", version="2", kind="drift",
                           alert_action=Action.MONITOR_DRIFT, first_signal_at=(now - timedelta(seconds=90)).isoformat(),
                           summary="5 of 20 features drifted")
    other = open_incident(record, ledger.records(), model="churn", version="1", kind="service",
                          alert_action=Action.MONITOR_SERVICE, first_signal_at=None)
    app = typer.Typer()
    register(app)
    return {"app": app, "ledger": ledger, "drift": opened.id, "service": other.id}


def run(cli, *args):
    return CliRunner().invoke(cli["app"], ["incidents", *args])


def test_cli_lists_acknowledges_and_resolves_an_incident(cli):
    listed = run(cli, "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.output)}
    assert set(rows) == {cli["drift"], cli["service"]}
    assert rows[cli["drift"]]["state"] == "open" and 89 <= rows[cli["drift"]]["mttd_s"] <= 120

    acked = run(cli, "ack", cli["drift"], "--as", "Alice", "--note", "on it")
    assert acked.exit_code == 0, acked.output
    assert "acknowledged by alice" in acked.output
    no_note = run(cli, "resolve", cli["drift"], "--as", "alice")
    assert no_note.exit_code == 2 and "--note" in no_note.output
    done = run(cli, "resolve", cli["drift"][:10], "--as", "alice", "--note", "feature pipeline fixed")
    assert done.exit_code == 0, done.output
    assert "resolved by alice" in done.output

    records = cli["ledger"].records()
    assert [r["action"] for r in records[-2:]] == [Action.INCIDENT_ACKNOWLEDGED, Action.INCIDENT_RESOLVED]
    assert records[-1]["details"] == {"incident": cli["drift"], "by": "person", "identity": "alice",
                                      "note": "feature pipeline fixed"}
    resolved = json.loads(run(cli, "--state", "resolved", "--json").output)
    assert [r["id"] for r in resolved] == [cli["drift"]] and resolved[0]["resolved_by"] == "alice"
    assert resolved[0]["mttr_s"] >= 0
    open_now = json.loads(run(cli, "--state", "open", "--model", "churn", "--json").output)
    assert [r["id"] for r in open_now] == [cli["service"]]

    table = run(cli)
    assert table.exit_code == 0
    for text in (cli["drift"], cli["service"], "fraud", "drift", "resolved", "feature pipeline fixed", "MTTR"):
        assert text in table.output


def test_cli_refuses_unknown_ids_bad_identities_and_states(cli):
    unknown = run(cli, "ack", "inc-000000000000", "--as", "alice")
    assert unknown.exit_code == 1 and "no incident with the id 'inc-000000000000'" in unknown.output
    bad = run(cli, "ack", cli["drift"], "--as", "alice; rm -rf /")
    assert bad.exit_code == 2 and "--as" in bad.output
    state = run(cli, "--state", "closed")
    assert state.exit_code == 2 and "--state" in state.output
    run(cli, "resolve", cli["service"], "--as", "bob", "--note", "restarted the node")
    again = run(cli, "ack", cli["service"], "--as", "bob")
    assert again.exit_code == 1 and "resolved" in again.output
    assert len(cli["ledger"].records()) == 3  # two opened, one resolved: nothing written on a refusal
