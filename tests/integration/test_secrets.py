"""Secrets stay with the processes that need them, on the real session stack: a served model's
replica holds its own inference and admin tokens and no other secret of the stack (not in its
environment, not on its command line, not in its log or supervisord's), nginx's workers never run
as root yet reach the replica's socket, and a model container (Docker, when there is one) shows no
stack secret to ``docker inspect`` and runs as a non-root user on a read-only root file system."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from pydantic import SecretStr

from deployments.targets.base import Endpoint
from deployments.targets.local import LocalTarget
from deployments.traffic.nginx import NginxRouter
from modelyard.cli.stack import Stack
from modelyard.processes import stack_supervisor
from modelyard.redaction import is_secret_name
from modelyard.settings import Settings
from tests.support.stacks import quiet

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
MODEL = "secrets-bc"
OWN_TOKENS = ("MODELYARD_API_TOKEN", "MODELYARD_ADMIN_TOKEN")
# Secrets a replica must never see, set on the target's settings on top of what the stack generated.
PLANTED = {"api_token": "inference-t0ken-of-the-replica", "webhook_secret": "planted-webhook-s3cret-value",
           "ledger_key": "planted-ledger-k3y-value",
           "database_url": "postgresql://modelyard:planted-db-pa55word@127.0.0.1:5432/modelyard"}
BASE_IMAGE = os.environ.get("MODELYARD_DOCKER_BASE_IMAGE", "modelyard/base:bookworm")


@pytest.fixture(scope="module")
def settings(stack_env: Stack) -> Settings:
    """The stack's settings with every kind of secret set."""
    planted = {name: SecretStr(value) for name, value in PLANTED.items() if name in Settings.model_fields}
    return stack_env.settings.model_copy(update=planted)


def stack_secrets(settings: Settings) -> set[str]:
    """Every secret value the trusted side of the stack holds, but the replica's own tokens: the
    secret-named variables of the trusted components' environment, the database URL and its
    password, and every generated credential (whole, and each line of a PEM key)."""
    own = {settings.admin_secret(), PLANTED["api_token"]}
    env = {**settings.child_env(), **settings.prefect_client_env()}
    values = {value for name, value in env.items()
              if (is_secret_name(name) or name.endswith("DATABASE_URL")) and value not in own}
    values.add(PLANTED["database_url"].split(":")[2].split("@")[0])
    if settings.credentials_dir.is_dir():
        for path in settings.credentials_dir.iterdir():
            if path.is_file():
                text = path.read_text(errors="replace").strip()
                values |= {text, *(line for line in text.splitlines() if len(line) >= 16 and "-----" not in line)}
    return {value for value in values - own if len(value) >= 8}


def _leaks(text: str, secrets: set[str]) -> list[str]:
    return sorted(f"{secret[:4]}…" for secret in secrets if secret in text)


