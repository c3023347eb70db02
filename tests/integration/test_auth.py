"""Authentication on by default: Prefect's API wants its auth string, MLflow its basic-auth users
(admin, the service identity, a read-only viewer), and no secret shows on a command line, in a pid
file, in a log or in an environment that does not need it."""

from __future__ import annotations

import stat
import subprocess
import uuid

import httpx
import psutil
import pytest

from modelyard.cli.stack import MLFLOW_SERVER, PREFECT_SERVER, PREFECT_WORKER, REGISTRY_BRIDGE, WATCHDOG, Stack
from tests.support.stacks import stack_secrets

pytestmark = pytest.mark.stack

API = "/api/2.0/mlflow"


def _mlflow(stack: Stack, identity: str | None) -> httpx.Client:
    settings = stack.settings
    auth = None if identity is None else (settings.mlflow_username(identity), settings.mlflow_password(identity))
    return httpx.Client(base_url=settings.mlflow_url, auth=auth, timeout=30)


def test_prefect_api_refuses_a_request_without_its_auth_string(sqlite_stack: Stack):
    settings = sqlite_stack.settings
    url = f"{settings.prefect_api_url}/deployments/filter"
    user, password = settings.prefect_auth().split(":", 1)
    assert httpx.post(url, json={}, timeout=10).status_code == 401
    assert httpx.post(url, json={}, auth=(user, password + "x"), timeout=10).status_code == 401
    answer = httpx.post(url, json={}, auth=(user, password), timeout=10)
    assert answer.status_code == 200
    assert "smoke" in {deployment["name"] for deployment in answer.json()}
    # The UI is told to ask for it.
    assert httpx.get(f"{settings.prefect_ui_url}/ui-settings", timeout=10).json()["auth"] == "BASIC"


def test_mlflow_refuses_a_request_without_credentials_and_serves_each_identity(sqlite_stack: Stack):
    search = f"{API}/registered-models/search"
    with _mlflow(sqlite_stack, None) as anonymous:
        assert anonymous.get(search).status_code == 401
        assert anonymous.get("/").status_code == 401  # the UI too
        assert anonymous.get("/health").status_code == 200
    settings = sqlite_stack.settings
    wrong = httpx.get(f"{settings.mlflow_url}{search}", auth=("viewer", settings.mlflow_password("viewer") + "x"))
    assert wrong.status_code == 401
    for identity in ("admin", "service", "viewer"):
        with _mlflow(sqlite_stack, identity) as client:
            assert client.get(search).status_code == 200, identity


