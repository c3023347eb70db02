"""The registry → Prefect event bridge on the real stack: setting an alias in MLflow emits a
Prefect event; forged, replayed and duplicated posts to the running bridge emit nothing and are
counted, not written to the ledger one by one; a delivery whose event Prefect did not accept is
not claimed, and MLflow's own retry brings it; a name no event may carry fails the flow it starts."""

from __future__ import annotations

import uuid

import httpx
import pytest

from deployments.bridge import emit_prefect_event, event_id
from modelyard.catalog import CHAMPION, Action, Event, model_resource_id, version_resource_id
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.webhooks import bridge_url, webhook_secret
from tests.support.deliveries import RefusedFirst, bridge_replaced, signed_delivery
from tests.support.waits import prefect_events, wait_until

pytestmark = pytest.mark.stack


def _registry_events(stack: Stack, resource_id: str) -> list[dict]:
    return prefect_events(stack.settings, event={"prefix": ["modelyard.registry."]}, resource={"id": [resource_id]})


def _health(stack: Stack) -> dict:
    return httpx.get(bridge_url(stack.settings).replace("/webhooks/mlflow", "/health"), timeout=10).json()


def _ledger_records(stack: Stack) -> list[dict]:
    return ledger_from_settings(stack.settings).records()


def test_alias_set_in_mlflow_reaches_prefect_as_an_event(stack_env: Stack):
    client = registry_client(stack_env.settings)
    name = f"bridge-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias(name, CHAMPION, version)
    resource = version_resource_id(name, version)
    events = wait_until(lambda: [e for e in _registry_events(stack_env, resource) if e["event"] == Event.REGISTRY_ALIAS_CREATED],
                        60, "the alias event in Prefect")
    assert events[0]["resource"]["mlflow.alias"] == CHAMPION
    assert any(e["event"] == Event.REGISTRY_VERSION_CREATED for e in _registry_events(stack_env, resource))


def test_forged_replayed_and_duplicate_posts_start_nothing_and_are_counted_not_recorded(stack_env: Stack):
    secret = webhook_secret(stack_env.settings)
    url = bridge_url(stack_env.settings)
    name = f"forged-{uuid.uuid4().hex[:6]}"
    data = {"name": name, "alias": CHAMPION, "version": "1"}
    before, summaries_before = _health(stack_env)["rejected"], len(
        [r for r in _ledger_records(stack_env) if r["action"] == Action.WEBHOOK_REJECTED])
    forged_headers, body = signed_delivery("not-the-secret", data=data)
    assert httpx.post(url, headers=forged_headers, content=body, timeout=10).status_code == 401
    old_headers, old_body = signed_delivery(secret, age_s=600, data=data)
    assert httpx.post(url, headers=old_headers, content=old_body, timeout=10).status_code == 401
    good_headers, good_body = signed_delivery(secret, data=data)
    assert httpx.post(url, headers=good_headers, content=good_body, timeout=10).status_code == 202
    assert httpx.post(url, headers=good_headers, content=good_body, timeout=10).status_code == 409
    # A later genuine delivery (a new version, which starts no deploy) is the marker: once its
    # event is in Prefect, anything the refused posts had emitted before it would be too.
    marker_headers, marker_body = signed_delivery(secret, entity="model_version", data={"name": name, "version": "2"})
    assert httpx.post(url, headers=marker_headers, content=marker_body, timeout=10).status_code == 202
    wait_until(lambda: _registry_events(stack_env, version_resource_id(name, "2")), 60, "the marker event in Prefect")
    assert len(_registry_events(stack_env, version_resource_id(name, "1"))) == 1  # only the one genuine delivery
    after = _health(stack_env)["rejected"]
    assert {code: after.get(code, 0) - before.get(code, 0) for code in ("bad_signature", "stale", "duplicate")} == \
        {"bad_signature": 1, "stale": 1, "duplicate": 1}
    records = _ledger_records(stack_env)
    refused_ids = {h["x-mlflow-delivery-id"] for h in (forged_headers, old_headers)}
    assert not [r for r in records if r["details"].get("delivery_id") in refused_ids]  # no record per post
    assert len([r for r in records if r["action"] == Action.WEBHOOK_REJECTED]) - summaries_before <= 1


