"""Resources: every client of the outside world and every state store, built once from
``Settings`` and passed in (Dagster's ``resources/``). A test points them at real servers on
other ports by changing the settings, never by patching."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from pydantic import SecretStr

from modelyard.ledger import AuditLedger, ledger_from_settings
from modelyard.resources.inference import InferenceClient
from modelyard.resources.registry import point_mlflow_at, registry_client
from modelyard.resources.serving_state import ServingState
from modelyard.resources.witness import ledger_witnesses
from modelyard.settings import Settings, get_settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    registry: MlflowClient
    serving: ServingState
    inference: InferenceClient
    ledger: AuditLedger


def build_resources(settings: Settings) -> Resources:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return Resources(settings=settings, registry=registry_client(settings),
                     serving=ServingState(settings.state_dir),
                     inference=InferenceClient(token, settings.state_dir / "models", settings.admin_secret()),
                     ledger=ledger_from_settings(settings, witnesses=ledger_witnesses(settings)))


def _identity(settings: Settings) -> tuple:
    """Every setting's value, secrets revealed: two settings objects that agree share resources."""
    return tuple((name, value.get_secret_value() if isinstance(value, SecretStr) else repr(value))
                 for name, value in sorted(settings.__dict__.items()))


_built: dict[tuple, Resources] = {}


def get_resources(settings: Settings | None = None) -> Resources:
    """The resources of the stack ``settings`` (default: the environment's) points at, built once
    per distinct settings in a process."""
    settings = settings or get_settings()
    identity = _identity(settings)
    if identity not in _built:
        _built[identity] = build_resources(settings)
    else:  # MLflow's fluent calls (mlflow.log_*, set_experiment) follow its process-wide URIs
        point_mlflow_at(settings)
    return _built[identity]
