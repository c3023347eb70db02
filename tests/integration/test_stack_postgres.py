"""The same stack with Prefect and MLflow (its auth app's users too) on a real PostgreSQL server,
whose password shows on no command line and in no environment but the servers'."""

from __future__ import annotations

import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg2
import pytest
from pydantic import SecretStr

from modelyard.cli.stack import Stack
from tests.support.stacks import alive, make_settings, stack_pids
from tests.support.stack_checks import assert_smoke_flow_runs_and_audits, assert_stack_healthy

pytestmark = [pytest.mark.stack, pytest.mark.postgres]


def test_stack_runs_on_postgresql(tmp_path, postgres_url):
    parts = urlsplit(postgres_url)
    base = f"modelyard_test_{uuid.uuid4().hex[:8]}"
    url = urlunsplit((parts.scheme, parts.netloc, f"/{base}", "", ""))
    settings = make_settings(tmp_path / "state", database_url=SecretStr(url))
    stack = Stack(settings)
    try:
        stack.up()
        assert_stack_healthy(stack)
        assert_smoke_flow_runs_and_audits(stack)
        # The servers really keep their state in PostgreSQL, not in a local SQLite file.
        assert not (settings.state_dir / "prefect" / "prefect.db").exists()
        assert not (settings.state_dir / "mlflow" / "mlflow.db").exists()
        assert not (settings.state_dir / "mlflow" / "auth.db").exists()
        admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
        with psycopg2.connect(admin) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{base}_%",))
            assert {row[0] for row in cursor.fetchall()} == {f"{base}_prefect", f"{base}_mlflow", f"{base}_mlflow_auth"}
        with psycopg2.connect(settings.postgres_url_for("prefect", "postgresql")) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")
            assert cursor.fetchone()[0] >= 1
        with psycopg2.connect(settings.postgres_url_for("mlflow", "postgresql")) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM experiments")
            assert cursor.fetchone()[0] >= 1
        with psycopg2.connect(settings.postgres_url_for("mlflow_auth", "postgresql")) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT username, is_admin FROM users")
            assert set(cursor.fetchall()) == {("admin", True), ("modelyard-service", False), ("viewer", False)}
        password = parts.password
        assert password and len(password) >= 4
        command_lines = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert str(settings.state_dir) in command_lines
        assert url not in command_lines and f":{password}@" not in command_lines
        supervisord = psutil.Process(stack.processes.pid()).environ()
        # The test server's password ("modelyard") is also a word of other settings (the base
        # image name): look for the credential as it is used, in a URL or as a whole value.
        assert not [key for key, value in supervisord.items()
                    if f":{password}@" in value or value == password or parts.netloc in value]
        pids = stack_pids(stack)
    finally:
        stack.down()
    assert alive(pids) == set()
