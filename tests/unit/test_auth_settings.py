"""Credentials of a stack: generated once into private files, and handed to each kind of process
only as it needs them."""

from __future__ import annotations

import configparser
import stat

from modelyard.mlflow_auth import render_auth_config, write_auth_config
from modelyard.settings import Settings


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prefect_auth_string_is_generated_once_into_a_private_file(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    auth = settings.prefect_auth()
    user, _, password = auth.partition(":")
    assert user == "admin" and len(password) >= 32
    assert Settings(state_dir=tmp_path / "state").prefect_auth() == auth  # every process finds the same
    assert settings.prefect_basic_auth() == (user, password)
    assert _mode(settings.credentials_dir) == 0o700
    assert _mode(settings.credentials_dir / "prefect-auth") == 0o600


def test_a_configured_prefect_auth_string_wins_and_reaches_trusted_children(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", prefect_auth_string="ops:configured-secret")
    assert settings.prefect_auth() == "ops:configured-secret"
    assert not (settings.credentials_dir / "prefect-auth").exists()
    child = settings.child_env()
    assert child["PREFECT_API_AUTH_STRING"] == "ops:configured-secret"
    assert child["MODELYARD_PREFECT_AUTH_STRING"] == "ops:configured-secret"  # so a child's Settings agrees
    assert settings.prefect_client_env()["PREFECT_API_AUTH_STRING"] == "ops:configured-secret"


def test_trusted_children_get_the_service_identity_and_replicas_no_credential(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", database_url="postgresql://u:pg-secret@127.0.0.1/yard")
    child = settings.child_env()
    assert child["MLFLOW_TRACKING_USERNAME"] == "modelyard-service"
    assert child["MLFLOW_TRACKING_PASSWORD"] == settings.mlflow_password("service")
    for identity in ("admin", "viewer"):
        assert settings.mlflow_password(identity) not in child.values()
    replica = settings.replica_env()
    secrets = {settings.prefect_auth(), *(settings.mlflow_password(i) for i in ("admin", "service", "viewer")),
               settings.database_url.get_secret_value()}
    assert not [key for key, value in replica.items() if value in secrets]
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(replica)
    assert "PREFECT_API_AUTH_STRING" not in settings.prefect_location_env()


def test_the_stack_inherits_no_secret_from_the_caller(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    kept = settings.inherited_env({
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "http_proxy": "http://proxy:3128",
        "https_proxy": "http://user:proxy-secret@proxy:3128", "GITHUB_TOKEN": "ghp-secret", "PGPASSWORD": "pw",
        "AWS_SECRET_ACCESS_KEY": "aws", "MODELYARD_LEDGER_KEY": "ledger", "PREFECT_API_AUTH_STRING": "a:b",
        "MLFLOW_TRACKING_PASSWORD": "pw2", "OPENAI_API_KEY": "sk", "MODELYARD_SERVE_MAX_ROWS": "50",
        "MODELYARD_DATABASE_URL": "postgresql://u:pg@h/db", "MODELYARD_ADMIN_TOKEN": "adm",
        "MODELYARD_TEST_POSTGRES_URL": "postgresql://u:pg@h/db"})
    assert kept == {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "http_proxy": "http://proxy:3128",
                    "MODELYARD_SERVE_MAX_ROWS": "50"}  # a setting without a secret still reaches the stack


def test_mlflow_auth_config_is_private_and_reads_back_exactly(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", database_url="postgresql://u:p%40ss@127.0.0.1:5432/yard")
    path = write_auth_config(settings)
    assert path.parent == settings.credentials_dir and _mode(path) == 0o600
    config = configparser.ConfigParser()
    config.read(path)
    section = config["mlflow"]
    assert section["database_uri"] == "postgresql+psycopg2://u:p%40ss@127.0.0.1:5432/yard_mlflow_auth"
    assert section["admin_username"] == "admin"
    assert section["admin_password"] == settings.mlflow_password("admin")
    assert section["default_permission"] == "NO_PERMISSIONS"
    assert int(section["auth_cache_ttl_seconds"]) > 0  # else scrypt on every request: ~0.6 s each under load
    assert path.read_text() == render_auth_config(settings)
    assert Settings(state_dir=tmp_path / "other").mlflow_auth_database_uri.endswith("/other/mlflow/auth.db")
