"""Checks a smoke run makes: can this flow run reach the tracking server and the ledger?"""

from __future__ import annotations

import platform
from typing import Any

import httpx
import mlflow
import prefect
from prefect import task

from modelyard.resources import get_resources
from modelyard.settings import Settings


def describe_environment(settings: Settings) -> dict[str, Any]:
    """What the flow run sees: package versions and whether MLflow answers."""
    try:
        mlflow_ok = httpx.get(f"{settings.mlflow_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        mlflow_ok = False
    return {
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "mlflow": mlflow.__version__,
        "mlflow_url": settings.mlflow_url,
        "mlflow_reachable": mlflow_ok,
    }


@task(name="check-environment", retries=3, retry_delay_seconds=2)
def check_environment() -> dict[str, Any]:
    facts = describe_environment(get_resources().settings)
    if not facts["mlflow_reachable"]:
        raise RuntimeError(f"MLflow at {facts['mlflow_url']} is not reachable")
    return facts
