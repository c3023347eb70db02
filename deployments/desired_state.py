"""What each model should serve, the proof that it does, and bringing it back when it does not.

A model's desired state is its active version (the serving state's record) and its traffic
split (the router's weights, which outlive `stack down`). Serving is proven, never assumed:
each version has a replica that answers its readiness check, and the model's stable endpoint
answers ``/version`` with that version and its artifact sha256. A deploy, `stack up` and the
reconciler use this one proof. ``restore`` brings a model back to its desired state — starts a
version nothing runs, starts replicas their supervisor gave up on, re-applies the route,
removes a version an unfinished rollout left behind — and proves it, under the model's lock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments.targets.base import Endpoint, Replica, Target, TargetError, desired_replicas
from deployments.traffic.nginx import NginxRouter
from modelyard.catalog import Action
from modelyard.resources import get_resources
from modelyard.resources.serving_state import ModelBusy, VersionReplicas
from modelyard.settings import Settings

PROOF_TIMEOUT_S = 3.0  # to see every version of a split answer through the stable endpoint
COMING_WAIT_S = 60.0  # for a replica its supervisor is starting again, before the proof
# supervisord's states of a replica (modelyard.processes), and ABSENT: not configured there.
COMING_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF"})
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})
ABSENT = "ABSENT"


# --- the proof ------------------------------------------------------------------------------

def answer_problem(model: str, version: str, answer: Mapping[str, Any] | None) -> str | None:
    """Why a ``/version`` answer read through the stable endpoint does not prove that ``model``
    v``version`` serves (None: it does)."""
    if answer is None:
        return f"the stable endpoint did not answer /version with v{version}"
    if answer.get("model") != model or str(answer.get("version")) != version:
        return (f"the stable endpoint answers {answer.get('model')} v{answer.get('version')}, "
                f"not {model} v{version}")
    if not answer.get("artifact_sha256"):
        return f"v{version} answers /version without its artifact sha256"
    return None


@dataclass(frozen=True)
class VersionProof:
    """One version of a model, as found: its replicas ready of those it should have, and its
    ``/version`` answer through the model's stable endpoint."""

    model: str
    version: str
    endpoint: str
    weight: int
    replicas_ready: int
    replicas_desired: int
    answer: dict[str, Any] | None
    at: float

    @property
    def problem(self) -> str | None:
        if self.replicas_ready < 1:
            return f"no replica of v{self.version} answers its readiness check (0/{self.replicas_desired})"
        return answer_problem(self.model, self.version, self.answer)

    def describe(self) -> str:
        if self.problem is not None:
            return self.problem
        assert self.answer is not None
        return (f"v{self.version} answers /version through {self.endpoint} (sha256 "
                f"{str(self.answer['artifact_sha256'])[:12]}…); {self.replicas_ready}/{self.replicas_desired} "
                "replica(s) ready")

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "version": self.version, "weight": self.weight,
                "answer": self.answer, "replicas_ready": self.replicas_ready,
                "replicas_desired": self.replicas_desired, "at": self.at, "proven": self.problem is None}


def proof_problem(proofs: list[VersionProof]) -> str | None:
    """Why ``proofs`` do not prove the split (None: every version serves)."""
    if not proofs:
        return "nothing to prove"
    problems = [p.problem for p in proofs if p.problem is not None]
    return "; ".join(problems) if problems else None


def replica_count(settings: Settings, model: str, version: str, record: VersionReplicas | None) -> int:
    """How many replicas the version should have: as many as its target started, else what its
    spec asks for."""
    if record is not None and record["replicas"]:
        return len(record["replicas"])
    return desired_replicas(settings, model, version)


