"""The reconciler's decisions as plain functions: which champions the event path missed, and
which versions are already on their way (tests/integration/test_reconcile.py: on a real stack)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from deployments.reconcile import Missed, alias_event, missed_deploys, recently_in_flight, refused_names

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _record(action: str, subject: str, age_s: float) -> dict:
    return {"action": action, "subject": subject, "time": (NOW - timedelta(seconds=age_s)).isoformat()}


def test_reconciler_emits_only_what_the_deploy_path_never_handled():
    champions = {"a": "3", "b": "2", "c": "5", "d": "1", "e": "4"}
    serving = {"a": "2", "b": "2", "c": "4", "d": None, "e": "3"}
    handled = {"a": {"2"}, "b": {"2"}, "c": {"4", "5"}, "e": {"3"}}  # c v5 was refused
    missed = missed_deploys(champions, serving, handled, busy={"e"})
    assert missed == [Missed("a", "3", "2"), Missed("d", "1", None)]


def test_champion_already_serving_is_not_missed():
    assert missed_deploys({"m": "2"}, {"m": "2"}, {}, busy=set()) == []


def test_champion_the_deploy_path_refused_or_served_before_is_not_retried():
    """An operator or a new version decides what comes after a failed or rolled-back version."""
    assert missed_deploys({"m": "3"}, {"m": "2"}, {"m": {"2", "3"}}, busy=set()) == []


def test_model_with_a_rollout_in_progress_is_left_alone():
    assert missed_deploys({"m": "3"}, {"m": "2"}, {"m": {"2"}}, busy={"m"}) == []


def test_champion_of_a_model_nothing_serves_is_missed():
    assert missed_deploys({"m": "1"}, {}, {}, busy=set()) == [Missed("m", "1", None)]


def test_reconciled_event_is_the_alias_event_the_bridge_would_have_emitted():
    event = alias_event("a", "3")
    assert event["event"] == "modelyard.registry.model_version_alias.created"
    assert event["resource"]["mlflow.alias"] == "champion"
    assert event["resource"]["prefect.resource.id"] == "mlflow.model.a.version.3"
    assert (event["resource"]["mlflow.model"], event["resource"]["mlflow.version"]) == ("a", "3")
    assert event["resource"]["modelyard.reconciled"] == "true" and event["payload"]["source"] == "reconciler"


def test_reconciler_leaves_versions_whose_event_is_on_its_way():
    records = [
        _record("registry.event.emitted", "mlflow.model.fraud.v2.version.7", 30),
        _record("deploy.started", "bc/3", 90),
        _record("deploy.started", "bc/2", 7200),
        _record("data.validated", "bc/4", 0),
    ]
    assert recently_in_flight(records, NOW, grace_s=600) == {"fraud.v2": {"7"}, "bc": {"3"}}


def test_reconciled_events_count_as_on_their_way_too():
    records = [_record("registry.event.reconciled", "m/5", 10)]
    assert recently_in_flight(records, NOW, grace_s=600) == {"m": {"5"}}


def test_with_no_grace_nothing_older_than_now_is_on_its_way():
    records = [_record("deploy.started", "m/5", 1), _record("deploy.started", "m/6", 0)]
    assert recently_in_flight(records, NOW, grace_s=0) == {"m": {"6"}}


def test_champion_whose_event_prefect_never_accepted_is_missed_at_the_next_run():
    """A failed emit leaves no ``registry.event.emitted`` record: nothing says the version is on
    its way, so the next reconcile run (grace or not) emits it."""
    records = [_record("model.promoted", "m/3", 5), _record("registry.webhook.rejections", "registry-bridge", 4)]
    in_flight = recently_in_flight(records, NOW, grace_s=600)
    assert in_flight == {}
    assert missed_deploys({"m": "3"}, {"m": "2"}, {"m": {"2"} | in_flight.get("m", set())}, busy=set()) == \
        [Missed("m", "3", "2")]


def test_a_refused_champion_name_is_recorded_once_not_at_every_run():
    records = [{"action": "name.refused", "subject": "reconcile", "details": {"value": "'a b'"}},
               {"action": "name.refused", "subject": "deploy", "details": {"value": "'c d'"}}]
    assert refused_names(records, "reconcile") == {"'a b'"}
