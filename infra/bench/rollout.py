"""Rollout benchmark: failed requests while traffic moves (slot router against ``nginx -s
reload``), the real rollout paths under load, and how fast a rollback is.

Run with `make bench-rollout`; writes docs/benchmarks/rollout.md (method and results).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import bench_arguments, free_port, one_row_body, registered_version, run_wrk, start_stack  # noqa: E402

from modelyard.resources import get_resources  # noqa: E402
from modelyard.settings import Settings  # noqa: E402

MODEL = "bench-rf100"
SPEC = ROOT / "specs" / "bench_rf100.yaml"


class Wrk:
    """wrk in the background for a fixed time; ``result`` once it finished."""

    def __init__(self, url: str, payload: str, seconds: int, connections: int = 8) -> None:
        self.result: dict | None = None
        self._thread = threading.Thread(target=lambda: setattr(self, "result", run_wrk(url, payload, seconds, connections)))

    def __enter__(self) -> Wrk:
        self._thread.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()


class ReloadRouter:
    """The alternative: one nginx whose upstream is rewritten and reloaded for every switch."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        self.conf = root / "nginx.conf"

    def write(self, backend_port: int) -> None:
        tmp = self.root / "tmp"
        self.conf.write_text(f"""worker_processes 1;
pid {self.root / 'nginx.pid'};
error_log {self.root / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/f;
    uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
    upstream model {{ server 127.0.0.1:{backend_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_next_upstream error timeout non_idempotent http_502 http_503;
        }}
    }}
}}
""")

    def nginx(self, *args: str) -> None:
        subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(self.conf), "-p", str(self.root), *args],
                       check=True, capture_output=True)

    def switch(self, backend_port: int) -> None:
        self.write(backend_port)
        self.nginx("-s", "reload")


def switching(settings: Settings, target, router, v1: str, v2: str, payload: str, switches: int, seconds: int) -> dict:
    """Both ways of switching, under the same load, the same number of times."""
    one, two = target.start(MODEL, v1), target.start(MODEL, v2)
    results = {}
    url = router.route(MODEL, {one: 100})
    interval = (seconds - 4) / switches
    with Wrk(f"{url}/invocations", payload, seconds) as wrk:
        for n in range(switches):
            router.route(MODEL, {two if n % 2 == 0 else one: 100})
            time.sleep(interval)
    results["slots"] = wrk.result
    reload_router = ReloadRouter(settings.state_dir / "bench-reload-nginx", free_port())
    reload_router.write(one.port)
    reload_router.nginx()
    try:
        with Wrk(f"http://127.0.0.1:{reload_router.port}/invocations", payload, seconds) as wrk:
            for n in range(switches):
                reload_router.switch(two.port if n % 2 == 0 else one.port)
                time.sleep(interval)
        results["reload"] = wrk.result
    finally:
        reload_router.nginx("-s", "quit")
    router.route(MODEL, {one: 100})
    target.stop(MODEL, v2)
    return results


def timed_rollout(name: str, url: str, payload: str, seconds: int, action) -> dict:
    with Wrk(f"{url}/invocations", payload, seconds) as wrk:
        began = time.monotonic()
        try:
            outcome = action()
            error = None
        except Exception as failure:  # noqa: BLE001 - a rolled-back canary is an expected outcome here
            outcome, error = getattr(failure, "timeline", None), getattr(failure, "reason", str(failure))
        elapsed = time.monotonic() - began
    print(f"  {name}: {elapsed:.1f} s, wrk {wrk.result}", flush=True)
    return {"seconds": elapsed, "wrk": wrk.result, "error": error, "outcome": outcome}


def main() -> None:
    args = bench_arguments("rollout.md", switches=20, seconds=30)
    settings = start_stack()
    from prefect.settings import temporary_settings

    from deployments import strategies
    from deployments.targets.local import LocalTarget
    from deployments.traffic.nginx import NginxRouter
    from modelyard.spec import load_spec
    from tests.support.broken_models import register_faulty_version

    payload = one_row_body()
    with temporary_settings(settings.prefect_client_settings()):
        from flows.build import build

        v1 = registered_version(settings)
        v2 = build(str(SPEC))["version"]
        v3 = build(str(SPEC))["version"]
    plan = load_spec(SPEC).serving.rollout.model_copy(update={"steps": [10, 50, 100], "bake_s": 5})
    target, router = LocalTarget(settings), NginxRouter(settings)
    results: dict = {}
    print(f"1. switching {args.switches} times under wrk: slots vs reload …", flush=True)
    strategies.blue_green(settings, MODEL, v1, target, router)
    results["switching"] = switching(settings, target, router, v1, v2, payload, args.switches, args.seconds)
    print(f"  {results['switching']}", flush=True)
    url = router.url(MODEL)
    print("2. rollout paths under wrk …", flush=True)
    results["blue_green"] = timed_rollout("blue/green v1→v2", url, payload, 25,
                                          lambda: strategies.blue_green(settings, MODEL, v2, target, router))
    results["canary_good"] = timed_rollout("canary v2→v3", url, payload, 30,
                                           lambda: strategies.canary(settings, MODEL, v3, plan, True, target, router))
    spec_dict = load_spec(SPEC).model_dump(mode="json")
    broken = register_faulty_version(MODEL, v3, "errors", spec_dict)
    results["canary_broken"] = timed_rollout("canary of a version failing 20%", url, payload, 30,
                                             lambda: strategies.canary(settings, MODEL, broken, plan, True, target, router))
    results["manual_rollback"] = timed_rollout("manual rollback v3→v2", url, payload, 15,
                                               lambda: strategies.roll_back_to_previous(settings, MODEL, target, router))
    results["docker"] = docker_rollout(settings, router, v1, payload)
    write_report(Path(args.out), results, args)
    target.stop(MODEL, get_resources(settings).serving.active_version(MODEL) or v2)


