"""Redaction: secret-named fields in any case and position, credentials in URLs (userinfo
passwords, tokens in query strings), ``name=secret`` pairs and bearer/basic credentials in text
are masked; the non-secret fields the ledger and the registry record stay readable (a deliberate
list, checked on both sides)."""

from __future__ import annotations

import pytest

from modelyard.ledger import AuditLedger
from modelyard.redaction import REDACTED, is_secret_name, redact, redact_text

SECRET_NAMES = [
    "token", "api_token", "accessToken", "AccessToken", "apitoken", "APIToken", "refresh-token", "id_token",
    "X-Api-Key", "x-api-key", "api_key", "apiKey", "apikey", "privateKey", "private_key", "secret_key",
    "MODELYARD_LEDGER_KEY", "MODELYARD_WEBHOOK_SECRET", "MODELYARD_DATABASE_URL_PASSWORD", "client_secret",
    "secret", "password", "Password", "db_password", "passwd", "DB_PASSWD", "passphrase", "pass", "pwd",
    "Authorization", "proxy-authorization", "auth", "basic_auth", "oauth_state", "credential", "credentials",
    "aws_credentials", "cookie", "Set-Cookie", "session_cookie", "dsn", "sentry_dsn", "SENTRY_DSN",
    "signing_key", "hmac_key", "encryption_key", "access_keys", "webhookSecret", "mlflowTrackingPassword",
]
# Fields modelyard (and MLflow, and Kubernetes) record that are not secrets: masking them would
# destroy the record. Each is here on purpose.
PLAIN_NAMES = [
    "key",  # a tag's or a toleration's key
    "keys", "model_key", "monitor_key", "sort_key", "primary_key", "public_key", "publicKey", "key_id",
    "key_file", "key_fingerprint", "signer", "delivery_key", "idempotency_key", "cache_key",
    "max_tokens", "prompt_tokens", "completion_tokens", "total_tokens", "tokens", "tokenizer",
    "author", "authors", "authority", "passed", "passthrough", "bypass", "signature", "signature_sha256",
    "artifact_sha256", "digest", "unauthenticated", "unauthenticated_rejections", "monkey", "image",
    "model", "version", "reason", "mttd_s", "rows", "actor", "subject",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_secret_in_any_case_and_position(name):
    assert is_secret_name(name)
    assert redact({name: "s3cr3t-value"}) == {name: REDACTED}


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_fields_the_records_need_are_kept(name):
    assert not is_secret_name(name)
    assert redact({name: "kept-value"}) == {name: "kept-value"}


def test_every_field_the_ledger_records_today_is_kept():
    """The details dicts modelyard appends (deploys, rollouts, images, monitors, KPIs, prunes)."""
    details = {"artifact_sha256": "ab" * 32, "digest": "sha256:" + "cd" * 32, "image": "modelyard/fraud:v3",
               "base_image": "modelyard/base:bookworm", "seconds": 1.5, "strategy": "canary", "weights": {"3": 10},
               "from_version": "2", "version": "3", "reason": "drift on amount", "top_features": ["amount"],
               "mttd_s": 12.0, "mttr_s": 30.5, "rows": 2, "passed": True, "signer": "ef" * 32,
               "key_file": "0123456789abcdef.pub", "outcome": "promoted", "used_traffic_rows": 200,
               "gates": [{"name": "latency", "passed": True, "p95_ms": 3.2}], "endpoint": "http://127.0.0.1:8100"}
    assert redact(details) == details


@pytest.mark.parametrize(("text", "secrets"), [
    ("https://host/x?token=t0k&x=1&api_key=k3y&access_token=a11&password=pw0rd&sig=s1g#frag",
     ["t0k", "k3y", "a11", "pw0rd", "s1g"]),
    ("https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=deadbeef"
     "&X-Amz-Security-Token=FQoG", ["AKIAX", "deadbeef", "FQoG"]),
    ("postgresql://modelyard:hunter2@127.0.0.1:5432/db", ["hunter2"]),
    ("mlflow at http://admin:p%40ss@127.0.0.1:5000 refused", ["p%40ss"]),
    ("git fetch https://ghp_abcdef123@github.com/org/repo", ["ghp_abcdef123"]),
    ("env MODELYARD_LEDGER_KEY=l3dger MODELYARD_API_TOKEN='t0ken' ran", ["l3dger", "t0ken"]),
    ('config {"webhook_secret": "whs-456", "apiKey": "ak-789"}', ["whs-456", "ak-789"]),
    ("password: hunter2", ["hunter2"]),
    ("Authorization: Bearer abc.def-ghi", ["abc.def-ghi"]),
    ("Authorization: Basic dXNlcjpwYXNz", ["dXNlcjpwYXNz"]),
    ("called with Bearer xyz", ["xyz"]),
])
def test_credentials_in_text_are_masked(text, secrets):
    masked = redact_text(text)
    assert REDACTED in masked
    for secret in secrets:
        assert secret not in masked, masked


@pytest.mark.parametrize("text", [
    "https://host/models?page=2&model=fraud&version=3&key=amount",
    "postgresql://modelyard@127.0.0.1:5432/db",
    "rolled back: p95 320 ms > 250 ms; key=amount; max_tokens=256",
    "the canary passed 4 of 4 gates (author: alice)",
    "http://127.0.0.1:5000/#/models/fraud/versions/3",
])
def test_text_without_credentials_is_left_alone(text):
    assert redact_text(text) == text


def test_urls_keep_what_locates_them():
    masked = redact_text("https://u:pw@h.example:8443/p/a?token=t&page=2")
    assert masked == f"https://u:{REDACTED}@h.example:8443/p/a?token={REDACTED}&page=2"


def test_nested_values_and_flags_are_handled():
    value = {"headers": {"X-Api-Key": "k", "Accept": "application/json"}, "auth_enabled": True,
             "api_token": None, "calls": [{"url": "https://h/?access_token=zzz"}], "count": 3}
    assert redact(value) == {"headers": {"X-Api-Key": REDACTED, "Accept": "application/json"},
                             "auth_enabled": True, "api_token": None,
                             "calls": [{"url": f"https://h/?access_token={REDACTED}"}], "count": 3}


def test_the_ledger_stores_no_secret_of_any_shape(tmp_path):
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    ledger.append("cli", "stack.configured", "stack", {
        "accessToken": "tok-1", "apitoken": "tok-2", "X-Api-Key": "tok-3", "privateKey": "tok-4",
        "MODELYARD_LEDGER_KEY": "tok-5", "artifact_url": "https://h/a?token=tok-6&sig=tok-7",
        "note": "db at postgresql://u:tok-8@h/db", "model_key": "abc123", "max_tokens": 256,
    })
    text = ledger.path.read_text()
    assert not [n for n in range(1, 9) if f"tok-{n}" in text]
    details = ledger.records()[0]["details"]
    assert details["model_key"] == "abc123" and details["max_tokens"] == 256
