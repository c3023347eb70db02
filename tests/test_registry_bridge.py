"""The registry → Prefect event bridge: MLflow's own signed deliveries get through, forged,
replayed and duplicated ones do not; on the real stack, setting an alias emits a Prefect event."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import mlflow
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from deployments.bridge import SeenDeliveries, WebhookRejected, WebhookVerifier, prefect_event
from modelyard.cli.stack import Stack
from modelyard.webhooks import bridge_url, webhook_secret

SECRET = "s3cret-for-tests"


def _delivery(secret: str = SECRET, age_s: int = 0, delivery_id: str | None = None, data: dict | None = None):
    payload = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "now",
                          "data": data or {"name": "fraud", "alias": "champion", "version": "3"}})
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) - age_s)
    headers = {"x-mlflow-signature": _generate_hmac_signature(secret, delivery_id, timestamp, payload),
               "x-mlflow-delivery-id": delivery_id, "x-mlflow-timestamp": timestamp,
               "content-type": "application/json"}
    return headers, payload.encode()


@pytest.fixture
def verifier(tmp_path) -> WebhookVerifier:
    return WebhookVerifier(SECRET, SeenDeliveries(tmp_path / "seen.sqlite"))


def test_mlflow_signed_delivery_becomes_a_prefect_event_naming_model_and_version(verifier):
    delivery = verifier.verify(*_delivery())
    event = prefect_event(delivery)
    assert event["event"] == "modelyard.registry.model_version_alias.created"
    assert event["resource"]["prefect.resource.id"] == "mlflow.model.fraud.version.3"
    assert event["resource"]["mlflow.alias"] == "champion"
    assert event["related"][0]["prefect.resource.id"] == "mlflow.model.fraud"


@pytest.mark.parametrize("tamper", ["wrong secret", "edited body", "no signature"])
def test_bad_signature_is_refused(verifier, tamper):
    headers, body = _delivery(secret="other" if tamper == "wrong secret" else SECRET)
    if tamper == "edited body":
        body = body.replace(b'"3"', b'"4"')
    if tamper == "no signature":
        headers.pop("x-mlflow-signature")
    with pytest.raises(WebhookRejected) as rejected:
        verifier.verify(headers, body)
    assert rejected.value.status == 401


def test_replay_older_than_five_minutes_is_refused(verifier):
    with pytest.raises(WebhookRejected) as rejected:
        verifier.verify(*_delivery(age_s=301))
    assert rejected.value.status == 401 and "older than 300 s" in rejected.value.reason


def test_repeated_delivery_id_is_refused_even_after_a_restart(tmp_path):
    headers, body = _delivery()
    WebhookVerifier(SECRET, SeenDeliveries(tmp_path / "seen.sqlite")).verify(headers, body)
    restarted = WebhookVerifier(SECRET, SeenDeliveries(tmp_path / "seen.sqlite"))
    with pytest.raises(WebhookRejected) as rejected:
        restarted.verify(headers, body)
    assert rejected.value.status == 409


def _registry_events(stack: Stack, resource_id: str) -> list[dict]:
    response = httpx.post(f"{stack.settings.prefect_api_url}/events/filter", timeout=10, json={
        "filter": {"event": {"prefix": ["modelyard.registry."]},
                   "resource": {"id": [resource_id]}}, "limit": 50})
    response.raise_for_status()
    return response.json()["events"]


@pytest.mark.stack
def test_alias_set_in_mlflow_reaches_prefect_as_an_event(stack_env: Stack):
    client = mlflow.MlflowClient(stack_env.settings.mlflow_url)
    name = f"bridge-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias(name, "champion", version)
    resource = f"mlflow.model.{name}.version.{version}"
    deadline = time.monotonic() + 60
    events: list[dict] = []
    while time.monotonic() < deadline:
        events = _registry_events(stack_env, resource)
        if any(e["event"].endswith("model_version_alias.created") for e in events):
            break
        time.sleep(1)
    alias_events = [e for e in events if e["event"] == "modelyard.registry.model_version_alias.created"]
    assert alias_events and alias_events[0]["resource"]["mlflow.alias"] == "champion"
    assert any(e["event"] == "modelyard.registry.model_version.created" for e in events)


@pytest.mark.stack
def test_forged_replayed_and_duplicate_posts_start_nothing(stack_env: Stack):
    secret = webhook_secret(stack_env.settings)
    url = bridge_url(stack_env.settings)
    name = f"forged-{uuid.uuid4().hex[:6]}"
    data = {"name": name, "alias": "champion", "version": "1"}
    forged_headers, body = _delivery(secret="not-the-secret", data=data)
    assert httpx.post(url, headers=forged_headers, content=body, timeout=10).status_code == 401
    old_headers, old_body = _delivery(secret=secret, age_s=600, data=data)
    assert httpx.post(url, headers=old_headers, content=old_body, timeout=10).status_code == 401
    good_headers, good_body = _delivery(secret=secret, data=data)
    assert httpx.post(url, headers=good_headers, content=good_body, timeout=10).status_code == 202
    assert httpx.post(url, headers=good_headers, content=good_body, timeout=10).status_code == 409
    resource = f"mlflow.model.{name}.version.1"
    deadline = time.monotonic() + 60
    while not _registry_events(stack_env, resource) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)  # anything the refused posts had started would have arrived by now
    assert len(_registry_events(stack_env, resource)) == 1  # only the one genuine delivery
