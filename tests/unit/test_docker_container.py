"""What a docker replica is given, and who prunes its prediction log: a container gets the
stack's settings less the secrets a server never uses, and never prunes (it could not record
that in the ledger); the host does, with a ledger record. No Docker Engine is needed here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from deployments.server.prediction_log import PredictionLog
from deployments.targets.base import host_replica
from deployments.targets.docker import PRUNER, DockerTarget, container_environment
from modelyard.catalog import Action
from modelyard.ledger import ledger_from_settings
from modelyard.settings import Settings


def _settings(tmp_path, **overrides) -> Settings:
    return Settings(state_dir=tmp_path / "state", api_token="t0ken", ledger_key="ledger-k3y", webhook_secret="webhook-s3cret",
                    database_url="postgresql://u:db-pa55@db:5432/m", admin_token="adm1n", **overrides)


def test_a_container_gets_what_a_server_needs_and_no_retention_nor_stack_secrets(tmp_path):
    settings = _settings(tmp_path)
    replica = host_replica(settings, 1, 8123, "/tmp/sock/r1.sock", "c-r1")
    env = container_environment(settings, replica)
    assert env["MODELYARD_PREDICTION_LOG_RETENTION_DAYS"] == "0"
    assert env["PORT"] == "8123" and env["UDS"] == "/tmp/sock/r1.sock"
    assert env["MODELYARD_API_TOKEN"] == "t0ken" and env["MODELYARD_ADMIN_TOKEN"] == "adm1n"
    assert env["MODELYARD_STATE_DIR"] == str(settings.state_dir)  # the mounted log is at the host's path
    assert not {"MODELYARD_LEDGER_KEY", "MODELYARD_DATABASE_URL", "MODELYARD_WEBHOOK_SECRET"} & set(env)
    assert not any(secret in value for value in env.values() for secret in ("ledger-k3y", "webhook-s3cret", "db-pa55"))


def test_the_host_prunes_a_container_served_models_log_and_records_it_in_the_ledger(tmp_path):
    settings = _settings(tmp_path, prediction_log_retention_days=7)
    now = datetime.now(UTC)
    for version, moment in (("1", now - timedelta(days=9)), ("2", now - timedelta(hours=1))):
        log = PredictionLog(settings.prediction_log_dir, "fraud", version)
        log.submit(f"r{version}", moment.timestamp(), {"x": [1.0, 2.0]}, [0, 1])
        log.close()
    pruned = DockerTarget(settings).prune_logs("fraud")
    assert set(pruned) == {"1"} and pruned["1"]["rows"] == 2
    records = [r for r in ledger_from_settings(settings).records() if r["action"] == Action.PREDICTION_LOG_PRUNED]
    assert [(r["actor"], r["subject"]) for r in records] == [(PRUNER, "fraud/1")]
    assert list((settings.prediction_log_dir / "model=fraud" / "version=2").rglob("*.parquet"))
    assert DockerTarget(settings.model_copy(update={"prediction_log_retention_days": 0})).prune_logs("fraud") == {}
