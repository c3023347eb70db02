"""Rollout strategies: how traffic moves from the serving version to a new one.

A strategy uses a target (where versions run) and a router (where traffic goes) through their
interfaces only. Every step lands in the rollout's timeline; any failed gate rolls back to the
previous version — after checking that it is still ready — and says why.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from deployments.targets.local import Endpoint, LocalTarget, TargetError
from deployments.traffic.nginx import NginxRouter
from modelyard.settings import Settings


class RolloutFailed(RuntimeError):
    def __init__(self, reason: str, timeline: list[dict]) -> None:
        super().__init__(reason)
        self.reason, self.timeline = reason, timeline


@dataclass
class Rollout:
    model: str
    version: str
    previous: str | None
    endpoint_url: str = ""
    timeline: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, name: str, ok: bool, detail: str = "") -> None:
        self.timeline.append({"t_s": round(time.monotonic() - self.started, 3), "step": name,
                              "ok": ok, "detail": detail})


def _headers(settings: Settings) -> dict[str, str]:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def smoke_request(settings: Settings, endpoint: Endpoint) -> None:
    """POST the model's own serving input example; anything but 200 fails the gate."""
    model_dir = settings.state_dir / "models" / f"{endpoint.model}-{endpoint.version}"
    example = next(iter(sorted(model_dir.rglob("serving_input_example.json"))), None)
    if example is None:
        raise TargetError("the version has no serving input example to smoke-test with")
    response = httpx.post(f"{endpoint.url}/invocations", content=example.read_bytes(), timeout=10,
                          headers={"Content-Type": "application/json", **_headers(settings)})
    if response.status_code != 200:
        raise TargetError(f"smoke request answered {response.status_code}: {response.text[:200]}")


def wait_serving(settings: Settings, url: str, version: str, timeout_s: float = 10) -> bool:
    """Until the stable endpoint answers with ``version`` (nginx reloads asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/version", headers=_headers(settings), timeout=2)
            if answer.status_code == 200 and answer.json().get("version") == version:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def active_version(settings: Settings, model: str) -> str | None:
    try:
        return json.loads((settings.state_dir / "serving" / f"{model}.active.json").read_text())["version"]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _record_active(settings: Settings, model: str, version: str, url: str) -> None:
    path = settings.state_dir / "serving" / f"{model}.active.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "endpoint": url, "since": time.time()}))


def blue_green(settings: Settings, model: str, version: str,
               target: LocalTarget | None = None, router: NginxRouter | None = None) -> Rollout:
    """Start the new version beside the old, gate it, switch all traffic at once, stop the old."""
    target, router = target or LocalTarget(settings), router or NginxRouter(settings)
    previous = active_version(settings, model)
    rollout = Rollout(model, version, previous)
    if previous == version:
        rollout.step("already serving", True, f"v{version} is the active version")
        rollout.endpoint_url = f"http://{settings.host}:{router.stable_port(model)}"
        return rollout
    try:
        new = target.start(model, version)
        rollout.step("started", True, f"v{version} ready on port {new.port}")
        smoke_request(settings, new)
        rollout.step("smoke", True, "input example answered 200")
    except TargetError as error:
        rollout.step("gate failed", False, str(error))
        target.stop(model, version)
        rollout.step("rolled back", True, f"v{previous} keeps serving" if previous else "nothing was serving")
        raise RolloutFailed(str(error), rollout.timeline) from error
    url = router.route(model, {new.port: 1}, {new.port: version})
    rollout.endpoint_url = url
    if not wait_serving(settings, url, version):
        reason = "the stable endpoint did not answer with the new version after the switch"
        rollout.step("switch probe", False, reason)
        _roll_back(settings, target, router, rollout, previous)
        raise RolloutFailed(reason, rollout.timeline)
    rollout.step("switched", True, f"100% of traffic on v{version} via {url}")
    _record_active(settings, model, version, url)
    if previous is not None:
        time.sleep(1.0)  # in-flight requests on the old version finish
        target.stop(model, previous)
        rollout.step("retired", True, f"v{previous} stopped")
    return rollout


def _roll_back(settings: Settings, target: LocalTarget, router: NginxRouter, rollout: Rollout, previous: str | None) -> None:
    old = target.endpoint(rollout.model, previous) if previous else None
    if old is None:
        rollout.step("rollback impossible", False, "no ready previous version to return to")
    else:
        router.route(rollout.model, {old.port: 1}, {old.port: previous})
        ok = wait_serving(settings, rollout.endpoint_url, previous)
        rollout.step("rolled back", ok, f"100% of traffic back on v{previous}")
    target.stop(rollout.model, rollout.version)


def timeline_markdown(rollout: Rollout, outcome: str) -> str:
    rows = "\n".join(f"| {s['t_s']:.3f} | {s['step']} | {'ok' if s['ok'] else '**FAILED**'} | {s['detail']} |"
                     for s in rollout.timeline)
    return (f"# Rollout of {rollout.model} v{rollout.version}: {outcome}\n\n"
            f"Previous version: {('v' + rollout.previous) if rollout.previous else 'none'}; "
            f"endpoint {rollout.endpoint_url or '-'}\n\n| t (s) | step | result | detail |\n|---|---|---|---|\n{rows}\n")
