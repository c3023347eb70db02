"""The shared secret of MLflow's registry webhooks, and their registration with MLflow."""

from __future__ import annotations

import os
import secrets

from modelyard.catalog import WEBHOOK_EVENTS, WEBHOOK_NAME, WEBHOOK_PATH
from modelyard.settings import Settings


def _kept_secret(path, make) -> str:
    """A secret generated once by ``make`` and kept in ``path`` (mode 0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one generated once and kept (mode 0600) in the state dir."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    return _kept_secret(settings.run_dir / "webhook_secret", lambda: secrets.token_urlsafe(32))


def mlflow_secret_encryption_key(settings: Settings) -> str:
    """The Fernet key MLflow encrypts stored webhook secrets with. Without a stable key MLflow
    makes a new one per start and can no longer read the webhooks it stored (HTTP 500)."""
    from cryptography.fernet import Fernet

    return _kept_secret(settings.run_dir / "mlflow_webhook_key", lambda: Fernet.generate_key().decode())


def bridge_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.bridge_port}{WEBHOOK_PATH}"


def ensure_registry_webhook(settings: Settings) -> str:
    """Create (or point back at the bridge) the MLflow webhook for registry events; its id."""
    from modelyard.resources import get_resources

    client = get_resources(settings).registry
    secret = webhook_secret(settings)
    for webhook in client.list_webhooks():
        if webhook.name == WEBHOOK_NAME:
            client.update_webhook(webhook.webhook_id, url=bridge_url(settings), events=list(WEBHOOK_EVENTS),
                                  secret=secret, status="ACTIVE")
            return webhook.webhook_id
    return client.create_webhook(WEBHOOK_NAME, bridge_url(settings), list(WEBHOOK_EVENTS),
                                 description="Registry events to Prefect, through modelyard's bridge",
                                 secret=secret).webhook_id
