"""Checks a smoke run makes: can this flow run reach the tracking server and the ledger?"""

from __future__ import annotations

import platform
from typing import Any

import httpx
import mlflow
import prefect
from prefect import task

from modelyard.settings import get_settings


def describe_environment() -> dict[str, Any]:
    """What the flow run sees: package versions and whether MLflow answers."""
    settings = get_settings()
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


def environment_markdown(facts: dict[str, Any]) -> str:
    """The facts as a markdown table for the Prefect UI."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    return f"# modelyard smoke run\n\n| what | value |\n|---|---|\n{rows}\n"


@task(name="check-environment", retries=3, retry_delay_seconds=2)
def check_environment() -> dict[str, Any]:
    facts = describe_environment()
    if not facts["mlflow_reachable"]:
        raise RuntimeError(f"MLflow at {facts['mlflow_url']} is not reachable")
    return facts
