"""The registry → Prefect event bridge on the real stack: setting an alias in MLflow emits a
Prefect event; forged, replayed and duplicated posts to the running bridge emit nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest

from modelyard.catalog import CHAMPION, Action, Event, version_resource_id
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.webhooks import bridge_url, webhook_secret
from tests.support.deliveries import signed_delivery
from tests.support.waits import prefect_events, wait_until

pytestmark = pytest.mark.stack


def _registry_events(stack: Stack, resource_id: str) -> list[dict]:
    return prefect_events(stack.settings, event={"prefix": ["modelyard.registry."]}, resource={"id": [resource_id]})


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


def test_forged_replayed_and_duplicate_posts_start_nothing(stack_env: Stack):
    secret = webhook_secret(stack_env.settings)
    url = bridge_url(stack_env.settings)
    name = f"forged-{uuid.uuid4().hex[:6]}"
    data = {"name": name, "alias": CHAMPION, "version": "1"}
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
    refused = {r["details"]["delivery_id"]: r["details"]["status"]
               for r in ledger_from_settings(stack_env.settings).records() if r["action"] == Action.REGISTRY_WEBHOOK_REJECTED}
    assert [refused.get(h["x-mlflow-delivery-id"]) for h in (forged_headers, old_headers, good_headers)] == [401, 401, 409]