def read_answers(settings: Settings, url: str, versions: set[str], timeout_s: float) -> dict[str, dict]:
    """``/version`` answers of ``url`` by version, read until each of ``versions`` answered once
    (a split spreads requests over its versions) or ``timeout_s`` passed."""
    inference = get_resources(settings).inference
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        answer = inference.version_info(url)
        if answer is not None and str(answer.get("version")) in versions:
            seen.setdefault(str(answer["version"]), answer)
        if set(seen) == versions or time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def prove(settings: Settings, model: str, split: Mapping[str, int], target: Target,
          router: NginxRouter | None = None, timeout_s: float = PROOF_TIMEOUT_S) -> list[VersionProof]:
    """Each version of ``split`` (version → percent) as it serves now: its ready replicas (the
    target asks their readiness check) and its answer through the stable endpoint."""
    router = router or NginxRouter(settings)
    url = router.url(model)
    records = get_resources(settings).serving.replicas(model)
    ready = {}
    for version in split:
        endpoint = target.endpoint(model, version)
        ready[version] = len(endpoint.replicas) if endpoint is not None else 0
    answers = read_answers(settings, url, {v for v, n in ready.items() if n}, timeout_s) if any(ready.values()) else {}
    now = time.time()
    return [VersionProof(model, version, url, weight, ready[version],
                         replica_count(settings, model, version, records.get(version)), answers.get(version), now)
            for version, weight in split.items()]


# --- the desired state and what differs from it -------------------------------------------------

def desired_split(active: str | None, weights: Mapping[str, int]) -> dict[str, int]:
    """The traffic split a model should have: the router's weights as last set when they add up
    to 100 and include the active version (a canary step), else all on the active version;
    nothing without one."""
    if active is None:
        return {}
    positive = {str(v): int(w) for v, w in weights.items() if int(w) > 0}
    if active in positive and sum(positive.values()) == 100:
        return positive
    return {active: 100}


@dataclass(frozen=True)
class VersionState:
    """A version's replicas by what is happening to them (handles)."""

    desired: int
    ready: tuple[str, ...] = ()
    coming: tuple[str, ...] = ()  # alive in their supervisor (starting, restarting), not ready yet
    stopped: tuple[str, ...] = ()  # exited, stopped or given up on: started again by a repair
    absent: tuple[str, ...] = ()  # not configured in their supervisor (a fresh one after a restart)

    @classmethod
    def of(cls, desired: int, ready: set[str], states: Mapping[str, str]) -> VersionState:
        """From the handles that answer their readiness check and each recorded replica's
        supervisor state (``ABSENT``: unknown to it)."""
        rest = {h: s for h, s in states.items() if h not in ready}
        return cls(desired, tuple(sorted(ready)), tuple(sorted(h for h, s in rest.items() if s in COMING_STATES)),
                   tuple(sorted(h for h, s in rest.items() if s in STOPPED_STATES)),
                   tuple(sorted(h for h, s in rest.items() if s not in COMING_STATES | STOPPED_STATES)))


@dataclass(frozen=True)
class RepairPlan:
    start: tuple[str, ...] = ()  # versions nothing runs and nothing brings back: started afresh
    restart: tuple[str, ...] = ()  # replicas (handles) their supervisor gave up on: started again
    wait: tuple[str, ...] = ()  # versions with no ready replica yet, some coming back
    retire: tuple[str, ...] = ()  # versions running that are neither active nor in the route
    reroute: bool = False  # the route differs from the split, or its router does not run

    @property
    def empty(self) -> bool:
        return not (self.start or self.restart or self.wait or self.retire or self.reroute)


def plan_repair(split: Mapping[str, int], versions: Mapping[str, VersionState], running: set[str],
                routed: Mapping[str, int], router_running: bool) -> RepairPlan:
    """What brings a model from what runs to its ``split``. ``versions``: the split's versions
    as found; ``running``: every version the targets recorded as started; ``routed``: the
    router's weights. A version is started afresh only when none of its replicas is ready,
    coming back or startable in place (after a restart its supervisor knows none of them); a
    replica still being restarted is waited for, never raced."""
    start, restart, wait = [], [], []
    for version in split:
        state = versions.get(version)
        if state is None or not (state.ready or state.coming or state.stopped):
            start.append(version)
            continue
        restart.extend(state.stopped)
        if not state.ready:
            wait.append(version)
    retire = sorted(set(running) - set(split))
    reroute = bool(start) or not router_running or dict(routed) != dict(split)
    return RepairPlan(tuple(start), tuple(restart), tuple(wait), tuple(retire), reroute)


