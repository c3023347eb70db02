"""Rollout strategies: how traffic moves from the serving version to a new one.

A strategy uses a target (where versions run) and a router (where traffic goes) through their
interfaces only. Every step lands in the rollout's timeline; any failed gate rolls back to the
previous version — after checking that it is still ready — and says why. A rollout that ends
well carries the proof that its version serves (deployments/desired_state.py).

- ``blue_green``: start the new version beside the old, smoke-test it, move all traffic at once.
- ``canary``: move traffic in weighted steps; after each bake, judge service gates (error
  rate, p99, p99 against the serving version) and model gates (agreement and prediction PSI on
  the same inputs) — see deployments/gates.py.
- ``shadow``: mirror every request to the new version while the old one answers; compare the
  two by the router's trace id; switch only if the gates pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from deployments import gates as g
from deployments.desired_state import prove
from deployments.server.prediction_log import inputs_frame, read_prediction_log
from deployments.targets.base import Endpoint, Target, TargetError
from deployments.targets.kubernetes import KubernetesTarget
from deployments.targets.local import LocalTarget
from deployments.traffic.nginx import NginxRouter
from modelyard.resources import get_resources
from modelyard.resources.inference import InferenceError
from modelyard.settings import Settings
from modelyard.spec import GateSpec, RolloutSpec

LOG_FLUSH_WAIT_S = 1.5  # the prediction log writes a batch at least every second
MAX_COMPARE_ROWS = 2000


class RolloutFailed(RuntimeError):
    def __init__(self, reason: str, timeline: list[dict]) -> None:
        super().__init__(reason)
        self.reason, self.timeline = reason, timeline


@dataclass
class Rollout:
    model: str
    version: str
    previous: str | None
    strategy: str = "blue_green"
    endpoint_url: str = ""
    timeline: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    rollback_s: float | None = None
    proof: dict | None = None  # what proved the version serves once the rollout was done (desired_state.py)

    def step(self, name: str, ok: bool, detail: str = "", **data) -> None:
        """One timeline entry: seconds since the rollout began (``t_s``) and the wall-clock time
        it happened (``at``, what recovery times are measured from)."""
        self.timeline.append({"t_s": round(time.monotonic() - self.started, 3), "at": time.time(), "step": name,
                              "ok": ok, "detail": detail, **data})


# --- shared steps -----------------------------------------------------------------------

def _start_and_smoke(settings: Settings, target: Target, rollout: Rollout) -> Endpoint:
    try:
        new = target.start(rollout.model, rollout.version)
        rollout.step("started", True, f"v{rollout.version} ready: {len(new.replicas)} replica(s) at {', '.join(new.urls)}")
        for url in new.urls:
            get_resources(settings).inference.smoke(url, new.model, new.version)
        rollout.step("smoke", True, f"input example answered 200 on every replica ({len(new.replicas)})")
        return new
    except (TargetError, InferenceError) as error:
        rollout.step("gate failed", False, str(error))
        target.stop(rollout.model, rollout.version)
        rollout.step("rolled back", True, f"v{rollout.previous} keeps serving" if rollout.previous else "nothing was serving")
        raise RolloutFailed(str(error), rollout.timeline) from error


def _switch_all(settings: Settings, target: Target, router: NginxRouter, rollout: Rollout,
                new: Endpoint, old: Endpoint | None) -> None:
    """100% to ``new``; then let in-flight requests on ``old`` finish and stop it."""
    resources = get_resources(settings)
    url = router.route(rollout.model, {new: 100})
    rollout.endpoint_url = url
    proof = prove(settings, rollout.model, {rollout.version: 100}, target, router)[0] \
        if resources.inference.wait_serving(url, rollout.version) else None
    if proof is None or proof.problem is not None:
        reason = f"after the switch, {proof.problem if proof else 'the stable endpoint did not answer with the new version'}"
        rollout.step("switch probe", False, reason)
        _roll_back(settings, target, router, rollout, old)
        raise RolloutFailed(reason, rollout.timeline)
    rollout.step("switched", True, f"100% of traffic on v{rollout.version} via {url}", weights={rollout.version: 100})
    resources.serving.record_active(rollout.model, rollout.version, url, rollout.strategy)
    rollout.proof = proof.as_dict()
    if old is not None and old.version != rollout.version:
        time.sleep(1.0)  # requests already sent to the old version finish there
        target.stop(rollout.model, old.version)
        rollout.step("retired", True, f"v{old.version} stopped")


def _roll_back(settings: Settings, target: Target, router: NginxRouter, rollout: Rollout, old: Endpoint | None) -> None:
    """All traffic back on ``old`` (if it is still ready), then stop the new version."""
    began = time.monotonic()
    if old is None or target.endpoint(rollout.model, old.version) is None:
        rollout.step("rollback impossible", False, "no ready previous version to return to")
    else:
        url = router.route(rollout.model, {old: 100})
        ok = get_resources(settings).inference.wait_serving(url, old.version)
        rollout.rollback_s = round(time.monotonic() - began, 3)
        rollout.step("rolled back", ok, f"100% of traffic back on v{old.version} in {rollout.rollback_s:.3f} s",
                     weights={old.version: 100})
    target.stop(rollout.model, rollout.version)


def _baseline(settings: Settings, target: Target, model: str) -> Endpoint | None:
    previous = get_resources(settings).serving.active_version(model)
    return target.endpoint(model, previous) if previous else None


def _version_before(settings: Settings, model: str, current: str) -> str:
    """The version that served before ``current`` (the latest other one in the history)."""
    earlier = [h["version"] for h in get_resources(settings).serving.history(model) if h["version"] != current]
    if not earlier:
        raise RolloutFailed(f"{model} v{current} is the only version that ever served: nothing to roll back to", [])
    return earlier[-1]


# --- strategies -------------------------------------------------------------------------

def blue_green(settings: Settings, model: str, version: str,
               target: Target | None = None, router: NginxRouter | None = None) -> Rollout:
    """Start the new version beside the old, gate it, switch all traffic at once, stop the old.
    The version recorded as active is "already serving" only with the proof (its replicas ready,
    the stable endpoint answering with it); otherwise it is started like any other."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    rollout = Rollout(model, version, get_resources(settings).serving.active_version(model), "blue_green")
    old = None  # the version recorded as active, if it is not serving, is started, never retired
    if rollout.previous == version:
        [proof] = prove(settings, model, {version: 100}, target, router)
        if proof.problem is None:
            rollout.step("already serving", True, proof.describe(), proof=proof.as_dict())
            rollout.endpoint_url, rollout.proof = proof.endpoint, proof.as_dict()
            return rollout
        rollout.step("not serving", False, f"v{version} is recorded as active, but {proof.problem}: starting it",
                     proof=proof.as_dict())
    else:
        old = _baseline(settings, target, model)
    new = _start_and_smoke(settings, target, rollout)
    _switch_all(settings, target, router, rollout, new, old)
    return rollout


