"""The one settings object of modelyard.

Every URL, port, path, token and threshold is read here, from ``MODELYARD_*``
environment variables or a ``.env`` file; no other module reads the environment.
"""

from __future__ import annotations

import os
import secrets
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
# MLflow's basic-auth users of a stack, by identity.
MlflowIdentity = Literal["admin", "service", "viewer"]
MLFLOW_USERS: dict[str, str] = {"admin": "admin", "service": "modelyard-service", "viewer": "viewer"}
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")


class Settings(BaseSettings):
    """Where the stack lives, how to reach it, and the secrets it uses."""

    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_", env_file=".env", extra="ignore", frozen=True
    )

    project_dir: Path = Field(
        PROJECT_DIR, description="The project holding prefect.yaml, flows/ and tasks/."
    )
    state_dir: Path = Field(
        PROJECT_DIR / ".modelyard",
        description="Databases, artifacts, logs, pid files and the audit ledger.",
    )
    host: str = Field("127.0.0.1", description="Address every server binds to.")
    prefect_port: int = Field(4200, description="Prefect API and UI port.")
    mlflow_port: int = Field(5000, description="MLflow tracking server and registry port.")
    bridge_port: int = Field(4400, description="Registry webhook → Prefect event bridge port.")
    database_url: SecretStr | None = Field(
        None,
        description=(
            "PostgreSQL server URL (postgresql://user:pass@host:port/db). When set, Prefect "
            "and MLflow each get their own database on it: <db>_prefect and <db>_mlflow."
        ),
    )
    work_pool: str = Field("local", description="The process work pool the worker serves.")
    worker_query_seconds: float = Field(
        2.0, description="How often the worker polls for scheduled runs."
    )
    startup_timeout_s: float = Field(
        180.0, description="How long `stack up` waits for a component to become healthy."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token for modelyard's inference and admin APIs."
    )
    admin_token: SecretStr | None = Field(
        None, description="Lets modelyard's own replays (warm-up, model gates) stay out of a server's log and "
                          "metrics; unset: one is generated once and kept in the state dir."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC secret shared with MLflow registry webhooks."
    )
    serve_anonymous: bool = Field(
        False, description="Serve inference without a token when none is set (the demo does)."
    )
    serve_max_batch: int = Field(64, ge=1, description="Most rows one micro-batch runs at once.")
    serve_max_wait_ms: float = Field(
        0.0, ge=0, description="Extra wait for a micro-batch to fill (0: batch only what queued while busy)."
    )
    serve_max_body_bytes: int = Field(8 * 1024 * 1024, description="Larger request bodies get 413.")
    serve_max_rows: int = Field(10_000, description="More rows in one request get 400.")
    prediction_log_sample_rate: float = Field(1.0, ge=0, le=1, description="Share of requests logged.")
    prediction_log_queue: int = Field(10_000, ge=1, description="Requests the log queue holds before dropping.")
    prediction_log_queue_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Bytes (an estimate) the log queue holds before dropping.")
    prediction_log_retention_days: float = Field(
        7.0, ge=0, description="A server deletes its model's log partitions older than this (0: keep all).")
    docker_base_image: str = Field(
        "python:3.11-slim",
        description="Base of every model image; `infra/docker/build-base-image.sh` builds a local one offline.",
    )
    # Notification channels (Prefect notification blocks, made by `stack up`): every monitoring
    # alert and every incident opened or resolved goes to each one set. Webhook URLs carry their
    # own credentials, so they are secrets: kept in Prefect's block store, never in a child's
    # environment, a log or the ledger.
    notify_url: SecretStr | None = Field(
        None, description="A generic webhook (JSON POST: subject, body) for alerts and incidents; unset: none.")
    notify_slack_url: SecretStr | None = Field(
        None, description="A Slack incoming-webhook URL (https://hooks.slack.com/services/…) for alerts and incidents.")
    notify_teams_url: SecretStr | None = Field(
        None, description="A Microsoft Teams Workflows (Power Automate) webhook URL for alerts and incidents.")
    kubernetes_context: str | None = Field(None, description="kubeconfig context the kubernetes target uses.")
    ledger_key: SecretStr | None = Field(
        None, description="Unused since the ledger's checkpoints are ed25519-signed with a generated key "
                          "(credentials_dir/ledger-checkpoint.key); kept so that an older .env still loads."
    )
    prefect_auth_string: SecretStr | None = Field(
        None, description="The Prefect API's basic-auth string (user:password); unset: one generated at first "
                          "`stack up` (credentials_dir/prefect-auth, 0600).")
    trusted_model_keys_dir: Path | None = Field(
        None, description="Public keys (*.pub, PEM) whose model signatures are trusted; unset: state_dir/keys/trusted.")
    model_signing_key: Path | None = Field(
        None, description="PEM private key that signs registered models; unset: one generated at first use "
                          "(credentials_dir/model-signing.key, 0600).")

    @cached_property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @cached_property
    def prefect_ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @cached_property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @cached_property
    def ledger_path(self) -> Path:
        return self.state_dir / "audit" / "ledger.jsonl"

    @cached_property
    def prediction_log_dir(self) -> Path:
        return self.state_dir / "predictions"

    @cached_property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @cached_property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def postgres_url_for(self, component: str, driver: str) -> str:
        """The URL of ``component``'s own database on the configured PostgreSQL server."""
        if self.database_url is None:
            raise ValueError("database_url is not set")
        parts = urlsplit(self.database_url.get_secret_value())
        base_db = parts.path.lstrip("/") or "modelyard"
        return urlunsplit((driver, parts.netloc, f"/{base_db}_{component}", "", ""))

    @cached_property
    def prefect_sqlite_path(self) -> Path:
        return self.state_dir / "prefect" / "prefect.db"

    @cached_property
    def mlflow_sqlite_path(self) -> Path:
        return self.state_dir / "mlflow" / "mlflow.db"

    @cached_property
    def prefect_database_url(self) -> str:
        if self.database_url is not None:
            return self.postgres_url_for("prefect", "postgresql+asyncpg")
        return f"sqlite+aiosqlite:///{self.prefect_sqlite_path}"

    @cached_property
    def mlflow_backend_uri(self) -> str:
        if self.database_url is not None:
            return self.postgres_url_for("mlflow", "postgresql+psycopg2")
        return f"sqlite:///{self.mlflow_sqlite_path}"

    @cached_property
    def mlflow_artifacts_dir(self) -> Path:
        return self.state_dir / "mlflow" / "artifacts"

    @cached_property
    def credentials_dir(self) -> Path:
        """Generated credentials and keys, one 0600 file each (the directory is 0700)."""
        return self.run_dir / "credentials"

    def credential(self, name: str, make: Callable[[], str] | None = None) -> str:
        """The credential ``name``: generated once (``make``, default 32 random url-safe bytes)
        into ``credentials_dir/name`` (0600), the same for every process of this stack."""
        self.credentials_dir.mkdir(parents=True, exist_ok=True)
        self.credentials_dir.chmod(0o700)
        return kept_secret(self.credentials_dir / name, make or (lambda: secrets.token_urlsafe(32)))

    def base_env(self) -> dict[str, str]:
        """What every child process may see: where this stack is, and no secret at all. This
        stack's MLflow is the tracking URI, so that no MLflow call anywhere falls back to
        MLflow's default store (``./mlflow.db`` in the working directory)."""
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "MODELYARD_PROJECT_DIR": str(self.project_dir),
            "MODELYARD_STATE_DIR": str(self.state_dir),
            "MODELYARD_HOST": self.host,
            "MODELYARD_PREFECT_PORT": str(self.prefect_port),
            "MODELYARD_MLFLOW_PORT": str(self.mlflow_port),
            "MODELYARD_BRIDGE_PORT": str(self.bridge_port),
            "MODELYARD_WORK_POOL": self.work_pool,
            "MODELYARD_SERVE_ANONYMOUS": str(self.serve_anonymous).lower(),
            "MODELYARD_DOCKER_BASE_IMAGE": self.docker_base_image,
        }
        if self.trusted_model_keys_dir is not None:
            env["MODELYARD_TRUSTED_MODEL_KEYS_DIR"] = str(self.trusted_model_keys_dir)
        return env

    def replica_env(self) -> dict[str, str]:
        """A model server's environment: ``base_env`` and its own tokens (inference, admin);
        never the database URL, the webhook secret, registry credentials or ledger keys."""
        env = self.base_env()
        if self.api_token is not None:
            env["MODELYARD_API_TOKEN"] = self.api_token.get_secret_value()
        env["MODELYARD_ADMIN_TOKEN"] = self.admin_secret()
        return env

    def child_env(self) -> dict[str, str]:
        """A trusted component's environment (worker and its flow runs, bridge, watchdog, the
        CLI): ``base_env`` and the secrets those components use, the Prefect API's auth string
        and the MLflow service identity (``mlflow_client_env("service")``) included."""
        env = self.base_env()
        for name in ("database_url", "api_token", "webhook_secret", "prefect_auth_string"):
            value = getattr(self, name)
            if value is not None:
                env[f"MODELYARD_{name.upper()}"] = value.get_secret_value()
        env["MODELYARD_ADMIN_TOKEN"] = self.admin_secret()
        env["PREFECT_API_AUTH_STRING"] = self.prefect_auth()
        env.update(self.mlflow_client_env("service"))
        if self.model_signing_key is not None:
            env["MODELYARD_MODEL_SIGNING_KEY"] = str(self.model_signing_key)
        return env

    def admin_secret(self) -> str:
        """The admin token: the configured one, else one generated once and kept (mode 0600) in
        the run dir, where every process of this stack finds the same."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        return kept_secret(self.run_dir / "admin_token", lambda: secrets.token_urlsafe(32))

    def prefect_client_env(self) -> dict[str, str]:
        """Variables that point a Prefect client (CLI, worker, flow) at this stack, its API auth
        string included."""
        return {**self.prefect_location_env(), "PREFECT_API_AUTH_STRING": self.prefect_auth()}

    def prefect_location_env(self) -> dict[str, str]:
        """Where this stack's Prefect is, and no secret: what every process may see."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_HOME": str(self.state_dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": str(self.worker_query_seconds),
        }

    def prefect_client_settings(self) -> dict:
        """The same, as Prefect settings for an in-process client:
        ``with temporary_settings(settings.prefect_client_settings()): ...`` (Prefect reads its
        environment once, at import, so a process cannot point itself at a stack through
        ``os.environ`` afterwards)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        return {PREFECT_API_URL: self.prefect_api_url, PREFECT_API_AUTH_STRING: self.prefect_auth()}

    def prefect_auth(self) -> str:
        """The Prefect API's basic-auth string (``admin:<password>``): the configured one, else
        one generated once into the credentials dir. The server requires it on every API call
        (``PREFECT_SERVER_API_AUTH_STRING``); the UI asks for it at login."""
        if self.prefect_auth_string is not None:
            return self.prefect_auth_string.get_secret_value()
        return self.credential("prefect-auth", lambda: f"admin:{secrets.token_urlsafe(32)}")

    def prefect_basic_auth(self) -> tuple[str, str]:
        """The Prefect API's credentials as (user, password), for a plain HTTP client."""
        user, _, password = self.prefect_auth().partition(":")
        return user, password

    def mlflow_basic_auth(self, identity: MlflowIdentity = "service") -> tuple[str, str]:
        """An MLflow identity's credentials as (user, password), for a plain HTTP client."""
        return self.mlflow_username(identity), self.mlflow_password(identity)

    def mlflow_username(self, identity: MlflowIdentity = "service") -> str:
        """The MLflow user of an identity: ``admin`` (manages users and webhooks),
        ``modelyard-service`` (worker, flows, bridge, watchdog, CLI) or ``viewer`` (read-only)."""
        return MLFLOW_USERS[identity]

    def mlflow_password(self, identity: MlflowIdentity = "service") -> str:
        """The MLflow password of an identity, generated once into ``credentials_dir/mlflow-<identity>``."""
        if identity not in MLFLOW_USERS:
            raise ValueError(f"unknown MLflow identity {identity!r}; expected one of {', '.join(MLFLOW_USERS)}")
        return self.credential(f"mlflow-{identity}")

    def mlflow_client_env(self, identity: MlflowIdentity = "service") -> dict[str, str]:
        """The variables an MLflow client authenticates with (MLflow's own), as ``identity``."""
        return {"MLFLOW_TRACKING_USERNAME": self.mlflow_username(identity),
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password(identity)}

    @cached_property
    def mlflow_auth_config_path(self) -> Path:
        """MLflow's basic-auth configuration (``MLFLOW_AUTH_CONFIG_PATH``): it holds the admin's
        password and the auth database's URL, so it lives with the credentials (0600)."""
        return self.credentials_dir / "mlflow-auth.ini"

    @cached_property
    def mlflow_auth_database_uri(self) -> str:
        """Users and permissions of MLflow's basic-auth app: beside MLflow's own store (SQLite),
        or its own ``<db>_mlflow_auth`` database on the configured PostgreSQL server."""
        if self.database_url is not None:
            return self.postgres_url_for("mlflow_auth", "postgresql+psycopg2")
        return f"sqlite:///{self.state_dir / 'mlflow' / 'auth.db'}"

    def inherited_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """What a process of the stack keeps of the caller's environment (PATH, HOME, LANG,
        proxies, modelyard's settings that hold no secret, …): nothing of Prefect or MLflow (the
        stack says those itself), no secret setting, no variable whose name says secret, no URL
        with a password in it."""
        from modelyard.redaction import is_secret_name

        plain_settings = {f"MODELYARD_{name.upper()}" for name, field in type(self).model_fields.items()
                          if "SecretStr" not in str(field.annotation)}
        kept = {}
        for key, value in (os.environ if environ is None else environ).items():
            if key.startswith(("PREFECT_", "MLFLOW_")) or is_secret_name(key):
                continue
            if key.startswith("MODELYARD_") and key not in plain_settings:
                continue
            if _URL_WITH_PASSWORD.search(value):
                continue
            kept[key] = value
        return kept

def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret generated once by ``make`` and kept in ``path`` (mode 0600). Written whole under
    a temporary name and linked into place, so that a concurrent reader never sees it half made."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: theirs is the secret
        finally:
            draft.unlink()
    return path.read_text().strip()


def get_settings() -> Settings:
    """Settings as the environment gives them now (a fresh read, so tests can vary them)."""
    return Settings()
