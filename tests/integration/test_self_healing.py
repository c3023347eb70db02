"""Serving that survives faults, on real processes: a real supervisord restarts what dies; a
version served by two supervised replicas behind real nginx, probed at 25 requests/s through
its stable endpoint (a request id on every probe) while one replica is killed, one is stopped
for 10 s, and every one is killed; the watchdog's detections and restores in the ledger and as
Prefect events."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from deployments.targets.local import LocalTarget
from modelyard.catalog import Action, Event, model_resource_id
from modelyard.cli.stack import MLFLOW_SERVER, REGISTRY_BRIDGE, Stack
from modelyard.ledger import ledger_from_settings
from modelyard.processes import Program, Supervisor, port_in_use
from modelyard.resources.serving_state import ServingState
from tests.support.prober import Prober
from tests.support.stacks import free_port, quiet
from tests.support.waits import prefect_events, wait_until

SPECS = Path(__file__).resolve().parents[2] / "specs"
MODEL = "heal-bc"
DETECT_BOUND_S = 2.0
ALL_DEAD_BOUND_S = 5.0


# -- the supervisor alone ---------------------------------------------------------------------

def test_supervisord_restarts_a_killed_program_and_adds_and_removes_programs_at_run_time(tmp_path):
    supervisor = Supervisor(tmp_path / "sv", tmp_path / "logs")
    assert supervisor.start(dict(os.environ))
    try:
        assert not supervisor.start(dict(os.environ))  # already running: left alone
        sleeper = Program("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
                          tmp_path, startsecs=1)
        first = supervisor.ensure(sleeper)
        wait_until(lambda: supervisor.info("sleeper").state == "RUNNING", 10, "sleeper running")
        assert supervisor.ensure(sleeper).pid == first.pid  # unchanged: not restarted
        assert supervisor.kill("sleeper")
        restarted = wait_until(lambda: (i := supervisor.info("sleeper")).pid not in (None, first.pid) and i, 10,
                               "sleeper restarted by supervisord")
        assert restarted.alive and "up" in supervisor.tail("sleeper")
        assert supervisor.remove("sleeper") and supervisor.info("sleeper") is None
        assert not (supervisor.programs_dir / "sleeper.conf").exists()
    finally:
        pid = supervisor.pid()
        supervisor.shutdown()
    assert not supervisor.running()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_the_orphans_of_a_killed_forking_program_are_reaped_so_its_restart_can_listen(tmp_path):
    """A parent that starts the process that really listens (as ``mlflow server`` does): kill -9
    of the parent must not leave the child holding the port."""
    supervisor = Supervisor(tmp_path / "sv", tmp_path / "logs")
    supervisor.start(dict(os.environ))
    port = free_port()
    child = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)"
    parent = ("import subprocess, sys; "
              f"sys.exit(subprocess.Popen([sys.executable, '-c', {child!r}]).wait())")
    try:
        supervisor.ensure(Program("forker", [sys.executable, "-c", parent], tmp_path, startsecs=1))
        first = _pid_of(supervisor, "forker")
        wait_until(lambda: port_in_use("127.0.0.1", port), 10, "the child listening")
        orphan = psutil.Process(first).children()[0]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, 10,
                   "the orphan reaped")
        restarted = wait_until(lambda: (p := _pid_of(supervisor, "forker")) != first and p, 20, "forker restarted")
        wait_until(lambda: port_in_use("127.0.0.1", port), 10, "the restarted child listening")
        assert psutil.Process(restarted).children()[0].pid != orphan.pid
    finally:
        supervisor.shutdown()


def _pid_of(supervisor: Supervisor, name: str) -> int:
    return wait_until(lambda: (info := supervisor.info(name)) and info.state == "RUNNING" and info.pid, 20,
                      f"{name} running")


@pytest.mark.stack
@pytest.mark.parametrize("component", [REGISTRY_BRIDGE, MLFLOW_SERVER])
def test_a_stack_component_killed_with_9_is_restarted_by_the_supervisor(sqlite_stack: Stack, component: str):
    healthy = {REGISTRY_BRIDGE: sqlite_stack.bridge_healthy, MLFLOW_SERVER: sqlite_stack.mlflow_healthy}[component]
    before = sqlite_stack.processes.info(component).pid
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: (info := sqlite_stack.processes.info(component)).pid not in (None, before)
               and info.state == "RUNNING" and healthy(), 60, f"{component} restarted and healthy")
    assert {row.name: row.healthy for row in sqlite_stack.status()}[component]


# -- replicas behind the stable endpoint --------------------------------------------------------

def _body() -> dict:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.head(1).values.tolist()}}


@pytest.fixture(scope="module")
def serving(stack_env: Stack, tmp_path_factory) -> dict:
    """heal-bc v1 serving from two supervised replicas, deployed by its champion alias alone."""
    from flows.pipeline import model_pipeline

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = MODEL
    spec["serving"] = {"strategy": "blue_green", "replicas": 2}
    path = tmp_path_factory.mktemp("heal") / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(quiet(spec)))
    version = model_pipeline(str(path))["version"]
    active = ServingState(stack_env.settings.state_dir).wait_active(MODEL, version, 240)
    assert active is not None, ledger_from_settings(stack_env.settings).records()[-3:]
    return {"version": version, "url": active["endpoint"], "settings": stack_env.settings}


def _replicas(serving: dict):
    target = LocalTarget(serving["settings"])
    replicas = target.replicas(MODEL, serving["version"])
    assert len(replicas) == 2
    return target, replicas


def _pid(target: LocalTarget, handle: str) -> int:
    return wait_until(lambda: (info := target.supervisor.info(handle)) and info.state == "RUNNING" and info.pid,
                      30, f"{handle} running")


def _records(settings, action: Action, version: str, after: float) -> list[dict]:
    return [r for r in ledger_from_settings(settings).records(subject=f"{MODEL}/{version}")
            if r["action"] == action and r["details"]["detected_at"] >= after]


def _wait_all_ready(target: LocalTarget, version: str) -> None:
    wait_until(lambda: (e := target.endpoint(MODEL, version)) is not None and len(e.replicas) == 2, 60,
               "both replicas ready")


@pytest.mark.stack
def test_kill_9_of_one_replica_fails_no_probe(serving: dict):
    target, replicas = _replicas(serving)
    _wait_all_ready(target, serving["version"])
    victim = replicas[0]
    pid = _pid(target, victim.handle)
    with Prober(serving["url"], _body()) as prober:
        time.sleep(2)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        restored = wait_until(lambda: _records(serving["settings"], Action.SERVING_REPLICA_RESTORED, serving["version"],
                                               killed_at), 60, "the killed replica restored")
        time.sleep(2)
    assert prober.rate_seen() >= 20 and len(prober.probes) >= 100
    assert prober.failed == [], prober.failed[:5]
    down = _records(serving["settings"], Action.SERVING_REPLICA_DOWN, serving["version"], killed_at)
    assert [r["details"]["replica"] for r in down] == [victim.index]
    assert down[0]["details"]["detected_at"] - killed_at <= DETECT_BOUND_S
    assert restored[0]["details"]["restore_s"] > 0 and restored[0]["actor"] == "watchdog"


@pytest.mark.stack
def test_sigstop_of_one_replica_for_10_s_fails_no_probe(serving: dict):
    target, replicas = _replicas(serving)
    _wait_all_ready(target, serving["version"])
    victim = replicas[1]
    pid = _pid(target, victim.handle)
    with Prober(serving["url"], _body()) as prober:
        time.sleep(2)
        stopped_at = time.time()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(10)
        try:
            os.kill(pid, signal.SIGCONT)  # the watchdog killed it long ago: nothing left to continue
        except ProcessLookupError:
            pass
        wait_until(lambda: _records(serving["settings"], Action.SERVING_REPLICA_RESTORED, serving["version"],
                                    stopped_at), 60, "the stopped replica restored")
        time.sleep(2)
    assert prober.rate_seen() >= 20
    assert prober.failed == [], prober.failed[:5]
    down = _records(serving["settings"], Action.SERVING_REPLICA_DOWN, serving["version"], stopped_at)
    assert [r["details"]["reason"] for r in down] == ["process stopped"]
    assert down[0]["details"]["detected_at"] - stopped_at <= DETECT_BOUND_S
    # A stopped replica is killed, not waited on: it was gone well before the 10 s were up.
    assert target.supervisor.info(victim.handle).pid != pid
    assert max(p.ended - p.sent for p in prober.probes) < 10


@pytest.mark.stack
def test_killing_every_replica_serves_again_within_5_s_with_detection_and_restore_recorded(serving: dict):
    settings, version = serving["settings"], serving["version"]
    target, replicas = _replicas(serving)
    _wait_all_ready(target, version)
    pids = [_pid(target, r.handle) for r in replicas]
    with Prober(serving["url"], _body()) as prober:
        time.sleep(2)
        killed_at = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        restored = wait_until(lambda: len(r := _records(settings, Action.SERVING_REPLICA_RESTORED, version,
                                                        killed_at)) == 2 and r, 60, "both replicas restored")
        time.sleep(2)
    after = [p for p in prober.probes if p.sent >= killed_at - 1]
    failed = [p for p in after if p.status != 200]
    serving_again = min(p.ended for p in after if p.status == 200 and p.sent > max((f.sent for f in failed),
                                                                                   default=killed_at))
    assert serving_again - killed_at <= ALL_DEAD_BOUND_S, (serving_again - killed_at, len(failed))
    assert all(p.status == 200 for p in prober.probes if p.sent > killed_at + ALL_DEAD_BOUND_S)
    down = _records(settings, Action.SERVING_REPLICA_DOWN, version, killed_at)
    assert sorted(r["details"]["replica"] for r in down) == [0, 1]
    assert all(r["details"]["detected_at"] - killed_at <= DETECT_BOUND_S for r in down)
    assert all(r["details"]["detect_s"] is not None for r in down)
    assert all(r["details"]["restore_s"] > 0 and r["details"]["outage_s"] >= r["details"]["restore_s"] for r in restored)
    # The same, as Prefect events on the model's resource, with the version and the replica.
    for event_name, count in ((Event.SERVING_REPLICA_DOWN, 2), (Event.SERVING_REPLICA_RESTORED, 2)):
        events = wait_until(lambda name=event_name: [
            e for e in prefect_events(settings, event={"name": [str(name)]},
                                      resource={"id": [model_resource_id(MODEL)]})
            if e["payload"]["detected_at"] >= killed_at], 60, f"{event_name} events")
        assert len(events) == count, events
        assert {e["resource"]["modelyard.replica"] for e in events} == {"0", "1"}
        assert all(e["resource"]["modelyard.version"] == version for e in events)
        key = "detect_s" if event_name == Event.SERVING_REPLICA_DOWN else "restore_s"
        assert all(e["payload"][key] is not None for e in events)
