"""Rollout strategies: how traffic moves from the serving version to a new one.

A strategy uses a target (where versions run) and a router (where traffic goes) through their
interfaces only. Every step lands in the rollout's timeline; any failed gate rolls back to the
previous version — after checking that it is still ready — and says why.

- ``blue_green``: start the new version beside the old, smoke-test it, move all traffic at once.
- ``canary``: move traffic in weighted steps; after each bake, judge service gates (error
  rate, p99, p99 against the serving version) and model gates (agreement and prediction PSI on
  the same inputs) — see deployments/gates.py.
- ``shadow``: mirror every request to the new version while the old one answers; compare the
  two by request id; switch only if the gates pass.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from deployments import gates as g
from deployments.server.prediction_log import inputs_frame, read_prediction_log
from deployments.targets.base import Endpoint, Target, TargetError
from deployments.targets.local import LocalTarget
from deployments.traffic.nginx import NginxRouter
from modelyard.settings import Settings
from modelyard.spec import RolloutSpec

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

    def step(self, name: str, ok: bool, detail: str = "", **data) -> None:
        self.timeline.append({"t_s": round(time.monotonic() - self.started, 3), "step": name,
                              "ok": ok, "detail": detail, **data})


def auth_headers(settings: Settings) -> dict[str, str]:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return {"Authorization": f"Bearer {token}"} if token else {}


WARM_UP_REQUESTS = 20


def smoke_request(settings: Settings, endpoint: Endpoint, warm_up: int = WARM_UP_REQUESTS) -> None:
    """POST the model's own serving input example; anything but 200 fails the gate. Then warm
    the version up with ``warm_up`` more, marked as replays (kept out of its latency metrics and
    prediction log), so that its first live requests do not pay for cold paths and the latency
    gate compares warm with warm."""
    model_dir = settings.state_dir / "models" / f"{endpoint.model}-{endpoint.version}"
    example = next(iter(sorted(model_dir.rglob("serving_input_example.json"))), None)
    if example is None:
        raise TargetError("the version has no serving input example to smoke-test with")
    body, headers = example.read_bytes(), {"Content-Type": "application/json", **auth_headers(settings)}
    response = httpx.post(f"{endpoint.url}/invocations", content=body, timeout=10, headers=headers)
    if response.status_code != 200:
        raise TargetError(f"smoke request answered {response.status_code}: {response.text[:200]}")
    with httpx.Client(timeout=10, headers={**headers, "X-Modelyard-Replay": "1"}) as client:
        for _ in range(warm_up):
            client.post(f"{endpoint.url}/invocations", content=body)


def wait_serving(settings: Settings, url: str, version: str, timeout_s: float = 10) -> bool:
    """Until the stable endpoint answers with ``version`` (several times in a row)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/version", headers=auth_headers(settings), timeout=2)
            streak = streak + 1 if answer.status_code == 200 and answer.json().get("version") == version else 0
            if streak >= 3:
                return True
        except httpx.HTTPError:
            streak = 0
        time.sleep(0.05)
    return False


# --- what is serving, what was, what failed ---------------------------------------------

