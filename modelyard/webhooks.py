"""The shared secret of MLflow's registry webhooks, and their registration with MLflow."""

from __future__ import annotations

from pathlib import Path

from modelyard.catalog import WEBHOOK_EVENTS, WEBHOOK_NAME, WEBHOOK_PATH
from modelyard.settings import Settings


def _moved_credential(settings: Settings, old: Path, name: str) -> None:
    """A secret an older modelyard kept in the run dir, moved (not made anew) into the
    credentials dir: a new webhook key would leave MLflow unable to read the webhooks it stored."""
    new = settings.credentials_dir / name
    if old.exists() and not new.exists():
        settings.credential(name, lambda: old.read_text().strip())
        old.unlink(missing_ok=True)


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one generated once into the credentials dir (0600)."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    _moved_credential(settings, settings.run_dir / "webhook_secret", "webhook-secret")
    return settings.credential("webhook-secret")


def mlflow_secret_encryption_key(settings: Settings) -> str:
    """The Fernet key MLflow encrypts stored webhook secrets with. Without a stable key MLflow
    makes a new one per start and can no longer read the webhooks it stored (HTTP 500)."""
    from cryptography.fernet import Fernet

    _moved_credential(settings, settings.run_dir / "mlflow_webhook_key", "mlflow-webhook-key")
    return settings.credential("mlflow-webhook-key", lambda: Fernet.generate_key().decode())


def bridge_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.bridge_port}{WEBHOOK_PATH}"


def _admin_registry(settings: Settings):
    """MLflow's registry REST store as the admin: MLflow lets only an admin manage webhooks.
    Its credentials go with this store alone, never into the process's environment."""
    from mlflow.store.model_registry.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    creds = MlflowHostCreds(settings.mlflow_url, username=settings.mlflow_username("admin"),
                            password=settings.mlflow_password("admin"))
    return RestStore(lambda: creds)


def ensure_registry_webhook(settings: Settings) -> str:
    """Create (or point back at the bridge) the MLflow webhook for registry events; its id."""
    from mlflow.entities.webhook import WebhookEvent, WebhookStatus

    store = _admin_registry(settings)
    secret = webhook_secret(settings)
    events = [WebhookEvent.from_str(event) for event in WEBHOOK_EVENTS]
    page_token = None
    while True:
        page = store.list_webhooks(max_results=100, page_token=page_token)
        for webhook in page:
            if webhook.name == WEBHOOK_NAME:
                store.update_webhook(webhook.webhook_id, url=bridge_url(settings), events=events, secret=secret,
                                     status=WebhookStatus.ACTIVE)
                return webhook.webhook_id
        page_token = page.token
        if not page_token:
            break
    return store.create_webhook(WEBHOOK_NAME, bridge_url(settings), events,
                                description="Registry events to Prefect, through modelyard's bridge",
                                secret=secret).webhook_id
