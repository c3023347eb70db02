"""Assertions shared by the SQLite and PostgreSQL stack tests: what a user checks after `up`."""

from __future__ import annotations

import httpx

from modelyard.ledger import ledger_from_settings
from modelyard.cli.runs import run_deployment_and_wait
from modelyard.cli.stack import Stack


def assert_stack_healthy(stack: Stack) -> None:
    settings = stack.settings
    assert httpx.get(f"{settings.prefect_api_url}/health", timeout=5).json() is True
    assert httpx.get(f"{settings.mlflow_url}/health", timeout=5).status_code == 200
    # The MLflow registry answers through its REST API, not only /health.
    search = httpx.get(f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/search", timeout=10,
                       auth=settings.mlflow_basic_auth("viewer"))
    assert search.status_code == 200, search.text
    assert stack.worker_online()
    assert "smoke" in stack.registered_deployments()
    rows = {row.name: row for row in stack.status()}
    assert set(rows) == {"prefect-server", "mlflow-server", "prefect-worker", "registry-bridge", "watchdog",
                         "deployments"}
    assert all(row.healthy for row in rows.values()), rows
    assert all(rows[name].pid for name in ("prefect-server", "mlflow-server", "prefect-worker", "registry-bridge",
                                           "watchdog"))
    # Every one of them is a program of the stack's supervisord.
    supervised = stack.processes.processes()
    assert all(supervised[name].pid == rows[name].pid for name in supervised if name in rows)


def assert_smoke_flow_runs_and_audits(stack: Stack):
    ledger = ledger_from_settings(stack.settings)
    before = len(ledger.records())
    flow_run = run_deployment_and_wait(stack.settings, "smoke/smoke", timeout_s=240)
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    # Other flows (event-triggered deploys) may write to the ledger at the same time.
    mine = [r for r in ledger.records()[before:] if r["actor"] == f"flow:smoke/{flow_run.id}"]
    assert [r["action"] for r in mine] == ["stack.smoke"]
    assert ledger.verify().ok
    return flow_run
