"""MLflow's basic-auth app as the stack runs it: who may do what in the tracking server and the
model registry.

Three identities, each a user of MLflow's own auth store (``settings.mlflow_auth_database_uri``):

- ``admin``: MLflow's superuser; manages users, roles and the registry webhook (MLflow lets only
  an admin manage webhooks). Used by `stack up` only.
- ``modelyard-service``: the worker and its flow runs, the bridge, the watchdog and the CLI. It
  creates experiments and registered models and manages them all (aliases, tags, versions).
- ``viewer``: reads experiments, runs, models and prompts; writes nothing, creates nothing.

MLflow runs with workspaces on (everything lives in the ``default`` workspace) because only then
can creating be withheld: without them every authenticated user may create experiments and
registered models. Unauthenticated requests get 401 (only ``/health`` and ``server-info`` are
open); a route without an authorization rule is refused (``MLFLOW_BASIC_AUTH_FAIL_CLOSED``).
Passwords are generated at the first `stack up` into ``credentials_dir/mlflow-<identity>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from modelyard.settings import Settings

WORKSPACE = "default"
# Role of each non-admin identity in the default workspace: (resource type, pattern, permission).
ROLES: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "service": ("modelyard-service", (
        ("workspace", "*", "USE"),  # may create experiments, registered models, prompts
        ("experiment", "*", "MANAGE"),
        ("registered_model", "*", "MANAGE"),
        ("prompt", "*", "MANAGE"),
    )),
    "viewer": ("modelyard-viewer", (
        ("experiment", "*", "READ"),
        ("registered_model", "*", "READ"),
        ("prompt", "*", "READ"),
    )),
}

USERS_GET = "/api/2.0/mlflow/users/get"
USERS_CREATE = "/api/2.0/mlflow/users/create"
USERS_CURRENT = "/api/2.0/mlflow/users/current"
USERS_UPDATE_PASSWORD = "/api/2.0/mlflow/users/update-password"
USER_ROLES = "/api/3.0/mlflow/users/roles/list"
ROLES_LIST = "/api/3.0/mlflow/roles/list"
ROLES_CREATE = "/api/3.0/mlflow/roles/create"
ROLE_PERMISSIONS = "/api/3.0/mlflow/roles/permissions/list"
ROLE_PERMISSIONS_ADD = "/api/3.0/mlflow/roles/permissions/add"
ROLES_ASSIGN = "/api/3.0/mlflow/roles/assign"


class MlflowAuthError(RuntimeError):
    """The stack's MLflow identities could not be set up; the message says why and what to do."""


def render_auth_config(settings: Settings) -> str:
    """The basic-auth app's configuration (``MLFLOW_AUTH_CONFIG_PATH``). ``default_permission``
    is what a signed-in user holds on a resource no grant of theirs names: nothing, so only the
    roles above give access. Checked passwords are cached in the server's memory for 5 minutes
    (keyed by an HMAC of the password). ``%`` is doubled: configparser interpolates."""
    values = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": settings.mlflow_auth_database_uri,
        "admin_username": settings.mlflow_username("admin"),
        "admin_password": settings.mlflow_password("admin"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        # A password is checked with scrypt (~0.1 s of CPU) on every request unless cached; the
        # server runs one worker, so a password change through the API applies at once.
        "auth_cache_ttl_seconds": "300",
    }
    for name, value in values.items():
        if "\n" in value:
            raise MlflowAuthError(f"MLflow's auth setting {name} cannot hold a line break")
    body = "\n".join(f"{name} = {value.replace('%', '%%')}" for name, value in values.items())
    return f"; written by `modelyard stack up`; do not edit\n[mlflow]\n{body}\n"


def write_auth_config(settings: Settings) -> Path:
    """The configuration written (0600, whole, only when it changed) where the server reads it."""
    path = settings.mlflow_auth_config_path
    text = render_auth_config(settings)
    if path.exists() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staged, path)
    return path


def server_env(settings: Settings) -> dict[str, str]:
    """What the MLflow server needs for its auth app (secrets: its program's environment only)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(settings)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": settings.credential("mlflow-flask-secret"),
        "MLFLOW_ENABLE_WORKSPACES": "true",
        "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",
    }


class _Admin:
    """MLflow's auth REST API, as the admin."""

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.settings = settings
        self.http = httpx.Client(base_url=settings.mlflow_url, timeout=timeout_s,
                                 auth=(settings.mlflow_username("admin"), settings.mlflow_password("admin")))

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code == 401:
            raise MlflowAuthError(
                f"MLflow refuses the admin password kept in {self.settings.credentials_dir / 'mlflow-admin'}: its "
                f"auth store ({_where(self.settings)}) was made with another one. Put that password back in the "
                "file, or move the auth store away to start its users afresh.")
        if response.status_code not in ok:
            raise MlflowAuthError(f"MLflow {method} {path} answered {response.status_code}: {response.text[:300]}")
        return response


def _where(settings: Settings) -> str:
    return "PostgreSQL" if settings.database_url is not None else settings.mlflow_auth_database_uri.removeprefix("sqlite:///")


def ensure_identities(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """The service and viewer users, with their passwords and roles, as they should be; what
    had to change (empty when nothing did). Safe to run on every `stack up`."""
    admin = _Admin(settings, timeout_s)
    changes: list[str] = []
    try:
        roles = {role["name"]: role for role in
                 admin.call("GET", ROLES_LIST, params={"workspace": WORKSPACE}).json().get("roles", [])}
        for identity, (role_name, grants) in ROLES.items():
            username, password = settings.mlflow_username(identity), settings.mlflow_password(identity)
            if admin.call("GET", USERS_GET, ok=(200, 404), params={"username": username}).status_code == 404:
                admin.call("POST", USERS_CREATE, json={"username": username, "password": password})
                changes.append(f"created MLflow user {username}")
            elif httpx.get(f"{settings.mlflow_url}{USERS_CURRENT}", auth=(username, password),
                           timeout=timeout_s).status_code == 401:
                admin.call("PATCH", USERS_UPDATE_PASSWORD, json={"username": username, "password": password})
                changes.append(f"reset the MLflow password of {username}")
            role = roles.get(role_name)
            if role is None:
                role = admin.call("POST", ROLES_CREATE, json={
                    "workspace": WORKSPACE, "name": role_name,
                    "description": f"modelyard's {identity} identity"}).json()["role"]
                changes.append(f"created MLflow role {role_name}")
            held = {(p["resource_type"], p["resource_pattern"], p["permission"]) for p in admin.call(
                "GET", ROLE_PERMISSIONS, params={"role_id": str(role["id"])}).json().get("role_permissions", [])}
            for resource_type, pattern, permission in grants:
                if (resource_type, pattern, permission) not in held:
                    admin.call("POST", ROLE_PERMISSIONS_ADD, json={
                        "role_id": role["id"], "resource_type": resource_type, "resource_pattern": pattern,
                        "permission": permission})
                    changes.append(f"granted {permission} on {resource_type} {pattern} to role {role_name}")
            assigned = admin.call("GET", USER_ROLES, params={"username": username}).json().get("roles", [])
            if not any(r["id"] == role["id"] for r in assigned):
                admin.call("POST", ROLES_ASSIGN, json={"username": username, "role_id": role["id"]})
                changes.append(f"assigned role {role_name} to {username}")
    except httpx.HTTPError as error:
        raise MlflowAuthError(f"MLflow at {settings.mlflow_url} did not answer: {error}") from error
    finally:
        admin.http.close()
    return changes