def test_viewer_reads_everything_and_writes_nothing(sqlite_stack: Stack):
    name = f"auth-probe-{uuid.uuid4().hex[:8]}"
    with _mlflow(sqlite_stack, "service") as service, _mlflow(sqlite_stack, "viewer") as viewer:
        experiment = service.post(f"{API}/experiments/create", json={"name": name})
        assert experiment.status_code == 200, experiment.text
        experiment_id = experiment.json()["experiment_id"]
        run_id = service.post(f"{API}/runs/create", json={"experiment_id": experiment_id}).json()["run"]["info"]["run_id"]
        assert service.post(f"{API}/registered-models/create", json={"name": name}).status_code == 200
        version = service.post(f"{API}/model-versions/create",
                               json={"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id})
        assert version.status_code == 200, version.text
        number = version.json()["model_version"]["version"]
        alias = {"name": name, "alias": "probe", "version": number}
        assert service.post(f"{API}/registered-models/alias", json=alias).status_code == 200
        assert service.post(f"{API}/registered-models/set-tag", json={"name": name, "key": "k", "value": "v"}).status_code == 200

        # The viewer reads what the service made.
        assert viewer.get(f"{API}/registered-models/get", params={"name": name}).status_code == 200
        assert viewer.get(f"{API}/experiments/get", params={"experiment_id": experiment_id}).status_code == 200
        assert viewer.get(f"{API}/runs/get", params={"run_id": run_id}).status_code == 200
        # … and changes none of it, nor creates anything.
        writes = {
            "move an alias": ("POST", "registered-models/alias", {**alias, "alias": "champion"}),
            "delete an alias": ("DELETE", "registered-models/alias", {"name": name, "alias": "probe"}),
            "tag a model": ("POST", "registered-models/set-tag", {"name": name, "key": "k", "value": "forged"}),
            "register a version": ("POST", "model-versions/create",
                                   {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id}),
            "delete a model": ("DELETE", "registered-models/delete", {"name": name}),
            "log to a run": ("POST", "runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 0}),
            "create an experiment": ("POST", "experiments/create", {"name": f"{name}-viewer"}),
            "create a model": ("POST", "registered-models/create", {"name": f"{name}-viewer"}),
            "list webhooks": ("GET", "webhooks", None),
        }
        refused = {what: viewer.request(method, f"{API}/{path}", json=body).status_code
                   for what, (method, path, body) in writes.items()}
        assert refused == dict.fromkeys(writes, 403)
        model = service.get(f"{API}/registered-models/get", params={"name": name}).json()["registered_model"]
        assert {a["alias"]: a["version"] for a in model.get("aliases", [])} == {"probe": number}
        assert {t["key"]: t["value"] for t in model.get("tags", [])} == {"k": "v"}
        assert service.get(f"{API}/experiments/get-by-name",
                           params={"experiment_name": f"{name}-viewer"}).status_code == 404


def test_only_the_admin_manages_users_and_webhooks(sqlite_stack: Stack):
    with _mlflow(sqlite_stack, "service") as service, _mlflow(sqlite_stack, "admin") as admin:
        assert service.get(f"{API}/webhooks").status_code == 403
        assert service.post(f"{API}/users/create", json={"username": "intruder", "password": "x" * 16}).status_code == 403
        webhooks = admin.get(f"{API}/webhooks").json()["webhooks"]
    assert [w["name"] for w in webhooks] == ["modelyard-registry-bridge"]


def _tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def _environ(process: psutil.Process) -> str:
    try:
        return "\n".join(f"{k}={v}" for k, v in process.environ().items())
    except psutil.NoSuchProcess:
        return ""


def test_each_component_holds_only_the_secrets_it_needs(sqlite_stack: Stack):
    secrets = stack_secrets(sqlite_stack.settings)
    servers_only = {"credentials/mlflow-admin", "credentials/mlflow-viewer", "credentials/mlflow-flask-secret",
                    "credentials/mlflow-webhook-key", "database_url", "database password"}
    # Secrets each may not hold: supervisord (so every serving replica) none; each server only its own.
    forbidden = {
        "supervisord": set(secrets),
        PREFECT_SERVER: set(secrets) - {"credentials/prefect-auth", "prefect-auth password"},
        MLFLOW_SERVER: set(secrets) - {"credentials/mlflow-flask-secret", "credentials/mlflow-webhook-key"},
        PREFECT_WORKER: servers_only,
        REGISTRY_BRIDGE: servers_only,
        WATCHDOG: servers_only,
    }
    found = {}
    for name in forbidden:
        pid = sqlite_stack.processes.pid() if name == "supervisord" else sqlite_stack.processes.alive(name).pid
        processes = [psutil.Process(pid)] if name == "supervisord" else _tree(pid)
        environ = "\n".join(_environ(process) for process in processes)
        found[name] = {where for where, value in secrets.items() if value in environ}
    assert {name: found[name] & forbidden[name] for name in forbidden} == dict.fromkeys(forbidden, set())
    # The check sees a secret where one is.
    assert "credentials/prefect-auth" in found[PREFECT_SERVER]
    assert {"credentials/prefect-auth", "credentials/mlflow-service"} <= found[PREFECT_WORKER]
    assert "credentials/mlflow-flask-secret" in found[MLFLOW_SERVER]


def test_no_secret_on_a_command_line_in_a_pid_file_or_in_a_log(sqlite_stack: Stack):
    settings = sqlite_stack.settings
    secrets = stack_secrets(sqlite_stack.settings)
    assert {"credentials/prefect-auth", "credentials/mlflow-admin", "credentials/mlflow-service",
            "credentials/mlflow-viewer"} <= set(secrets)
    command_lines = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(settings.state_dir) in command_lines  # this stack's processes are there
    assert [where for where, value in secrets.items() if value in command_lines] == []

    pid_files = list(settings.state_dir.rglob("*.pid"))
    assert settings.run_dir / "supervisor" / "supervisord.pid" in pid_files
    for path in pid_files:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        text = path.read_text()
        assert [where for where, value in secrets.items() if value in text] == [], path

    for path in settings.logs_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert [where for where, value in secrets.items() if value in text] == [], path


def test_credentials_are_readable_by_their_owner_only(sqlite_stack: Stack):
    settings = sqlite_stack.settings
    assert stat.S_IMODE(settings.credentials_dir.stat().st_mode) == 0o700
    files = [path for path in settings.credentials_dir.iterdir() if path.is_file()]
    assert {"prefect-auth", "mlflow-admin", "mlflow-service", "mlflow-viewer", "mlflow-auth.ini"} <= {p.name for p in files}
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {path.name: 0o600 for path in files}
    programs = sqlite_stack.processes.programs_dir
    assert stat.S_IMODE(programs.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in programs.glob("*.conf"))