@pytest.fixture(scope="module")
def registered(stack_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A version registered (and signed) by the real build flow."""
    from flows.build import build

    spec = quiet(yaml.safe_load((ROOT / "specs" / "breast_cancer.yaml").read_text()))
    spec["name"] = MODEL
    path = tmp_path_factory.mktemp("secrets") / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return build(str(path))


@pytest.fixture(scope="module")
def served(settings: Settings, registered: dict) -> Iterator[Endpoint]:
    target = LocalTarget(settings, replicas=1)
    endpoint = target.start(MODEL, registered["version"])
    yield endpoint
    target.stop(MODEL, registered["version"])


def _body(rows: int = 1) -> dict:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    data = (frame.values.tolist() * (rows // len(frame) + 1))[:rows]
    return {"dataframe_split": {"columns": list(frame.columns), "data": data}}


def test_a_replica_holds_its_own_tokens_and_no_other_secret(settings: Settings, served: Endpoint):
    secrets = stack_secrets(settings)
    assert any("planted" in secret for secret in secrets)  # the check below has something to find
    supervisor = stack_supervisor(settings)
    process = psutil.Process(supervisor.info(served.replicas[0].handle).pid)
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace")
    env = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
    command = " ".join(process.cmdline())

    assert env["MODELYARD_API_TOKEN"] == PLANTED["api_token"]
    assert env["MODELYARD_ADMIN_TOKEN"] == settings.admin_secret()
    stack_named = {name for name in env if name.startswith(("MODELYARD_", "MLFLOW_", "PREFECT_", "AWS_", "PG"))}
    assert {name for name in stack_named if is_secret_name(name) or "DATABASE" in name} == set(OWN_TOKENS)
    assert not _leaks(environ, secrets), "a stack secret is in the replica's environment"
    assert not _leaks(command, secrets) and not _leaks(command, set(env[name] for name in OWN_TOKENS))
    assert "models:/" not in command  # it serves a directory the target verified: no registry access
    # The replica answers, so it really runs with this environment.
    assert httpx.post(f"{served.url}/invocations", json=_body(),
                      headers={"Authorization": f"Bearer {PLANTED['api_token']}"}, timeout=10).status_code == 200


def test_the_replica_and_supervisord_logs_hold_no_secret(settings: Settings, served: Endpoint):
    secrets = stack_secrets(settings) | {PLANTED["api_token"], settings.admin_secret()}
    logs = [stack_supervisor(settings).log_path(served.replicas[0].handle), settings.logs_dir / "supervisord.log",
            *settings.logs_dir.glob("*reaper*.log"), settings.logs_dir / "nginx-error.log"]
    assert logs[0].exists() and logs[1].exists()
    for log in logs:
        if log.exists():
            assert not _leaks(log.read_text(errors="replace"), secrets), f"a secret is in {log}"


def test_nginx_workers_never_run_as_root_and_still_reach_the_replica(settings: Settings, served: Endpoint):
    router = NginxRouter(settings)
    url = router.route(MODEL, {served: 100})
    headers = {"Authorization": f"Bearer {PLANTED['api_token']}"}
    # 300 rows: a body larger than nginx's buffer, so a worker writes it to its temporary folder.
    big = httpx.post(f"{url}/invocations", json=_body(300), headers=headers, timeout=30)
    assert big.status_code == 200, big.text
    assert len(big.json()["predictions"]) == 300
    master = psutil.Process(int(router.pid_file.read_text().strip()))
    workers = _live_workers(master)
    assert workers
    assert "root" not in {user for user, _ in workers.values()}, workers
    assert all(uid != 0 for _, uid in workers.values())
    if master.uids().effective != 0:  # not started as root: the workers are that same user
        assert {uid for _, uid in workers.values()} == {master.uids().effective}


def _live_workers(master: psutil.Process) -> dict[int, tuple[str, int]]:
    """(user, effective uid) of each worker of the nginx master still alive: the route above
    reloaded nginx, and the previous generation's workers exit while they are being looked at."""
    found = {}
    for worker in master.children():
        try:
            found[worker.pid] = (worker.username(), worker.uids().effective)
        except psutil.NoSuchProcess:
            continue
    return found


# -- Docker ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker_target(settings: Settings, registered: dict):
    from deployments.targets.base import TargetError
    from deployments.targets.docker import DockerTarget

    target = DockerTarget(settings.model_copy(update={"docker_base_image": BASE_IMAGE}), replicas=1)
    try:
        client = target.client
    except TargetError as error:
        pytest.skip(f"no Docker Engine: {error}")
    if not client.images.list(name=BASE_IMAGE):
        pytest.skip(f"no base image {BASE_IMAGE} (infra/docker/build-base-image.sh)")
    yield target
    target.stop(MODEL, registered["version"])
    for image in client.images.list(filters={"label": f"org.modelyard.model={MODEL}"}):
        for tag in image.tags:
            client.images.remove(tag, noprune=True)


@pytest.mark.docker
def test_a_model_container_shows_no_secret_and_runs_confined(settings: Settings, docker_target, registered: dict):
    endpoint = docker_target.start(MODEL, registered["version"])
    container = docker_target.client.containers.get(endpoint.replicas[0].handle)
    inspected = container.attrs
    assert not _leaks(json.dumps(inspected), stack_secrets(settings)), "a stack secret is in `docker inspect`"
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert env["MODELYARD_API_TOKEN"] == PLANTED["api_token"]
    assert {name for name in env if is_secret_name(name) or "DATABASE" in name} == set(OWN_TOKENS)
    user = inspected["Config"]["User"]
    assert user and user.split(":")[0] not in ("0", "root")
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in inspected["HostConfig"]["SecurityOpt"]
    assert set(inspected["HostConfig"]["Tmpfs"]) == {"/tmp"}
    writable = sorted(m["Destination"] for m in inspected["Mounts"] if m["RW"])
    assert writable == sorted([str(Path(endpoint.replicas[0].socket).parent),
                               str(settings.prediction_log_dir / f"model={MODEL}" / f"version={registered['version']}")])
    # The server itself runs as that user, and it serves.
    assert all(row[0] not in ("root", "0") for row in container.top(ps_args="-o user,pid")["Processes"])
    answer = httpx.post(f"{endpoint.url}/invocations", json=_body(),
                        headers={"Authorization": f"Bearer {PLANTED['api_token']}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    # Its root file system is read-only.
    denied = container.exec_run(["/opt/venv/bin/python", "-c", "open('/opt/modelyard/app/x', 'w')"], user="0")
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output