def _start_beside_serving(settings: Settings, model: str, version: str, strategy: str, target: Target,
                          router: NginxRouter) -> tuple[Rollout, Endpoint | None, Endpoint | None]:
    """Canary and shadow compare the new version with the serving one: the rollout, the new
    version started and smoke-tested, and the serving one. With none (or this one) serving there
    is nothing to compare, so the version goes straight in as with blue/green: the rollout is
    then complete and comes back without endpoints."""
    old = _baseline(settings, target, model)
    if old is None or old.version == version:
        rollout = blue_green(settings, model, version, target, router)
        rollout.step(f"{strategy} skipped", True, "no version was serving to compare against" if old is None
                     else "already serving")
        return rollout, None, None
    rollout = Rollout(model, version, old.version, strategy)
    return rollout, _start_and_smoke(settings, target, rollout), old


def _compare_on_replay(settings: Settings, model: str, new: Endpoint, old: Endpoint, since: datetime,
                       categorical: bool, gates: GateSpec) -> g.ModelWindow | None:
    """The canary's logged inputs of this window, answered again by the serving version (None
    when the canary logged nothing: its model gates then fail)."""
    logged = read_prediction_log(settings.prediction_log_dir, model, new.version, since=since)
    if logged.empty:
        return None
    logged = logged.tail(max(MAX_COMPARE_ROWS, gates.min_requests))
    reference = get_resources(settings).inference.replay(inputs_frame(logged), old.url)
    return g.compare_predictions(reference, logged["prediction"].to_numpy(), categorical, gates.regression_tolerance)