def _serving_dir(settings: Settings):
    path = settings.state_dir / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def active_record(settings: Settings, model: str) -> dict | None:
    """What serves the model's stable endpoint now: ``{"version", "endpoint", "since"}``."""
    try:
        record = json.loads((settings.state_dir / "serving" / f"{model}.active.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if "version" in record else None


def active_version(settings: Settings, model: str) -> str | None:
    record = active_record(settings, model)
    return record["version"] if record else None


def wait_active(settings: Settings, model: str, version: str, timeout_s: float, poll_s: float = 1.0) -> dict | None:
    """The active record once ``version`` serves the model (a deploy started elsewhere, e.g. by a
    registry event, has finished its switch), or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = active_record(settings, model)
        if record is not None and record["version"] == version:
            return record
        time.sleep(poll_s)
    return None


def history(settings: Settings, model: str) -> list[dict]:
    """Every version that became active, oldest first."""
    try:
        return json.loads((_serving_dir(settings) / f"{model}.history.json").read_text())
    except (FileNotFoundError, ValueError):
        return []


def record_active(settings: Settings, model: str, version: str, url: str, strategy: str) -> None:
    directory = _serving_dir(settings)
    now = time.time()
    staged = directory / f".{model}.active.json.tmp"
    staged.write_text(json.dumps({"version": version, "endpoint": url, "since": now}))
    os.replace(staged, directory / f"{model}.active.json")  # readers never see half a file
    entries = history(settings, model) + [{"version": version, "since": now, "strategy": strategy}]
    (directory / f"{model}.history.json").write_text(json.dumps(entries[-50:]))


def refused_versions(settings: Settings, model: str) -> dict[str, str]:
    """Versions whose rollout failed (version → reason): the reconciler does not retry them."""
    try:
        return json.loads((_serving_dir(settings) / f"{model}.refused.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def record_refused(settings: Settings, model: str, version: str, reason: str) -> None:
    refused = refused_versions(settings, model) | {version: reason[:500]}
    (_serving_dir(settings) / f"{model}.refused.json").write_text(json.dumps(refused))


def _lock_path(settings: Settings, model: str) -> Path:
    return _serving_dir(settings) / f"{model}.lock"


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def model_lock(settings: Settings, model: str, timeout_s: float = 900) -> Iterator[None]:
    """One rollout per model at a time, across processes (an event and the reconciler may race)."""
    with open(_lock_path(settings, model), "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise RolloutFailed(f"another rollout of {model} held the lock for {timeout_s:.0f} s", [])
            time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rollout_in_progress(settings: Settings, model: str) -> bool:
    """Whether some process holds the model's rollout lock now (probed without waiting)."""
    path = _lock_path(settings, model)
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        if not _try_lock(handle):
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# --- shared steps -----------------------------------------------------------------------

def _start_and_smoke(settings: Settings, target: Target, rollout: Rollout) -> Endpoint:
    try:
        new = target.start(rollout.model, rollout.version)
        rollout.step("started", True, f"v{rollout.version} ready at {new.url}")
        smoke_request(settings, new)
        rollout.step("smoke", True, "input example answered 200")
        return new
    except TargetError as error:
        rollout.step("gate failed", False, str(error))
        target.stop(rollout.model, rollout.version)
        rollout.step("rolled back", True, f"v{rollout.previous} keeps serving" if rollout.previous else "nothing was serving")
        raise RolloutFailed(str(error), rollout.timeline) from error


def _switch_all(settings: Settings, target: Target, router: NginxRouter, rollout: Rollout,
                new: Endpoint, old: Endpoint | None) -> None:
    """100% to ``new``; then let in-flight requests on ``old`` finish and stop it."""
    url = router.route(rollout.model, {new: 100})
    rollout.endpoint_url = url
    if not wait_serving(settings, url, rollout.version):
        reason = "the stable endpoint did not answer with the new version after the switch"
        rollout.step("switch probe", False, reason)
        _roll_back(settings, target, router, rollout, old)
        raise RolloutFailed(reason, rollout.timeline)
    rollout.step("switched", True, f"100% of traffic on v{rollout.version} via {url}", weights={rollout.version: 100})
    record_active(settings, rollout.model, rollout.version, url, rollout.strategy)
    if old is not None:
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
        ok = wait_serving(settings, url, old.version)
        rollout.rollback_s = round(time.monotonic() - began, 3)
        rollout.step("rolled back", ok, f"100% of traffic back on v{old.version} in {rollout.rollback_s:.3f} s",
                     weights={old.version: 100})
    target.stop(rollout.model, rollout.version)


def _baseline(settings: Settings, target: Target, model: str) -> Endpoint | None:
    previous = active_version(settings, model)
    return target.endpoint(model, previous) if previous else None


# --- strategies -------------------------------------------------------------------------

def blue_green(settings: Settings, model: str, version: str,
               target: Target | None = None, router: NginxRouter | None = None) -> Rollout:
    """Start the new version beside the old, gate it, switch all traffic at once, stop the old."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    rollout = Rollout(model, version, active_version(settings, model), "blue_green")
    if rollout.previous == version:
        rollout.step("already serving", True, f"v{version} is the active version")
        rollout.endpoint_url = router.url(model)
        return rollout
    old = _baseline(settings, target, model)
    new = _start_and_smoke(settings, target, rollout)
    _switch_all(settings, target, router, rollout, new, old)
    return rollout


def _compare_on_replay(settings: Settings, model: str, new: Endpoint, old: Endpoint, since: datetime,
                       categorical: bool, tolerance: float) -> g.ModelWindow | None:
    """The canary's logged inputs of this window, answered again by the serving version."""
    logged = read_prediction_log(settings.prediction_log_dir, model, new.version, since=since)
    if logged.empty:
        return None
    logged = logged.tail(MAX_COMPARE_ROWS)
    reference = g.replay_frame(inputs_frame(logged), old.url, auth_headers(settings))
    return g.compare_predictions(reference, logged["prediction"].to_numpy(), categorical, tolerance)


def _switch_without_comparison(settings: Settings, model: str, version: str, target: Target, router: NginxRouter,
                               old: Endpoint | None, strategy: str) -> Rollout:
    """Canary and shadow compare against the serving version; with none (or this one) serving,
    there is nothing to compare, so the version goes straight in as with blue/green."""
    rollout = blue_green(settings, model, version, target, router)
    rollout.step(f"{strategy} skipped", True, "no version was serving to compare against" if old is None
                 else "already serving")
    return rollout


def _record_gates(rollout: Rollout, step: str, results: list[g.GateResult], **data) -> bool:
    """Put the gate results on the timeline; True when every gate passed."""
    ok = all(r.ok for r in results)
    rollout.step(step, ok, "; ".join(r.describe() for r in results), gates=g.results_dicts(results), **data)
    return ok


def _bake(settings: Settings, target: Target, rollout: Rollout, new: Endpoint, seconds: float) -> None:
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
    old = _baseline(settings, target, model)
    if old is None or old.version == version:
        return _switch_without_comparison(settings, model, version, target, router, old, "canary")
    rollout = Rollout(model, version, old.version, "canary")
    new = _start_and_smoke(settings, target, rollout)
    headers = auth_headers(settings)
    for percent in plan.steps[:-1]:
        try:
            before_new, before_old = g.scrape(new.url, headers), g.scrape(old.url, headers)
            since = datetime.now(UTC)
            rollout.endpoint_url = router.route(model, {old: 100 - percent, new: percent})
            rollout.step(f"weight {percent}%", True, f"v{version} {percent}%, v{old.version} {100 - percent}%",
                         weights={old.version: 100 - percent, version: percent})
            _bake(settings, target, rollout, new, plan.bake_s)
            # Not enough traffic yet: bake up to twice as long again before judging.
            extra_deadline = time.monotonic() + 2 * plan.bake_s
            while (g.scrape(new.url, headers).requests - before_new.requests < plan.gates.min_requests
                   and time.monotonic() < extra_deadline):
                _bake(settings, target, rollout, new, 1.0)
            new_window = g.service_window(before_new, g.scrape(new.url, headers))
            old_window = g.service_window(before_old, g.scrape(old.url, headers))
            time.sleep(LOG_FLUSH_WAIT_S)
            model_window = _compare_on_replay(settings, model, new, old, since, categorical,
                                              plan.gates.regression_tolerance)
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
    """Both versions' logs of the window, joined by request id and row."""
    keys = ["request_id", "row"]
    served = read_prediction_log(settings.prediction_log_dir, model, old.version, since=since)
    shadowed = read_prediction_log(settings.prediction_log_dir, model, new.version, since=since)
    if served.empty or shadowed.empty:
        return None
    joined = served[keys + ["prediction"]].merge(shadowed[keys + ["prediction"]], on=keys, suffixes=("_old", "_new"))
    if joined.empty:
        return None
    return g.compare_predictions(joined["prediction_old"].to_numpy(), joined["prediction_new"].to_numpy(),
                                 categorical, tolerance)


def shadow(settings: Settings, model: str, version: str, plan: RolloutSpec, categorical: bool,
           target: Target | None = None, router: NginxRouter | None = None) -> Rollout:
    """Mirror live traffic to the new version (its answers go nowhere), compare, then switch."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    old = _baseline(settings, target, model)
    if old is None or old.version == version:
        return _switch_without_comparison(settings, model, version, target, router, old, "shadow")
    rollout = Rollout(model, version, old.version, "shadow", endpoint_url=router.url(model))
    new = _start_and_smoke(settings, target, rollout)
    headers = auth_headers(settings)
    try:
        before = g.scrape(new.url, headers)
        since = datetime.now(UTC)
        router.shadow(model, new)
        rollout.step("shadow on", True, f"every request to v{old.version} is mirrored to v{version}",
                     weights={old.version: 100}, mirrored=version)
        _bake(settings, target, rollout, new, plan.shadow_s)
        window = g.service_window(before, g.scrape(new.url, headers))
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
    if model_window is None:
        results.append(g.GateResult("compared_rows", 0, plan.gates.min_requests, False))
    if not _record_gates(rollout, "shadow gates", results, compared_rows=model_window.rows if model_window else 0):
        target.stop(model, version)
        rollout.step("rolled back", True, f"v{old.version} kept serving; v{version} stopped")
        raise RolloutFailed(f"shadow gate failed: {g.failures(results)}", rollout.timeline)
    _switch_all(settings, target, router, rollout, new, old)
    return rollout


def kubernetes_blue_green(settings: Settings, model: str, version: str, target) -> Rollout:
    """Blue/green on a cluster: the version's Deployment rolls out (readiness-gated by the
    target), then the model's stable Service selector moves to it, then the old one is deleted.
    Traffic moves by the Service, so there is no nginx here."""
    try:
        previous = target.routed_version(model)
    except TargetError as error:
        raise RolloutFailed(f"kubernetes: {error}", []) from error
    rollout = Rollout(model, version, previous, "blue_green")
    if previous == version:
        rollout.step("already serving", True, f"the Service already selects v{version}")
        return rollout
    try:
        new = target.start(model, version)
        rollout.step("started", True, f"Deployment of v{version} ready ({new.url})")
        target.route(model, version)
        rollout.step("switched", True, f"Service selects v{version}", weights={version: 100})
    except TargetError as error:
        rollout.step("gate failed", False, str(error))
        if previous is not None and target.routed_version(model) != previous:
            target.route(model, previous)
            rollout.step("rolled back", True, f"Service selects v{previous} again", weights={previous: 100})
        target.stop(model, version)
        raise RolloutFailed(str(error), rollout.timeline) from error
    rollout.endpoint_url = new.url
    record_active(settings, model, version, new.url, "blue_green")
    if previous is not None:
        target.stop(model, previous)
        rollout.step("retired", True, f"v{previous} deleted")
    return rollout


def roll_back_to_previous(settings: Settings, model: str, target: Target | None = None,
                          router: NginxRouter | None = None, to_version: str | None = None) -> Rollout:
    """Manual rollback: the version that served before the current one (or ``to_version``)
    takes all traffic again; the current one is stopped."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    current = active_version(settings, model)
    if current is None:
        raise RolloutFailed(f"{model} is not serving: nothing to roll back", [])
    if to_version is None:
        earlier = [h["version"] for h in history(settings, model) if h["version"] != current]
        if not earlier:
            raise RolloutFailed(f"{model} v{current} is the only version that ever served: nothing to roll back to", [])
        to_version = earlier[-1]
    rollout = Rollout(model, to_version, current, "rollback")
    began = time.monotonic()
    old = target.endpoint(model, current)
    new = _start_and_smoke(settings, target, rollout)
    _switch_all(settings, target, router, rollout, new, old)
    rollout.rollback_s = round(time.monotonic() - began, 3)
    return rollout


def timeline_markdown(rollout: Rollout, outcome: str) -> str:
    rows = "\n".join(
        f"| {s['t_s']:.3f} | {s['step']} | {'ok' if s['ok'] else '**FAILED**'} | "
        f"{', '.join(f'v{v}: {w}%' for v, w in s.get('weights', {}).items()) or '-'} | {s['detail']} |"
        for s in rollout.timeline)
    rollback = f"; rollback took {rollout.rollback_s:.3f} s" if rollout.rollback_s is not None else ""
    return (f"# Rollout of {rollout.model} v{rollout.version} ({rollout.strategy}): {outcome}\n\n"
            f"Previous version: {('v' + rollout.previous) if rollout.previous else 'none'}; "
            f"endpoint {rollout.endpoint_url or '-'}{rollback}\n\n"
            f"| t (s) | step | result | traffic | detail |\n|---|---|---|---|---|\n{rows}\n")
