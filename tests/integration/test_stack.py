"""`modelyard stack up|status|down` against real Prefect and MLflow servers on SQLite."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelyard.processes import port_in_use
from modelyard.cli.stack import Stack, StackError
from tests.support.stacks import alive, make_settings, prefect_client, stack_pids
from tests.support.stack_checks import assert_smoke_flow_runs_and_audits, assert_stack_healthy

pytestmark = pytest.mark.stack


def test_up_starts_healthy_components_on_loopback(sqlite_stack: Stack):
    assert_stack_healthy(sqlite_stack)
    settings = sqlite_stack.settings
    assert settings.host == "127.0.0.1"
    for port in (settings.prefect_port, settings.mlflow_port):
        assert port_in_use("127.0.0.1", port)


def test_smoke_flow_runs_through_the_worker_and_writes_the_ledger(sqlite_stack: Stack):
    assert_smoke_flow_runs_and_audits(sqlite_stack)


def test_second_up_changes_nothing(sqlite_stack: Stack):
    pids_before = {r.name: r.pid for r in sqlite_stack.status() if r.pid}
    with prefect_client(sqlite_stack.settings) as client:
        updated_before = {d.name: d.updated for d in client.read_deployments()}
    Stack(sqlite_stack.settings).up()
    pids_after = {r.name: r.pid for r in sqlite_stack.status() if r.pid}
    with prefect_client(sqlite_stack.settings) as client:
        updated_after = {d.name: d.updated for d in client.read_deployments()}
    assert pids_after == pids_before
    assert updated_after == updated_before


def test_status_command_reports_each_component(sqlite_stack: Stack):
    env = {**sqlite_stack.settings.child_env()}
    import os

    env["PATH"] = os.environ.get("PATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "stack", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    import json

    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["prefect-server"]["url"] == sqlite_stack.settings.prefect_ui_url
    assert rows["mlflow-server"]["url"] == sqlite_stack.settings.mlflow_url
    assert rows["prefect-worker"]["healthy"] is True
    declared = len(sqlite_stack.declared_deployments())
    assert rows["deployments"]["detail"].startswith(f"{declared}/{declared} registered")


def test_port_taken_by_a_stranger_stops_up_with_a_clear_message(tmp_path):
    import socket

    settings = make_settings(tmp_path / "state")
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", settings.prefect_port))
        stranger.listen()
        with pytest.raises(StackError, match=rf"port {settings.prefect_port} .* taken"):
            Stack(settings).up()
    assert Stack(settings).down() == []


def test_component_that_dies_at_start_names_its_log(tmp_path):
    settings = make_settings(tmp_path / "state")
    # A damaged MLflow store (not an SQLite file): the server exits during start-up.
    store = settings.state_dir / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"this is not an sqlite database" * 200)
    stack = Stack(settings)
    try:
        with pytest.raises(StackError) as failure:
            stack.up()
        message = str(failure.value)
        assert "mlflow-server exited during start-up" in message
        assert str(settings.logs_dir / "mlflow-server.log") in message
        assert "file is not a database" in (settings.logs_dir / "mlflow-server.log").read_text()
    finally:
        stack.down()


def test_store_path_that_cannot_be_a_database_stops_up_before_starting_anything(tmp_path):
    settings = make_settings(tmp_path / "state")
    (settings.state_dir / "mlflow" / "mlflow.db").mkdir(parents=True)  # a directory where the file goes
    stack = Stack(settings)
    with pytest.raises(StackError, match=r"mlflow-server cannot start: its SQLite store .*mlflow\.db is not a file"):
        stack.up()
    assert all(not row.healthy for row in stack.status())
    assert not (settings.logs_dir / "prefect-server.log").exists()


def test_down_stops_everything_it_started_and_nothing_else(tmp_path):
    settings = make_settings(tmp_path / "state")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stack = Stack(settings)
    try:
        stack.up()
        pids = stack_pids(stack) | {stack.processes.pid()}
        assert len(pids) >= 6
        stopped = stack.down()
        assert set(stopped) == {"prefect-server", "mlflow-server", "prefect-worker", "registry-bridge", "watchdog"}
        assert alive(pids) == set()  # supervisord too
        assert not stack.processes.running()
        assert bystander.poll() is None
        assert not port_in_use("127.0.0.1", settings.prefect_port)
        assert not port_in_use("127.0.0.1", settings.mlflow_port)
        assert all(not row.healthy for row in stack.status())
        assert stack.down() == []
    finally:
        stack.down()
        bystander.kill()
