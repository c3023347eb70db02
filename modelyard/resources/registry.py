"""The MLflow registry as modelyard uses it: the one place an MlflowClient is made, the retries
every registry call gets, and the reads every layer needs (a version's spec, aliases, links)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelyard.catalog import CHAMPION
from modelyard.settings import MlflowIdentity, Settings

SPEC_ARTIFACT = "spec/spec.json"


def point_mlflow_at(settings: Settings, identity: MlflowIdentity = "service") -> None:
    """MLflow's process-wide URIs (used by its fluent API) on the stack of ``settings``, and the
    basic-auth identity every MLflow call of this process makes (MLflow reads
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` from the environment at each request)."""
    mlflow.set_tracking_uri(settings.mlflow_url)
    mlflow.set_registry_uri(settings.mlflow_url)
    os.environ.update(settings.mlflow_client_env(identity))


def registry_client(settings: Settings, identity: MlflowIdentity = "service") -> MlflowClient:
    """Point MLflow at the stack's tracking server and registry, as ``identity`` (the only
    construction)."""
    point_mlflow_at(settings, identity)
    return MlflowClient(tracking_uri=settings.mlflow_url, registry_uri=settings.mlflow_url)


def is_transient(task, task_run, state) -> bool:
    """Retry only when the failure is the infrastructure's (connection refused, timeouts, 5xx)."""
    try:
        state.result()
    except (requests.ConnectionError, requests.Timeout, httpx.TransportError, ConnectionError, TimeoutError):
        return True
    except MlflowException as error:
        text = str(error)
        return any(word in text for word in ("Connection", "Max retries", "503", "502", "504", "timed out"))
    except Exception:
        return False
    return False


def __getattr__(name: str) -> Any:
    """``INFRA_RETRIES``: the retries of every Prefect task that calls MLflow, declared once.
    Inputs are frames and fitted models: never hashed for caching. Made on first use, because
    Prefect takes a second to import and the inference server reads the registry without it."""
    if name != "INFRA_RETRIES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from prefect.cache_policies import NO_CACHE

    return {"retries": 3, "retry_delay_seconds": [2, 5, 10], "retry_condition_fn": is_transient,
            "cache_policy": NO_CACHE}


def version_spec(client: MlflowClient, model_name: str, version: str, strict: bool = False):
    """The model spec a version was built from (``None`` for versions registered without one).
    ``strict``: a spec that does not validate (any more) raises its ``SpecError``, and one that
    cannot be read raises, instead of counting as no spec."""
    from modelyard.spec import SpecError, parse_spec

    run_id = client.get_model_version(model_name, version).run_id
    if strict and not (run_id and any(a.path == SPEC_ARTIFACT for a in client.list_artifacts(run_id, "spec"))):
        return None
    try:
        raw = mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPEC_ARTIFACT}") if run_id else None
    except Exception:  # noqa: BLE001 - no artifact (e.g. a version logged by hand)
        if strict:
            raise
        return None
    if raw is None:
        return None
    try:
        return parse_spec(raw, origin=f"{model_name} v{version} {SPEC_ARTIFACT}")
    except SpecError:
        if strict:
            raise
        return None


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def set_alias(client: MlflowClient, model_name: str, alias: str, version: str) -> None:
    client.set_registered_model_alias(model_name, alias, version)


def champions(client: MlflowClient) -> dict[str, str]:
    """Every registered model with a champion, and the version it points at."""
    return {model.name: str(model.aliases[CHAMPION]) for model in client.search_registered_models()
            if CHAMPION in model.aliases}


def registry_snapshot(client: MlflowClient, model_name: str) -> dict[str, Any]:
    """Versions and aliases of a model (empty when it does not exist): to prove what changed."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        return {"versions": [], "aliases": {}}
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    return {"versions": versions, "aliases": dict(model.aliases)}


def artifact_url(mlflow_url: str, run_id: str, path: str) -> str:
    """Where a browser opens an artifact a run logged (the one way links to MLflow files are made)."""
    return f"{mlflow_url}/get-artifact?path={quote(path)}&run_uuid={run_id}"


def model_url(mlflow_url: str, model: str) -> str:
    return f"{mlflow_url}/#/models/{quote(model)}"


def experiment_url(mlflow_url: str, experiment_id: str) -> str:
    return f"{mlflow_url}/#/experiments/{experiment_id}"
