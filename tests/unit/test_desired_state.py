"""Desired state without a stack: what counts as proof that a version serves, what a restore or
the reconciler repairs, a blue/green deploy that trusts no stale record, a success that is never
recorded without proof, and `stack status`'s verdict on a serving model. Real processes:
tests/integration/test_desired_state.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.desired_state import (
    ABSENT, Restore, VersionProof, VersionState, answer_problem, desired_split, plan_repair, proof_problem,
)
from deployments.targets.base import Endpoint, Replica, TargetError
from modelyard.catalog import Action
from modelyard.cli.stack import serving_health
from modelyard.settings import Settings

ANSWER = {"model": "fraud", "version": "3", "run_id": "r", "artifact_sha256": "ab" * 32, "serving_format": "onnx"}


def _proof(ready: int = 2, answer: dict | None = None, desired: int = 2) -> VersionProof:
    return VersionProof("fraud", "3", "http://127.0.0.1:9000", 100, ready, desired,
                        ANSWER if answer is None else answer, 0.0)


# --- what counts as proof --------------------------------------------------------------------

def test_a_ready_replica_and_the_versions_own_answer_through_the_stable_endpoint_prove_it_serves():
    proof = _proof()
    assert proof.problem is None and proof_problem([proof]) is None
    assert proof.as_dict()["proven"] is True and proof.as_dict()["answer"]["artifact_sha256"] == "ab" * 32
    assert "2/2 replica(s) ready" in proof.describe()
    assert _proof(ready=1).problem is None  # one replica down: the watchdog restarts it, the version serves


def test_an_active_record_without_a_ready_replica_proves_nothing():
    assert "no replica of v3 answers its readiness check (0/2)" == _proof(ready=0).problem
    assert _proof(ready=0).as_dict()["proven"] is False


@pytest.mark.parametrize(("answer", "expected"), [
    (None, "did not answer /version"),
    ({**ANSWER, "version": "2"}, "answers fraud v2, not fraud v3"),
    ({**ANSWER, "model": "churn"}, "answers churn v3, not fraud v3"),
    ({**ANSWER, "artifact_sha256": ""}, "without its artifact sha256"),
])
def test_the_stable_endpoint_must_answer_with_the_version_and_its_digest(answer, expected):
    assert expected in answer_problem("fraud", "3", answer)


def test_nothing_to_prove_is_no_proof():
    assert proof_problem([]) == "nothing to prove"
    assert proof_problem([_proof(), _proof(ready=0)]) == "no replica of v3 answers its readiness check (0/2)"


# --- the desired state ---------------------------------------------------------------------

def test_desired_split_is_the_routers_weights_when_they_hold_the_active_version():
    assert desired_split("3", {"2": 75, "3": 25}) == {"2": 75, "3": 25}  # a canary step a restart interrupted
    assert desired_split("3", {"3": 100, "2": 0}) == {"3": 100}
    assert desired_split("3", {"4": 100}) == {"3": 100}  # switched but never recorded as active: the active one
    assert desired_split("3", {}) == {"3": 100}  # no route yet
    assert desired_split(None, {"3": 100}) == {}


def test_replicas_are_sorted_by_what_is_happening_to_them():
    state = VersionState.of(3, {"r0"}, {"r0": "RUNNING", "r1": "BACKOFF", "r2": "FATAL", "r3": ABSENT})
    assert (state.ready, state.coming, state.stopped, state.absent) == (("r0",), ("r1",), ("r2",), ("r3",))


# --- what a repair does --------------------------------------------------------------------

def test_after_stack_down_the_active_version_is_started_and_routed():
    plan = plan_repair({"3": 100}, {}, set(), {"3": 100}, router_running=False)
    assert plan.start == ("3",) and plan.reroute and not plan.retire


def test_after_every_process_was_killed_replicas_no_supervisor_knows_are_started_afresh():
    absent = VersionState.of(2, set(), {"r0": ABSENT, "r1": ABSENT})
    plan = plan_repair({"3": 100}, {"3": absent}, {"3"}, {"3": 100}, router_running=True)
    assert plan.start == ("3",) and plan.reroute


def test_a_split_comes_back_whole():
    absent = VersionState.of(2, set(), {"r0": ABSENT})
    plan = plan_repair({"2": 75, "3": 25}, {"2": absent, "3": absent}, {"2", "3"}, {"2": 75, "3": 25}, False)
    assert plan.start == ("2", "3") and plan.reroute


def test_replicas_their_supervisor_is_restarting_are_waited_for_never_raced():
    restarting = VersionState.of(2, set(), {"r0": "BACKOFF", "r1": "STARTING"})
    plan = plan_repair({"3": 100}, {"3": restarting}, {"3"}, {"3": 100}, router_running=True)
    assert plan.start == () and plan.wait == ("3",) and not plan.reroute and plan.restart == ()


def test_a_replica_its_supervisor_gave_up_on_is_started_while_the_others_serve():
    partial = VersionState.of(2, {"r0"}, {"r0": "RUNNING", "r1": "FATAL"})
    plan = plan_repair({"3": 100}, {"3": partial}, {"3"}, {"3": 100}, router_running=True)
    assert plan.restart == ("r1",) and plan.start == () and plan.wait == () and not plan.reroute


def test_a_version_neither_active_nor_routed_is_removed_as_a_leftover():
    ready = VersionState.of(2, {"r0", "r1"}, {"r0": "RUNNING", "r1": "RUNNING"})
    plan = plan_repair({"3": 100}, {"3": ready}, {"3", "4"}, {"3": 100}, router_running=True)
    assert plan.retire == ("4",) and plan.start == () and not plan.reroute


def test_a_model_serving_as_desired_needs_nothing():
    ready = VersionState.of(2, {"r0", "r1"}, {"r0": "RUNNING", "r1": "RUNNING"})
    assert plan_repair({"3": 100}, {"3": ready}, {"3"}, {"3": 100}, router_running=True).empty


def test_a_route_that_differs_from_the_split_or_a_router_that_is_down_is_applied_again():
    ready = VersionState.of(1, {"r0"}, {"r0": "RUNNING"})
    assert plan_repair({"3": 100}, {"3": ready}, {"3"}, {"2": 100}, router_running=True).reroute
    assert plan_repair({"3": 100}, {"3": ready}, {"3"}, {"3": 100}, router_running=False).reroute


def test_what_a_restore_records():
    restore = Restore("fraud", "3", {"3": 100}, "stack up")
    assert restore.action is None  # nothing done: nothing to record
    restore.repaired.append("serve-fraud-v3-r1: started")
    assert restore.action == Action.SERVING_REPAIRED
    restore.restored = True
    assert restore.action == Action.SERVING_RESTORED and restore.subject == "fraud/3"
    restore.problem = "no replica of v3 was ready within 60 s"
    assert restore.action == Action.SERVING_RESTORE_FAILED and restore.details()["reason"] == restore.problem
    assert "FAILED" in restore.describe()
    restore.skipped = "a rollout of the model is in progress"
    assert restore.action is None


# --- `stack status`'s verdict -------------------------------------------------------------

def _row(version: str, alive: int, desired: int | None, weight: int = 100) -> dict:
    return {"version": version, "weight": weight, "replicas_alive": alive, "replicas_desired": desired, "restarts": 0}


def test_status_calls_a_model_healthy_only_with_every_replica_alive_and_the_endpoint_answering():
    assert serving_health({"3": 100}, [_row("3", 2, 2)], "3") == (True, "serving; the stable endpoint answers v3")
    assert serving_health({"3": 100}, [_row("3", 1, 2)], "3") == (False, "v3 has 1/2 replicas")
    assert serving_health({"3": 100}, [_row("3", 2, 2)], None) == (False, "the stable endpoint does not answer")
    healthy, detail = serving_health({"3": 100}, [_row("3", 0, None)], None)
    assert not healthy and detail.startswith("v3 has 0/? replicas")
    assert serving_health({"3": 100}, [_row("3", 2, 2), _row("4", 1, 1, 0)], "3")[1] == "v4 runs outside the route"


# --- deploys trust no stale record ------------------------------------------------------------

class _VersionServer:
    """A stand-in for the stable endpoint: answers ``/version`` with ``answer``."""

    def __init__(self, answer: dict) -> None:
        body = json.dumps(answer).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200 if self.path == "/version" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class _Target:
    """A target whose version runs (``endpoint``) or not, and whose starts fail."""

    name = "local"

    def __init__(self, endpoint: Endpoint | None) -> None:
        self.running, self.started, self.stopped = endpoint, [], []

    def endpoint(self, model: str, version: str) -> Endpoint | None:
        return self.running

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint:
        self.started.append(version)
        raise TargetError("replica exited during start-up")

    def stop(self, model: str, version: str) -> bool:
        self.stopped.append(version)
        return False


class _Router:
    def __init__(self, url: str) -> None:
        self._url = url

    def url(self, model: str) -> str:
        return self._url


@pytest.fixture
def active_v3(tmp_path):
    """fraud v3 recorded as active, with one recorded replica."""
    from modelyard.resources import get_resources

    settings = Settings(state_dir=tmp_path / "state")
    serving = get_resources(settings).serving
    serving.record_active("fraud", "3", "http://127.0.0.1:1", "blue_green")
    serving.record_replicas("fraud", "3", "local", [Replica(0, "http://127.0.0.1:1", 1, None, "serve-fraud-v3-r0").record()])
    return settings


def test_an_active_record_with_nothing_running_is_started_not_reported_as_serving(active_v3):
    from deployments.strategies import RolloutFailed, blue_green

    target = _Target(None)
    with pytest.raises(RolloutFailed) as failure:
        blue_green(active_v3, "fraud", "3", target, _Router("http://127.0.0.1:9"))
    steps = [s["step"] for s in failure.value.timeline]
    assert "already serving" not in steps and steps[0] == "not serving"
    assert "no replica of v3 answers its readiness check (0/1)" in failure.value.timeline[0]["detail"]
    assert target.started == ["3"]


def test_a_stable_endpoint_answering_another_version_is_no_proof(active_v3):
    from deployments.strategies import RolloutFailed, blue_green

    server = _VersionServer({**ANSWER, "version": "2"})
    replica = Replica(0, server.url, 0, None, "serve-fraud-v3-r0")
    target = _Target(Endpoint("fraud", "3", (replica,)))
    with pytest.raises(RolloutFailed):
        blue_green(active_v3, "fraud", "3", target, _Router(server.url))
    assert target.started == ["3"]


def test_a_version_already_serving_comes_back_with_its_proof(active_v3):
    from deployments.strategies import blue_green

    server = _VersionServer(ANSWER)
    replica = Replica(0, server.url, 0, None, "serve-fraud-v3-r0")
    target = _Target(Endpoint("fraud", "3", (replica,)))
    rollout = blue_green(active_v3, "fraud", "3", target, _Router(server.url))
    assert [s["step"] for s in rollout.timeline] == ["already serving"] and target.started == []
    assert rollout.proof["proven"] and rollout.proof["answer"] == ANSWER
    assert (rollout.proof["replicas_ready"], rollout.proof["replicas_desired"]) == (1, 1)
    assert rollout.proof["endpoint"] == rollout.endpoint_url == server.url


def test_a_rollout_without_proof_is_never_recorded_as_deployed():
    from deployments.strategies import Rollout
    from tasks.deploying import UnprovenRollout, record_deployed

    with pytest.raises(UnprovenRollout, match="without the proof"):
        record_deployed.fn(Rollout("fraud", "3", "3"))
    unproven = Rollout("fraud", "3", "3", proof=_proof(ready=0).as_dict())
    with pytest.raises(UnprovenRollout):
        record_deployed.fn(unproven)
