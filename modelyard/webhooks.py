"""The shared secret of MLflow's registry webhooks, and their registration with MLflow."""

from __future__ import annotations

import os
import secrets

from modelyard.settings import Settings

WEBHOOK_NAME = "modelyard-registry-bridge"


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one generated once and kept (mode 0600) in the state dir."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    path = settings.run_dir / "webhook_secret"
    if not path.exists():
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def bridge_url(settings: Settings) -> str:
    from deployments.bridge import WEBHOOK_PATH

    return f"http://{settings.host}:{settings.bridge_port}{WEBHOOK_PATH}"


def ensure_registry_webhook(settings: Settings) -> str:
    """Create (or point back at the bridge) the MLflow webhook for registry events; its id."""
    from mlflow import MlflowClient

    from deployments.bridge import WEBHOOK_EVENTS

    client = MlflowClient(tracking_uri=settings.mlflow_url, registry_uri=settings.mlflow_url)
    secret = webhook_secret(settings)
    for webhook in client.list_webhooks():
        if webhook.name == WEBHOOK_NAME:
            client.update_webhook(webhook.webhook_id, url=bridge_url(settings), events=list(WEBHOOK_EVENTS),
                                  secret=secret, status="ACTIVE")
            return webhook.webhook_id
    return client.create_webhook(WEBHOOK_NAME, bridge_url(settings), list(WEBHOOK_EVENTS),
                                 description="Registry events to Prefect, through modelyard's bridge",
                                 secret=secret).webhook_id