def _record_gates(rollout: Rollout, step: str, results: list[g.GateResult], **data) -> bool:
    """Put the gate results on the timeline; True when every gate passed."""
    ok = all(r.ok for r in results)
    rollout.step(step, ok, "; ".join(r.describe() for r in results), gates=g.results_dicts(results), **data)
    return ok


def _bake(target: Target, rollout: Rollout, seconds: float) -> None:
    """Wait out a bake, failing early if the new version dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if target.endpoint(rollout.model, rollout.version) is None:
            raise TargetError(f"v{rollout.version} stopped running during the bake")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def canary(settings: Settings, model: str, version: str, plan: RolloutSpec, categorical: bool,
           target: Target | None = None, router: NginxRouter | None = None) -> Rollout:
    """Weighted steps with a bake each; every gate must pass before the next step."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    rollout, new, old = _start_beside_serving(settings, model, version, "canary", target, router)
    if new is None or old is None:
        return rollout
    inference = get_resources(settings).inference
    for percent in plan.steps[:-1]:
        try:
            before_new, before_old = inference.scrape_all(new.urls), inference.scrape_all(old.urls)
            since = datetime.now(UTC)
            rollout.endpoint_url = router.route(model, {old: 100 - percent, new: percent})
            rollout.step(f"weight {percent}%", True, f"v{version} {percent}%, v{old.version} {100 - percent}%",
                         weights={old.version: 100 - percent, version: percent})
            _bake(target, rollout, plan.bake_s)
            # Not enough traffic yet: bake up to twice as long again before judging.
            extra_deadline = time.monotonic() + 2 * plan.bake_s
            while (inference.scrape_all(new.urls).requests - before_new.requests < plan.gates.min_requests
                   and time.monotonic() < extra_deadline):
                _bake(target, rollout, 1.0)
            new_window = g.service_window(before_new, inference.scrape_all(new.urls))
            old_window = g.service_window(before_old, inference.scrape_all(old.urls))
            time.sleep(LOG_FLUSH_WAIT_S)
            model_window = _compare_on_replay(settings, model, new, old, since, categorical, plan.gates)
        except (TargetError, httpx.HTTPError) as error:
            reason = f"at {percent}%: {error}"
            rollout.step(f"gates @ {percent}%", False, reason)
            _roll_back(settings, target, router, rollout, old)
            raise RolloutFailed(reason, rollout.timeline) from error
        results = g.judge(plan.gates, new_window, old_window, model_window)
        if not _record_gates(rollout, f"gates @ {percent}%", results):
            reason = f"canary gate failed at {percent}%: {g.failures(results)}"
            _roll_back(settings, target, router, rollout, old)
            raise RolloutFailed(reason, rollout.timeline)
    _switch_all(settings, target, router, rollout, new, old)
    return rollout


def _compare_shadow(settings: Settings, model: str, new: Endpoint, old: Endpoint, since: datetime,
                    categorical: bool, tolerance: float) -> g.ModelWindow | None:
    """Both versions' logs of the window, paired by the router's trace id and row (None when
    nothing pairs: the model gates then fail)."""
    served = read_prediction_log(settings.prediction_log_dir, model, old.version, since=since)
    shadowed = read_prediction_log(settings.prediction_log_dir, model, new.version, since=since)
    reference, candidate = g.shadow_pairs(served, shadowed)
    if len(candidate) == 0:
        return None
    return g.compare_predictions(reference, candidate, categorical, tolerance)


