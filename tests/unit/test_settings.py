"""One settings object: environment prefix, derived URLs, secrets kept out of reprs."""

from __future__ import annotations

from pathlib import Path

from modelyard.settings import Settings


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELYARD_PREFECT_PORT", "4311")
    monkeypatch.setenv("MODELYARD_STATE_DIR", str(tmp_path))
    settings = Settings()
    assert settings.prefect_api_url == "http://127.0.0.1:4311/api"
    assert settings.ledger_path == Path(tmp_path) / "audit" / "ledger.jsonl"
    assert settings.prefect_database_url.startswith("sqlite+aiosqlite:///")


def test_database_url_gives_each_server_its_own_database():
    settings = Settings(database_url="postgresql://u:p@127.0.0.1:5432/yard")
    assert settings.prefect_database_url == "postgresql+asyncpg://u:p@127.0.0.1:5432/yard_prefect"
    assert settings.mlflow_backend_uri == "postgresql+psycopg2://u:p@127.0.0.1:5432/yard_mlflow"


def test_secrets_do_not_show_in_repr():
    settings = Settings(api_token="tok-secret", database_url="postgresql://u:pw-secret@h/db")
    assert "tok-secret" not in repr(settings)
    assert "pw-secret" not in repr(settings)
