"""Desired state that survives restarts, on a stack of its own (it is stopped and killed here):
a model served by two supervised replicas is listed by `stack status --json`; an active record
with nothing running is started by the deploy, never reported as serving, and every
`deploy.succeeded` carries the `/version` proof; the monitor calls an unreachable version a
service problem; the reconciler starts a replica its supervisor stopped and removes a version a
killed rollout left behind; after `stack down` + `stack up`, and after every process of the
stack was killed, the model serves again at the same version, and the restore is recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from deployments.targets.local import LocalTarget
from deployments.traffic.nginx import NginxRouter
from modelyard.catalog import TAG_ARTIFACT_SHA256, Action, Event
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from tests.support.stacks import make_settings, quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
MODEL = "desired-bc"
RECONCILE_DEPLOYMENT = "reconcile"


def _pause_reconciler(stack: Stack) -> None:
    """The scheduled reconciler would repair what these tests break before they look: they run
    it themselves."""
    from tests.support.stacks import prefect_client

    with prefect_client(stack.settings) as client:
        deployment = next(d for d in client.read_deployments() if d.name == RECONCILE_DEPLOYMENT)
        client.pause_deployment(deployment.id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """A stack of this module's own, with flows run in this process against it (environment,
    Prefect's API URL, MLflow's URIs: all put back afterwards)."""
    import mlflow
    from prefect.settings import temporary_settings

    from modelyard.resources.registry import point_mlflow_at

    stack = Stack(make_settings(tmp_path_factory.mktemp("desired") / "state", serve_anonymous=True))
    env = {**stack.settings.child_env(), **stack.settings.prefect_client_env()}
    env.pop("PREFECT_HOME", None)
    saved = {key: os.environ.get(key) for key in [*env, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]}
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        stack.up()
        _pause_reconciler(stack)
        os.environ.update(env)
        with temporary_settings(stack.settings.prefect_client_settings()):
            point_mlflow_at(stack.settings)
            yield stack
    finally:
        stack.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory) -> dict:
    """desired-bc v1 serving from two supervised replicas, deployed by its champion alias alone."""
    from flows.pipeline import model_pipeline

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = MODEL
    spec["serving"] = {"strategy": "blue_green", "replicas": 2}
    spec = quiet(spec)
    # An unreachable version is not rolled back here: no earlier version exists to go to.
    spec["monitoring"] |= {"fresh_deploy_s": 0, "min_rows": 50}
    path = tmp_path_factory.mktemp("spec") / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec))
    version = model_pipeline(str(path))["version"]
    active = ServingState(stack.settings.state_dir).wait_active(MODEL, version, 240)
    assert active is not None, ledger_from_settings(stack.settings).records()[-3:]
    _wait_ready(stack, version)
    sha = registry_client(stack.settings).get_model_version(MODEL, version).tags[TAG_ARTIFACT_SHA256]
    return {"version": version, "url": active["endpoint"], "sha256": sha, "spec": spec}


def _wait_ready(stack: Stack, version: str, replicas: int = 2) -> None:
    target = LocalTarget(stack.settings)
    wait_until(lambda: (e := target.endpoint(MODEL, version)) is not None and len(e.replicas) == replicas, 90,
               f"{replicas} ready replica(s) of v{version}")


def _answers(url: str) -> str | None:
    try:
        response = httpx.get(f"{url}/version", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["version"] if response.status_code == 200 else None


def _records(stack: Stack, action: Action, version: str) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records(subject=f"{MODEL}/{version}")
            if r["action"] == action]


def _assert_proof(proof: dict, served: dict) -> None:
    """The proof a success or a restore carries: the version's own /version answer through the
    stable endpoint (its artifact digest included) and its replicas ready of those desired."""
    assert proof["proven"] is True and proof["endpoint"] == served["url"]
    answer = proof["answer"]
    assert (answer["model"], answer["version"], answer["artifact_sha256"]) == (MODEL, served["version"], served["sha256"])
    assert (proof["replicas_ready"], proof["replicas_desired"]) == (2, 2)


def test_stack_status_lists_the_model_with_its_replicas_alive_and_desired(stack: Stack, served: dict):
    env = {**stack.settings.child_env(), "PATH": os.environ.get("PATH", "")}
    result = subprocess.run([sys.executable, "-m", "modelyard.cli", "stack", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=stack.settings.project_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    row = rows[MODEL]
    assert row["kind"] == "serving" and row["healthy"] is True and row["url"] == served["url"]
    [version] = row["versions"]
    assert (version["version"], version["weight"]) == (served["version"], 100)
    assert (version["replicas_alive"], version["replicas_desired"]) == (2, 2) and version["restarts"] == 0
    assert rows["watchdog"]["kind"] == "component"
    # Replica 0 killed: the watchdog detects it and restarts it, and status counts the restart.
    target = LocalTarget(stack.settings)
    handle = target.replicas(MODEL, served["version"])[0].handle
    os.kill(target.supervisor.info(handle).pid, signal.SIGKILL)
    wait_until(lambda: [v["restarts"] for v in stack.serving_status()[0].versions] == [1], 30, "the restart counted")
    _wait_ready(stack, served["version"])


def test_an_active_record_with_nothing_running_is_started_by_the_deploy_with_proof(stack: Stack, served: dict):
    from flows.deploy import deploy
    from flows.monitor import monitor

    version = served["version"]
    LocalTarget(stack.settings).stop(MODEL, version)  # what a restart without restore left: a record, no server
    assert ServingState(stack.settings.state_dir).active_version(MODEL) == version
    assert _answers(served["url"]) is None

    # The monitor calls it a service problem, not "insufficient data".
    judged = monitor(MODEL)
    assert judged["status"] == "alert", judged
    [alert] = judged["alerts"]
    assert alert["event"] == Event.SERVICE_DEGRADED and alert["reason"].startswith("service unreachable: no replica")
    assert _records(stack, Action.MONITOR_SERVICE, version)[-1]["details"]["unreachable"]

    started = deploy(MODEL, version)
    steps = [s["step"] for s in started["timeline"]]
    assert steps[0] == "not serving" and "already serving" not in steps and "switched" in steps, steps
    assert _answers(served["url"]) == version
    _assert_proof(started["proof"], served)
    succeeded = _records(stack, Action.DEPLOY_SUCCEEDED, version)
    _assert_proof(succeeded[-1]["details"]["proof"], served)

    # Now it does serve: the next deploy says so, with its proof, and changes nothing.
    again = deploy(MODEL, version)
    assert [s["step"] for s in again["timeline"]] == ["already serving"]
    _assert_proof(again["proof"], served)
    assert len(_records(stack, Action.DEPLOY_SUCCEEDED, version)) == len(succeeded) + 1
    _assert_proof(_records(stack, Action.DEPLOY_SUCCEEDED, version)[-1]["details"]["proof"], served)
    # Every success in the ledger carries a proof: none was recorded without one.
    assert all(r["details"]["proof"]["proven"] for r in _records(stack, Action.DEPLOY_SUCCEEDED, version))


def test_the_reconciler_starts_a_stopped_replica_and_removes_a_version_left_behind(stack: Stack, served: dict):
    from flows.reconcile import reconcile
    from tests.support.broken_models import register_faulty_version

    version = served["version"]
    target = LocalTarget(stack.settings)
    _wait_ready(stack, version)
    # A replica its supervisor stopped (nothing restarts it), and a version a killed rollout
    # started but never routed (no rollout holds the model's lock).
    stopped = target.replicas(MODEL, version)[1].handle
    assert target.supervisor.stop(stopped)
    leftover = register_faulty_version(MODEL, version, "none", served["spec"])
    target.start(MODEL, leftover)
    assert len(target.replicas(MODEL, leftover)) == 2
    wait_until(lambda: target.supervisor.info(stopped).state == "STOPPED", 10, "the replica stopped")

    reconcile(grace_s=600)
    [repaired] = _records(stack, Action.SERVING_REPAIRED, version)
    done = repaired["details"]["repaired"]
    assert any(stopped in line and "started" in line for line in done), done
    assert any(line.startswith(f"v{leftover} removed") for line in done), done
    assert target.replicas(MODEL, leftover) == []
    assert not [name for name in target.supervisor.processes() if name.startswith(f"serve-{MODEL}-v{leftover}-")]
    _wait_ready(stack, version)
    assert _answers(served["url"]) == version
    # Nothing is left to repair: a second run records nothing.
    reconcile(grace_s=600)
    assert len(_records(stack, Action.SERVING_REPAIRED, version)) == 1


def _restored(stack: Stack, served: dict, trigger_count: int) -> dict:
    """After `up`: serving again at the same version through the same stable endpoint, and
    the restore recorded with its proof (the ``trigger_count``-th one)."""
    version = served["version"]
    [outcome] = [r for r in stack.restores if r.model == MODEL]
    assert outcome.problem is None and outcome.action == Action.SERVING_RESTORED, outcome.describe()
    assert _answers(served["url"]) == version
    records = _records(stack, Action.SERVING_RESTORED, version)
    assert len(records) == trigger_count
    details = records[-1]["details"]
    assert details["trigger"] == "stack up" and details["split"] == {version: 100}
    [proof] = details["proof"]
    _assert_proof(proof, served)
    assert [v["replicas_alive"] for v in stack.serving_status()[0].versions] == [2]
    return details


def test_stack_down_then_up_serves_the_model_again_at_the_same_version(stack: Stack, served: dict):
    _wait_ready(stack, served["version"])
    stack.down()
    assert _answers(served["url"]) is None
    began = time.monotonic()
    stack.up()
    up_s = time.monotonic() - began
    _pause_reconciler(stack)
    details = _restored(stack, served, 1)
    print(f"\nstack up after down: {up_s:.1f} s, of which restoring {MODEL} (2 replicas): {details['restore_s']:.1f} s")
    # A second `up` finds it serving: nothing restored, nothing recorded.
    stack.up()
    [outcome] = stack.restores
    assert outcome.action is None and outcome.problem is None and not outcome.repaired
    assert len(_records(stack, Action.SERVING_RESTORED, served["version"])) == 1


def test_killing_every_process_of_the_stack_then_up_serves_the_model_again(stack: Stack, served: dict):
    _wait_ready(stack, served["version"])
    supervisord = psutil.Process(stack.processes.pid())
    victims = [supervisord, *supervisord.children(recursive=True)]
    nginx = psutil.Process(int(NginxRouter(stack.settings).pid_file.read_text()))
    victims += [nginx, *nginx.children(recursive=True)]
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    assert _answers(served["url"]) is None
    began = time.monotonic()
    stack.up()
    up_s = time.monotonic() - began
    _pause_reconciler(stack)
    details = _restored(stack, served, 2)
    print(f"\nstack up after kill -9 of every process: {up_s:.1f} s, of which restoring: {details['restore_s']:.1f} s")