def shadow(settings: Settings, model: str, version: str, plan: RolloutSpec, categorical: bool,
           target: Target | None = None, router: NginxRouter | None = None) -> Rollout:
    """Mirror live traffic to the new version (its answers go nowhere), compare, then switch."""
    inference = get_resources(settings).inference
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    rollout, new, old = _start_beside_serving(settings, model, version, "shadow", target, router)
    if new is None or old is None:
        return rollout
    rollout.endpoint_url = router.url(model)
    try:
        before = inference.scrape_all(new.urls)
        since = datetime.now(UTC)
        router.shadow(model, new)
        rollout.step("shadow on", True, f"every request to v{old.version} is mirrored to v{version}",
                     weights={old.version: 100}, mirrored=version)
        _bake(target, rollout, plan.shadow_s)
        window = g.service_window(before, inference.scrape_all(new.urls))
        router.shadow(model, None)
        rollout.step("shadow off", True, f"v{version} answered {window.requests} mirrored requests")
        time.sleep(LOG_FLUSH_WAIT_S)
        model_window = _compare_shadow(settings, model, new, old, since, categorical, plan.gates.regression_tolerance)
    except (TargetError, httpx.HTTPError) as error:
        router.shadow(model, None)
        rollout.step("shadow gates", False, str(error))
        target.stop(model, version)
        raise RolloutFailed(f"shadow: {error}", rollout.timeline) from error
    old_window = None  # the serving version's latency is not comparable: it answers clients, the shadow does not wait
    results = g.judge(plan.gates, window, old_window, model_window)
    if not _record_gates(rollout, "shadow gates", results, compared_rows=model_window.rows if model_window else 0):
        target.stop(model, version)
        rollout.step("rolled back", True, f"v{old.version} kept serving; v{version} stopped")
        raise RolloutFailed(f"shadow gate failed: {g.failures(results)}", rollout.timeline)
    _switch_all(settings, target, router, rollout, new, old)
    return rollout


def roll_back_to_previous(settings: Settings, model: str, target: Target | None = None,
                          router: NginxRouter | None = None, to_version: str | None = None) -> Rollout:
    """Manual rollback: the version that served before the current one (or ``to_version``)
    takes all traffic again; the current one is stopped."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    current = get_resources(settings).serving.active_version(model)
    if current is None:
        raise RolloutFailed(f"{model} is not serving: nothing to roll back", [])
    rollout = Rollout(model, to_version or _version_before(settings, model, current), current, "rollback")
    began = time.monotonic()
    old = target.endpoint(model, current)
    new = _start_and_smoke(settings, target, rollout)
    _switch_all(settings, target, router, rollout, new, old)
    rollout.rollback_s = round(time.monotonic() - began, 3)
    return rollout


# --- kubernetes: traffic moves by the model's Service selector, so there is no nginx here ---

def _routed_version(target: KubernetesTarget, model: str) -> str | None:
    try:
        return target.routed_version(model)
    except TargetError as error:
        raise RolloutFailed(f"kubernetes: {error}", []) from error


def _select(settings: Settings, target: KubernetesTarget, rollout: Rollout, endpoint: Endpoint) -> None:
    """Point the Service at the rollout's version and record it as serving once it selects it."""
    target.route(rollout.model, rollout.version)
    if target.routed_version(rollout.model) != rollout.version:
        raise TargetError(f"the Service of {rollout.model} does not select v{rollout.version} after the switch")
    rollout.step("switched", True, f"Service selects v{rollout.version}", weights={rollout.version: 100})
    rollout.endpoint_url = endpoint.url
    get_resources(settings).serving.record_active(rollout.model, rollout.version, endpoint.url, rollout.strategy)
    rollout.proof = _kubernetes_proof(rollout.version, endpoint)


def _kubernetes_proof(version: str, endpoint: Endpoint) -> dict:
    """On a cluster the proof is the API's: the stable Service selects the version, whose
    Deployment has an available pod (its in-cluster URL is out of reach from here)."""
    return {"endpoint": endpoint.url, "version": version, "service_selects": version, "available": True,
            "at": time.time(), "proven": True}


