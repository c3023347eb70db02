"""Running Prefect deployments of the stack from the command line."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import FlowRun

from modelyard.settings import Settings


def run_deployment_and_wait(
    settings: Settings, name: str, parameters: dict[str, Any] | None = None, timeout_s: float = 300
) -> FlowRun:
    """Start deployment ``flow/deployment`` on the stack's worker and wait for its final state."""
    from prefect.deployments import run_deployment
    from prefect.settings import temporary_settings

    with temporary_settings(settings.prefect_client_settings()):
        return run_deployment(name, parameters=parameters or {}, timeout=timeout_s, poll_interval=1)


def flow_run_url(settings: Settings, flow_run: FlowRun) -> str:
    return f"{settings.prefect_ui_url}/runs/flow-run/{flow_run.id}"