# --- restoring ----------------------------------------------------------------------------------

@dataclass
class Restore:
    """One model's restore: what it should serve, what was done, and the proof."""

    model: str
    active: str
    split: dict[str, int]
    trigger: str  # "stack up", "reconcile"
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    proofs: list[VersionProof] = field(default_factory=list)
    restored: bool = False  # a version was started or the route applied again: it was not serving as desired
    problem: str | None = None
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def subject(self) -> str:
        return f"{self.model}/{self.active}"

    @property
    def action(self) -> Action | None:
        """How the ledger records it (None: nothing to record)."""
        if self.skipped is not None:
            return None
        if self.problem is not None:
            return Action.SERVING_RESTORE_FAILED
        if self.restored:
            return Action.SERVING_RESTORED
        return Action.SERVING_REPAIRED if self.repaired else None

    def details(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "split": self.split, "repaired": self.repaired, "notes": self.notes,
                "reason": self.problem, "restore_s": self.seconds, "proof": [p.as_dict() for p in self.proofs]}

    def describe(self) -> str:
        split = ", ".join(f"v{v} {w}%" for v, w in self.split.items())
        if self.skipped is not None:
            return f"{self.model}: not restored ({self.skipped})"
        if self.problem is not None:
            return f"{self.model}: restore of {split} FAILED after {self.seconds:.1f} s: {self.problem}"
        proven = "; ".join(p.describe() for p in self.proofs)
        if self.restored or self.repaired:
            return f"{self.model}: {split} serving again in {self.seconds:.1f} s ({'; '.join(self.repaired)}): {proven}"
        return f"{self.model}: {split} serving, nothing to restore: {proven}"

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "action": str(self.action) if self.action else None, "split": self.split,
                "repaired": self.repaired, "problem": self.problem, "skipped": self.skipped}


def _target_kind(settings: Settings, model: str, version: str, records: Mapping[str, VersionReplicas]) -> str:
    record = records.get(version)
    if record is not None:
        return record["target"]
    from modelyard.resources.registry import version_spec

    spec = version_spec(get_resources(settings).registry, model, version)
    return spec.serving.target if spec is not None else "local"


def _supervisor_states(target: Target, replicas: list[Replica]) -> dict[str, str]:
    """Each recorded replica's state in its supervisor; for a target that restarts its own
    (Docker's restart policy), every replica counts as coming back."""
    from deployments.targets.local import LocalTarget

    if not isinstance(target, LocalTarget):
        return {r.handle: "RUNNING" for r in replicas}
    known = target.supervisor.processes()
    return {r.handle: known[r.handle].state if r.handle in known else ABSENT for r in replicas}