def docker_rollout(settings: Settings, router, version: str, payload: str) -> dict | None:
    try:
        import docker

        docker.from_env().ping()
        from deployments.targets.docker import DockerTarget
    except Exception as error:  # noqa: BLE001 - no engine here: say so in the report
        print(f"3. docker: skipped ({error})", flush=True)
        return {"skipped": str(error)}
    from deployments import strategies

    target = DockerTarget(settings)
    print("3. docker target: image build, start, blue/green under wrk …", flush=True)
    began = time.monotonic()
    try:
        image = target.build_image(MODEL, version)
    except Exception as error:  # noqa: BLE001 - report it instead of losing the other results
        print(f"3. docker: image build failed ({error})", flush=True)
        return {"skipped": f"image build failed: {str(error)[:300]}"}
    build_s = time.monotonic() - began
    result = timed_rollout("docker blue/green", router.url(MODEL), payload, 40,
                           lambda: strategies.blue_green(settings, MODEL, version, target, router)
                           if get_resources(settings).serving.active_version(MODEL) != version
                           else strategies.roll_back_to_previous(settings, MODEL, target, router, to_version=version))
    result["image_build_s"] = build_s
    result["image"] = getattr(image, "tag", str(image))
    target.stop(MODEL, version)
    return result


def write_report(path: Path, results: dict, args) -> None:
    sw = results["switching"]
    slots, reload = sw["slots"], sw["reload"]
    rows = []
    for key, label in (("blue_green", "blue/green v1 → v2"), ("canary_good", "canary v2 → v3 (10%, 50%, 100%; 5 s bakes)"),
                       ("canary_broken", "canary of a version failing 1 in 5 (rolled back by the gates)"),
                       ("manual_rollback", "`modelyard rollback` path (v3 → v2)")):
        r = results[key]
        rollback = getattr(r["outcome"], "rollback_s", None)
        if rollback is None and isinstance(r["outcome"], list):
            rollback = next((float(s["detail"].split(" in ")[-1].split(" s")[0]) for s in r["outcome"]
                             if s["step"] == "rolled back" and " in " in s["detail"]), None)
        rows.append(f"| {label} | {r['seconds']:.1f} | {r['wrk']['requests']} | {r['wrk']['errors']} | "
                    f"{'-' if rollback is None else f'{rollback:.3f}'} | {r['error'] or 'completed'} |")
    docker = results.get("docker") or {}
    docker_text = (f"Skipped: {docker['skipped']}" if "skipped" in docker else
                   f"Image `{docker['image']}` built in {docker['image_build_s']:.1f} s; blue/green onto the container "
                   f"took {docker['seconds']:.1f} s under wrk: {docker['wrk']['requests']} requests, "
                   f"{docker['wrk']['errors']} failed.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# Rollout benchmark

Produced by `make bench-rollout` (`infra/bench/rollout.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,
{platform.machine()}, {os.cpu_count()} cores; model `{MODEL}` (RandomForest, 100 trees, 30 features, ONNX);
load: wrk, 8 connections, single-row JSON, through the model's stable nginx endpoint on loopback.

## Switching traffic between two running versions, {args.switches} times in {args.seconds} s

| router | requests | failed | req/s | p99 (ms) |
|---|---|---|---|---|
| modelyard slots (symlink swap, no reload) | {slots['requests']} | **{slots['errors']}** | {slots['rps']:.0f} | {slots['p99_ms']:.2f} |
| rewrite upstream + `nginx -s reload` | {reload['requests']} | **{reload['errors']}** | {reload['rps']:.0f} | {reload['p99_ms']:.2f} |

A reload makes nginx's old workers close idle keep-alive client connections; a client whose
next request crosses that close gets no answer. The slot router never reloads for a switch.
Throughput ratio slots/reload: {slots['rps'] / reload['rps']:.2f} (the slot router opens one
upstream connection per request over a unix socket; the reload router keeps upstream
connections alive over TCP).

## Rollout paths under load

| rollout | seconds | requests | failed | rollback (s) | outcome |
|---|---|---|---|---|---|
{chr(10).join(rows)}

"failed" counts non-2xx answers and socket errors seen by wrk. For the broken canary they are
the 500s of its own 10% share during its first bake — the gates' blast radius; "rollback" is
the time from the verdict to the stable endpoint answering with the old version only.

## Docker target

{docker_text}
""")
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