def test_a_flood_of_forged_posts_is_rate_limited_and_a_genuine_delivery_still_passes(stack_env: Stack):
    secret, url = webhook_secret(stack_env.settings), bridge_url(stack_env.settings)

    def summaries() -> list[dict]:
        return [r for r in _ledger_records(stack_env) if r["action"] == Action.WEBHOOK_REJECTED]

    before = _health(stack_env)
    summaries_before, refused_before, limited_before = len(summaries()), sum(before["rejected"].values()), \
        before["rate_limited"]
    with httpx.Client(timeout=10) as client:
        statuses = [client.post(url, headers=headers, content=body).status_code
                    for headers, body in (signed_delivery("forged", data={"name": "flood", "version": "1"})
                                          for _ in range(300))]
        headers, body = signed_delivery(secret, entity="model_version", data={"name": f"flood-{uuid.uuid4().hex[:6]}",
                                                                               "version": "1"})
        genuine = client.post(url, headers=headers, content=body)
    assert set(statuses) <= {401, 429} and statuses.count(429) >= 300 - 2 * 20  # past the burst: back off
    assert genuine.status_code == 202
    health = _health(stack_env)
    assert sum(health["rejected"].values()) - refused_before == 300
    assert health["rate_limited"] - limited_before == statuses.count(429)
    assert len(summaries()) - summaries_before <= 1  # 300 refusals: at most one summary record, none per post


def test_a_delivery_prefect_did_not_accept_is_not_claimed_and_mlflow_retry_brings_it(stack_env: Stack):
    """The bridge's emit refused once (its Prefect API address refuses connections): the bridge
    answers 503, records nothing, and MLflow's own retry of the same delivery is emitted."""
    client = registry_client(stack_env.settings)
    name = f"retry-{uuid.uuid4().hex[:6]}"
    with bridge_replaced(stack_env, RefusedFirst(times=1)) as bridge:
        client.create_registered_model(name)
        run_id = client.create_run(client.create_experiment(name)).info.run_id
        version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
        attempts = wait_until(lambda: [a for a in bridge.of("model_version.created", name) if a.status == 202]
                              and bridge.of("model_version.created", name), 60, "MLflow's retry answered 202")
    assert [(a.status, a.done) for a in attempts] == [(503, False), (202, True)]  # not claimed until accepted
    assert len({a.delivery_id for a in attempts}) == 1  # MLflow's retry: the same delivery
    resource = version_resource_id(name, version)
    events = wait_until(lambda: _registry_events(stack_env, resource), 60, "the version event in Prefect")
    assert [e["id"] for e in events] == [event_id(attempts[0].delivery_id)]
    emitted = [r for r in _ledger_records(stack_env) if r["action"] == Action.REGISTRY_EVENT_EMITTED
               and r["details"].get("delivery_id") == attempts[0].delivery_id]
    assert len(emitted) == 1


def test_an_event_naming_an_invalid_model_fails_the_flow_it_starts_and_is_recorded(stack_env: Stack):
    """Anyone who can emit a Prefect event can start a flow: the flow checks the names first."""
    bad_name = f"../../etc/evil-{uuid.uuid4().hex[:6]}"
    emit_prefect_event({"event": str(Event.DRIFT_DETECTED),
                        "resource": {"prefect.resource.id": model_resource_id(bad_name), "modelyard.model": bad_name}})

    def refused() -> list[dict]:
        return [r for r in _ledger_records(stack_env)
                if r["action"] == Action.NAME_REFUSED and r["details"].get("value") == repr(bad_name)]

    records = wait_until(refused, 120, "the retrain flow refusing the name")
    assert [(r["subject"], r["details"]["field"]) for r in records] == [("retrain", "model")]
    assert not (stack_env.settings.state_dir / "retrain" / f"{bad_name}.json").exists()