def _wait_ready(target: Target, model: str, version: str, timeout_s: float) -> Endpoint | None:
    deadline = time.monotonic() + timeout_s
    while (endpoint := target.endpoint(model, version)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return endpoint


def _restore_locked(settings: Settings, router: NginxRouter, outcome: Restore) -> None:
    from deployments.targets.factory import make_target

    resources = get_resources(settings)
    model, split = outcome.model, outcome.split
    records = resources.serving.replicas(model)
    target = make_target(settings, _target_kind(settings, model, outcome.active, records))
    endpoints: dict[str, Endpoint | None] = {}
    versions = {}
    for version in split:
        endpoints[version] = target.endpoint(model, version)
        record = records.get(version)
        replicas = [Replica.of(r) for r in record["replicas"]] if record else []
        ready = {r.handle for r in endpoints[version].replicas} if endpoints[version] else set()
        versions[version] = VersionState.of(replica_count(settings, model, version, record), ready,
                                            _supervisor_states(target, replicas) if replicas else {})
        if versions[version].absent and (ready or versions[version].coming):
            outcome.notes.append(f"v{version}: {', '.join(versions[version].absent)} unknown to the supervisor, "
                                 "left as is while the others serve")
    plan = plan_repair(split, versions, set(records), router.weights(model), router.running())
    for version in plan.start:
        if version in records:  # replicas recorded by a supervisor that is gone: start afresh
            target.stop(model, version)
        started = target.start(model, version)
        for url in started.urls:
            resources.inference.smoke(url, model, version)
        endpoints[version] = started
        outcome.repaired.append(f"v{version} started ({len(started.replicas)} replica(s))")
        outcome.restored = True
    for handle in plan.restart:  # only a local target's replicas are ever found stopped
        target.supervisor.start_process(handle)  # type: ignore[attr-defined]
        outcome.repaired.append(f"{handle} started (its supervisor had stopped or given up on it)")
    for version in plan.wait:
        endpoints[version] = _wait_ready(target, model, version, COMING_WAIT_S)
        if endpoints[version] is None:
            raise TargetError(f"no replica of v{version} was ready within {COMING_WAIT_S:.0f} s")
    missing = [v for v in split if endpoints.get(v) is None]
    if missing:
        raise TargetError(f"no ready replica of {', '.join('v' + v for v in missing)}")

    def route() -> None:
        router.route(model, {endpoints[v]: weight for v, weight in split.items()})  # type: ignore[index]
        outcome.repaired.append(f"route applied: {', '.join(f'v{v} {w}%' for v, w in split.items())}")
        outcome.restored = True

    if plan.reroute:
        route()
    outcome.proofs = prove(settings, model, split, target, router)
    if proof_problem(outcome.proofs) is not None and not plan.reroute:  # the route as recorded does not answer
        route()
        outcome.proofs = prove(settings, model, split, target, router)
    if router.state(model).get("shadow"):  # a shadow rollout that never finished
        router.shadow(model, None)
        outcome.repaired.append("mirror of an unfinished shadow rollout removed")
    for version in plan.retire:
        make_target(settings, records[version]["target"]).stop(model, version)
        outcome.repaired.append(f"v{version} removed: neither active nor routed (left by an unfinished rollout)")
    outcome.problem = proof_problem(outcome.proofs)


def restore(settings: Settings, model: str, trigger: str, lock_timeout_s: float = 30.0) -> Restore | None:
    """Bring ``model`` back to its desired state and prove it (None: it has no active version,
    or it serves on Kubernetes, whose Service and Deployments keep it). Under the model's lock:
    a rollout in progress is left alone (``skipped``), since it proves what serves itself."""
    resources = get_resources(settings)
    active = resources.serving.active_version(model)
    if active is None:
        return None
    router = NginxRouter(settings)
    outcome = Restore(model, active, desired_split(active, router.weights(model)), trigger)
    began = time.monotonic()
    try:
        if _target_kind(settings, model, active, resources.serving.replicas(model)) == "kubernetes":
            return None
        with resources.serving.lock(model, timeout_s=lock_timeout_s):
            # Read again under the lock: a rollout or rollback that held it while this waited has
            # changed the desired state, and restoring what was read before would undo it.
            active = resources.serving.active_version(model)
            if active is None:
                return None
            outcome = Restore(model, active, desired_split(active, router.weights(model)), trigger)
            _restore_locked(settings, router, outcome)
    except ModelBusy:
        outcome.skipped = "a rollout of the model is in progress"
    except Exception as error:  # noqa: BLE001 - target, router, registry: the reason is recorded
        outcome.problem = f"{type(error).__name__}: {error}"
    outcome.seconds = round(time.monotonic() - began, 3)
    return outcome