def _undo_switch(target: KubernetesTarget, rollout: Rollout, error: TargetError) -> RolloutFailed:
    """After a failed step: the Service selects the version it selected before (if it moved) and
    the rollout's version is deleted; the failure to raise."""
    rollout.step("gate failed", False, str(error))
    if rollout.previous is not None and target.routed_version(rollout.model) != rollout.previous:
        target.route(rollout.model, rollout.previous)
        rollout.step("rolled back", True, f"Service selects v{rollout.previous} again", weights={rollout.previous: 100})
    target.stop(rollout.model, rollout.version)
    return RolloutFailed(str(error), rollout.timeline)


def _retire(target: KubernetesTarget, rollout: Rollout) -> None:
    if rollout.previous is not None and rollout.previous != rollout.version:
        target.stop(rollout.model, rollout.previous)
        rollout.step("retired", True, f"v{rollout.previous} deleted")


def kubernetes_blue_green(settings: Settings, model: str, version: str, target: KubernetesTarget) -> Rollout:
    """Blue/green on a cluster: the version's Deployment rolls out (readiness-gated by the
    target), then the model's stable Service selector moves to it, then the old one is deleted."""
    rollout = Rollout(model, version, _routed_version(target, model), "blue_green")
    if rollout.previous == version:
        try:
            endpoint = target.endpoint(model, version)
        except TargetError as error:
            raise RolloutFailed(f"kubernetes: {error}", rollout.timeline) from error
        if endpoint is not None:
            rollout.endpoint_url, rollout.proof = endpoint.url, _kubernetes_proof(version, endpoint)
            rollout.step("already serving", True, f"the Service already selects v{version}, which has an available pod",
                         proof=rollout.proof)
            return rollout
        rollout.step("not serving", False, f"the Service selects v{version}, which has no available pod: starting it")
    try:
        new = target.start(model, version)
        rollout.step("started", True, f"Deployment of v{version} ready ({new.url})")
        _select(settings, target, rollout, new)
    except TargetError as error:
        raise _undo_switch(target, rollout, error) from error
    _retire(target, rollout)
    return rollout


def _restore(target: KubernetesTarget, rollout: Rollout) -> Endpoint:
    """The rollback's version ready again: started when it was retired (its Deployment deleted);
    when its Deployment is still there but not ready (a revision applied since it served), put
    back on the revision before, like ``kubectl rollout undo``."""
    model, version = rollout.model, rollout.version
    state = target.version_state(model, version)
    if state is None:
        endpoint = target.start(model, version)
        rollout.step("started", True, f"Deployment of v{version} ready again ({endpoint.url})")
        return endpoint
    if not state.ready:
        revision = target.undo(model, version)
        rollout.step("undone", True, f"Deployment of v{version} was not ready ({state.message}): back on revision "
                                     f"{revision}")
    endpoint = target.endpoint(model, version)
    if endpoint is None:
        raise TargetError(f"{model} v{version} has no available pod to take traffic")
    rollout.step("started", True, f"Deployment of v{version} ready ({endpoint.url})")
    return endpoint


def kubernetes_roll_back(settings: Settings, model: str, target: KubernetesTarget,
                         to_version: str | None = None) -> Rollout:
    """Manual rollback on a cluster: the version that served before the one the Service selects
    (or ``to_version``) is made ready again, the Service selects it, and the other is deleted."""
    current = _routed_version(target, model)
    if current is None:
        raise RolloutFailed(f"{model} is not serving on the cluster: nothing to roll back", [])
    rollout = Rollout(model, to_version or _version_before(settings, model, current), current, "rollback")
    if rollout.version == current:
        raise RolloutFailed(f"the Service already selects {model} v{current}: nothing to roll back to", [])
    try:
        endpoint = _restore(target, rollout)
        _select(settings, target, rollout, endpoint)
    except TargetError as error:
        raise _undo_switch(target, rollout, error) from error
    _retire(target, rollout)
    rollout.rollback_s = round(time.monotonic() - rollout.started, 3)
    return rollout

