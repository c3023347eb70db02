"""The registry → Prefect event bridge's verifier: MLflow's own signed deliveries get through,
forged, replayed and duplicated ones do not (tests/integration/test_registry_bridge.py: the same
on the real stack)."""

from __future__ import annotations

import pytest

from deployments.bridge import SeenDeliveries, WebhookRejected, WebhookVerifier, prefect_event
from tests.support.deliveries import signed_delivery

SECRET = "s3cret-for-tests"


def _delivery(secret: str = SECRET, age_s: int = 0):
    return signed_delivery(secret, age_s)


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
