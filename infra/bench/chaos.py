"""Chaos benchmark: a prober sends 25 requests/s, each with its own request id, through a model's
stable endpoint on a real stack (its own state dir and ports) while faults happen one at a time
with a calm gap between: replicas killed or stopped, every rollout path, the first nginx reload
of a new model, and each control-plane process killed. Per fault: probes, failed probes, the
longest outage, time to detect and to restore, and whether the goal held (issue #12: 0 failed
probes while one ready replica of a serving version is left; serving again within 5 s when none
is; a control-plane fault fails no inference request).

Run with `make bench-chaos`; writes docs/benchmarks/chaos.md and chaos.png.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import bench_arguments  # noqa: E402

from modelyard.settings import Settings  # noqa: E402
from tests.support.prober import Probe, Prober  # noqa: E402
from tests.support.stacks import free_port, quiet  # noqa: E402

MODEL = "chaos-bc"
SECOND = "chaos-second"
BIN = Path(sys.executable).parent
DETECT_BOUND_S = 2.0
ALL_DEAD_BOUND_S = 5.0
ROLLOUT_TIMEOUT_S = 240

NO_FAILURE = "0 failed probes"
NO_FAILURE_DETECTED = f"0 failed probes; detected ≤ {DETECT_BOUND_S:.0f} s"
SERVING_AGAIN = f"serving again ≤ {ALL_DEAD_BOUND_S:.0f} s; detected ≤ {DETECT_BOUND_S:.0f} s"
ONLY_BAD_ANSWERS = "no failure but the bad version's own 500s"
CONTROL_PLANE = "0 failed probes; restarted and healthy"


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


@dataclass
class Fault:
    """One fault (or one step of a rollout) and the stretch of probes it owns: [start, end)."""

    name: str
    goal: str
    start: float
    end: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # moments drawn on the timeline
    detect_s: float | None = None
    restore_s: float | None = None
    serving_again_s: float | None = None  # when every replica died: from the kill to the first answer after
    note: str = ""
    error: str | None = None  # the benchmark could not complete the fault: it failed its goal
    outcome: dict | None = None  # a rollout's ledger record
    detail: str = ""  # what the report says about it below the table

    # filled from the probes
    probes: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    longest_outage_s: float = 0.0
    held: bool = False


# -------------------------------------------------------------------------------- the stack

def stack_settings(state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, prefect_port=free_port(), mlflow_port=free_port(), bridge_port=free_port(),
                    serve_anonymous=True)


def cli(settings: Settings, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``modelyard ARGS`` against this stack (its MODELYARD_* settings), output kept in its logs."""
    env = settings.inherited_env() | settings.child_env() | settings.prefect_client_env()
    result = subprocess.run([str(BIN / "modelyard"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout_s)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", " ".join(args[:2]))[:60]
    (settings.logs_dir / f"bench-{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"modelyard {' '.join(args)} failed ({result.returncode}): "
                           f"{(result.stdout + result.stderr)[-1500:]}")
    return result


def write_spec(directory: Path, name: str, serving: dict) -> Path:
    spec = yaml.safe_load((ROOT / "specs" / "breast_cancer.yaml").read_text())
    spec["name"] = name
    spec["serving"] = serving
    # Trained under load on 2 cores: the latency policy is not what this benchmark measures.
    spec["policy"]["max_p95_latency_ms"] = 1000
    path = directory / f"{name}-{serving['strategy']}.yaml"
    path.write_text(yaml.safe_dump(quiet(spec)))
    return path


def v2_body() -> dict:
    """One breast-cancer row as an Open Inference request: its answer names the version."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    row = frame.iloc[0]
    return {"inputs": [{"name": column.replace(" ", "_"), "shape": [1], "datatype": "FP64", "data": [float(row[column])]}
                       for column in frame.columns]}


def wait_for(condition: Callable, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)


class Bench:
    def __init__(self, settings: Settings, calm_s: float) -> None:
        from deployments.targets.local import LocalTarget
        from modelyard.cli.stack import Stack
        from modelyard.ledger import ledger_from_settings
        from modelyard.resources import get_resources

        self.settings, self.calm_s = settings, calm_s
        self.resources = get_resources(settings)
        self.ledger = ledger_from_settings(settings)
        self.target = LocalTarget(settings)
        self.stack = Stack(settings)
        self.faults: list[Fault] = []

    # -- reading the stack ----------------------------------------------------------------

    def records(self, after: int, action: str | None = None, subject: str | None = None) -> list[dict]:
        return [r for r in self.ledger.records()[after:]
                if (action is None or r["action"] == action) and (subject is None or r["subject"] == subject)]

    def all_ready(self, version: str, count: int = 2) -> None:
        wait_for(lambda: (e := self.target.endpoint(MODEL, version)) is not None and len(e.replicas) == count,
                 60, f"{MODEL} v{version}: {count} replicas ready", poll_s=0.25)

    def pid(self, handle: str) -> int:
        return wait_for(lambda: (i := self.target.supervisor.info(handle)) is not None and i.state == "RUNNING" and i.pid,
                        30, f"{handle} running")

    def calm(self) -> None:
        time.sleep(self.calm_s)

    def run(self, name: str, goal: str, body: Callable[[Fault], None]) -> Fault:
        """One fault: ``body`` injects it and waits for the recovery; the fault then owns the
        probes until the calm gap after it has passed."""
        fault = Fault(name, goal, time.time())
        log(f"fault: {name}")
        try:
            body(fault)
        except Exception as error:  # noqa: BLE001 - reported in the table as a failed goal, never skipped
            fault.error = f"{type(error).__name__}: {error}"
            log(f"  {fault.error}")
            traceback.print_exc()
        self.calm()
        fault.end = time.time()
        self.faults.append(fault)
        return fault

    # -- replica faults -------------------------------------------------------------------

    def _replica_records(self, action: str, version: str, after: float) -> list[dict]:
        return [r for r in self.ledger.records(subject=f"{MODEL}/{version}")
                if r["action"] == action and r["details"]["detected_at"] >= after]

    def _detect_restore(self, fault: Fault, version: str, injected: float, replicas: int) -> None:
        from modelyard.catalog import Action

        restored = wait_for(lambda: len(r := self._replica_records(Action.SERVING_REPLICA_RESTORED, version,
                                                                      injected)) >= replicas and r,
                            60, f"{replicas} replica(s) restored (ledger)", poll_s=0.2)
        down = self._replica_records(Action.SERVING_REPLICA_DOWN, version, injected)
        fault.detect_s = max(r["details"]["detected_at"] for r in down) - injected
        fault.restore_s = max(r["details"]["restored_at"] for r in restored) - injected
        fault.marks["detected"] = injected + fault.detect_s
        fault.marks["restored"] = injected + fault.restore_s
        fault.note = "; ".join(f"r{r['details']['replica']}: {r['details']['reason']}" for r in down)

    def kill_replicas(self, version: str, which: list[int]) -> Callable[[Fault], None]:
        def body(fault: Fault) -> None:
            self.all_ready(version)
            replicas = self.target.replicas(MODEL, version)
            pids = [self.pid(replicas[i].handle) for i in which]
            injected = fault.marks["injected"] = time.time()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            self._detect_restore(fault, version, injected, len(pids))
        return body

    def stop_replica(self, version: str, index: int, seconds: float) -> Callable[[Fault], None]:
        def body(fault: Fault) -> None:
            self.all_ready(version)
            pid = self.pid(self.target.replicas(MODEL, version)[index].handle)
            injected = fault.marks["injected"] = time.time()
            os.kill(pid, signal.SIGSTOP)
            time.sleep(seconds)
            try:
                os.kill(pid, signal.SIGCONT)
                continued = "SIGCONT after 10 s reached the stopped process (it was not killed)"
            except ProcessLookupError:
                continued = "the watchdog had killed it long before the 10 s were up"
            self._detect_restore(fault, version, injected, 1)
            fault.note += f"; {continued}"
        return body

    # -- rollouts -------------------------------------------------------------------------

    def _outcome(self, mark: int, model: str, version: str, timeout_s: float = ROLLOUT_TIMEOUT_S) -> dict:
        from modelyard.catalog import Action

        outcomes = {Action.DEPLOY_SUCCEEDED, Action.DEPLOY_ROLLED_BACK}
        return wait_for(lambda: next((r for r in self.records(mark, subject=f"{model}/{version}")
                                      if r["action"] in outcomes), None),
                        timeout_s, f"the deploy of {model} v{version} (ledger)", poll_s=0.5)

    def champion(self, version: str) -> Callable[[Fault], None]:
        """The registry's champion alias moved to ``version``: the webhook, the bridge, the
        deploy trigger, the worker and the deploy flow do the rest, as on any stack."""
        from modelyard.catalog import CHAMPION
        from modelyard.resources.registry import set_alias

        def body(fault: Fault) -> None:
            mark = len(self.ledger.records())
            fault.marks["alias set"] = time.time()
            set_alias(self.resources.registry, MODEL, CHAMPION, version)
            record = self._outcome(mark, MODEL, version)
            fault.marks.update(_timeline_marks(record["details"].get("timeline", [])))
            fault.note = f"{record['action']}: " + "; ".join(
                f"{s['step']}" for s in record["details"].get("timeline", []))
            fault.outcome = record
        return body

    def manual_rollback(self) -> Callable[[Fault], None]:
        from modelyard.catalog import Action

        def body(fault: Fault) -> None:
            mark = len(self.ledger.records())
            fault.marks["rollback"] = time.time()
            cli(self.settings, "rollback", MODEL, "--reason", "chaos benchmark", timeout_s=ROLLOUT_TIMEOUT_S)
            record = wait_for(lambda: next((r for r in self.records(mark) if r["action"] == Action.MANUAL_ROLLBACK),
                                           None), 10, "the manual rollback (ledger)")
            fault.restore_s = record["details"].get("rollback_s")
            fault.marks.update(_timeline_marks(record["details"].get("timeline", [])))
            version = record["subject"].split("/")[-1]
            fault.note = f"v{record['details']['from_version']} → v{version}"
            # The champion follows the rollback: its alias event starts a deploy of the version
            # already serving, which belongs to this fault.
            try:
                follow = self._outcome(mark, MODEL, version, timeout_s=90)
                fault.note += f"; the champion's own deploy after it: {follow['action']}"
            except TimeoutError:
                fault.note += "; no deploy of the champion recorded within 90 s after it"
        return body

    def second_model(self, spec: Path) -> Callable[[Fault], None]:
        from modelyard.catalog import CHAMPION
        from modelyard.resources.registry import alias_version

        def body(fault: Fault) -> None:
            mark = len(self.ledger.records())
            fault.marks["train"] = time.time()
            cli(self.settings, "train", str(spec), timeout_s=ROLLOUT_TIMEOUT_S)
            version = alias_version(self.resources.registry, SECOND, CHAMPION)
            if version is None:
                raise RuntimeError(f"`modelyard train` made no champion of {SECOND}")
            record = self._outcome(mark, SECOND, version)
            marks = _timeline_marks(record["details"].get("timeline", []))
            if "switched" in marks:
                fault.marks["nginx reload"] = marks["switched"]
            fault.note = f"{SECOND} v{version}: {record['action']}"
        return body

    # -- the control plane ------------------------------------------------------------------

    def worker_heartbeat_since(self, moment: float) -> bool:
        """The worker reported to Prefect after ``moment`` (Prefect shows a killed worker online
        until its heartbeats are overdue: a fresh heartbeat is what proves the new one works)."""
        from prefect.client.orchestration import SyncPrefectClient

        try:
            with SyncPrefectClient(self.settings.prefect_api_url, auth_string=self.settings.prefect_auth()) as client:
                workers = client.read_workers_for_work_pool(self.settings.work_pool)
        except Exception:  # noqa: BLE001 - Prefect not answering: not healthy
            return False
        return any(w.name == self.stack.worker_name and w.last_heartbeat_time is not None
                   and w.last_heartbeat_time.timestamp() > moment for w in workers)

    def served_by_program(self, name: str, port: int) -> bool:
        """Whether what listens on ``port`` is the supervised program ``name`` (or a child of it):
        an orphan of the killed process may still hold the port and answer health checks."""
        info = self.stack.processes.info(name)
        owner = listener(port)
        return info is not None and info.pid is not None and owner is not None and owner in process_tree(info.pid)

    def kill_component(self, name: str, healthy: Callable[[float], bool], port: int | None) -> Callable[[Fault], None]:
        """``healthy(since)``: the component serves again (``since``: the moment of the kill);
        with a ``port``, only when the restarted program is what listens there."""
        supervisor = self.stack.processes

        def restored(since: float) -> bool:
            return healthy(since) and (port is None or self.served_by_program(name, port))

        def body(fault: Fault) -> None:
            wait_for(lambda: restored(0.0), 60, f"{name} healthy before the fault", poll_s=0.25)
            pid = supervisor.info(name).pid
            injected = fault.marks["injected"] = time.time()
            os.kill(pid, signal.SIGKILL)
            info = wait_for(lambda: (i := supervisor.info(name)) is not None and i.pid not in (None, pid) and i,
                            60, f"{name} restarted by supervisord")
            fault.detect_s = time.time() - injected
            fault.marks["restarted"] = injected + fault.detect_s
            fault.note = f"pid {pid} → {info.pid}"
            try:
                wait_for(lambda: restored(injected), 30, f"{name} healthy again, served by the restarted program",
                         poll_s=0.1)
            except TimeoutError:
                owner = listener(port) if port is not None else None
                now = supervisor.info(name)
                fault.note += (f"; the restarted program is {now.state if now else 'gone'}"
                               + (f"; port {port} is held by {describe(owner)}, outside it" if owner else ""))
                fault.detail = (f"the restarted `{name}` never served: {fault.note}. Its log's tail:\n\n```\n"
                                f"{supervisor.tail(name, 8)}\n```")
                raise
            fault.restore_s = time.time() - injected
            fault.marks["healthy"] = injected + fault.restore_s
        return body


def listener(port: int) -> int | None:
    """The pid listening on a loopback TCP port."""
    import psutil

    return next((c.pid for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port), None)


def process_tree(pid: int) -> set[int]:
    import psutil

    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def describe(pid: int) -> str:
    import psutil

    try:
        process = psutil.Process(pid)
        return f"pid {pid} (parent {process.ppid()}: `{' '.join(process.cmdline())[:90]}`)"
    except psutil.Error:
        return f"pid {pid}"


def _timeline_marks(timeline: list[dict]) -> dict[str, float]:
    return {s["step"]: s["at"] for s in timeline if "at" in s}


def split_canary(fault: Fault) -> list[Fault]:
    """A canary rollout as rows: the new version starting beside the serving one, then each
    traffic step until the next, the last one until the switch settled."""
    steps = sorted(((at, step) for step, at in fault.marks.items() if step.startswith("weight ") or step == "switched"))
    if fault.error or not steps:
        return [fault]
    bounds = [fault.start] + [at for at, _ in steps] + [fault.end]
    names = ["start beside the serving version + smoke"] + [
        f"{step.removeprefix('weight ')} of traffic" if step != "switched" else "100%: switch, old version retired"
        for _, step in steps]
    rows = []
    for n, name in enumerate(names):
        row = Fault(f"{fault.name}: {name}", fault.goal, bounds[n], bounds[n + 1])
        row.marks = {k: v for k, v in fault.marks.items() if bounds[n] <= v < bounds[n + 1]}
        rows.append(row)
    rows[-1].note = fault.note
    return rows


# ---------------------------------------------------------------------------------- scoring

def outages(probes: list[Probe]) -> list[tuple[float, float, int]]:
    """Runs of consecutive failed probes (in send order): (first failed sent, next good sent, count)."""
    runs, first, count = [], None, 0
    for probe in probes:
        if not probe.ok:
            first, count = (first if first is not None else probe.sent), count + 1
        elif first is not None:
            runs.append((first, probe.sent, count))
            first, count = None, 0
    if first is not None:
        runs.append((first, probes[-1].ended, count))
    return runs


def score(fault: Fault, probes: list[Probe]) -> None:
    mine = [p for p in probes if fault.start <= p.sent < fault.end]
    fault.probes, fault.failed = len(mine), sum(not p.ok for p in mine)
    fault.statuses = {}
    for p in mine:
        if not p.ok:
            fault.statuses[str(p.status)] = fault.statuses.get(str(p.status), 0) + 1
    runs = outages(mine)
    fault.longest_outage_s = max((end - start for start, end, _ in runs), default=0.0)
    injected = fault.marks.get("injected")
    if fault.goal == SERVING_AGAIN and injected is not None:
        last_failed = max((p.sent for p in mine if not p.ok), default=None)
        after = [p.ended for p in mine if p.ok and p.sent > (last_failed or injected)]
        fault.serving_again_s = (min(after) - injected) if after else None
    if fault.error:
        fault.held = False
    elif fault.goal == SERVING_AGAIN:
        fault.held = (fault.serving_again_s is not None and fault.serving_again_s <= ALL_DEAD_BOUND_S
                      and fault.detect_s is not None and fault.detect_s <= DETECT_BOUND_S)
    elif fault.goal == NO_FAILURE_DETECTED:
        fault.held = fault.failed == 0 and fault.detect_s is not None and fault.detect_s <= DETECT_BOUND_S
    elif fault.goal == ONLY_BAD_ANSWERS:
        fault.held = set(fault.statuses) <= {"500"}
    else:
        fault.held = fault.failed == 0


# ---------------------------------------------------------------------------------- the run

def main() -> None:
    args = bench_arguments("chaos.md", rate=25, calm=3)
    began = time.monotonic()
    load = os.getloadavg()[0]
    # Short: supervisord's unix socket lives under it (108-byte limit).
    state_dir = Path(tempfile.mkdtemp(prefix="my-chaos-", dir="/tmp"))
    settings = stack_settings(state_dir / "s")
    os.environ.update(settings.child_env() | settings.prefect_client_env())
    os.environ.pop("PREFECT_HOME", None)
    log(f"stack up in {settings.state_dir} …")
    cli(settings, "stack", "up")
    try:
        from prefect.settings import temporary_settings

        with temporary_settings(settings.prefect_client_settings()):
            faults, probes, versions, rate = chaos(settings, args)
    except BaseException:
        stack_down(settings)
        log(f"kept {state_dir} (logs under {settings.logs_dir})")
        raise
    left = stack_down(settings)
    load_text = f"load average {load:.2f} when it began, {os.getloadavg()[0]:.2f} when it ended"
    write_report(Path(args.out), faults, probes, versions, rate, time.monotonic() - began, args.calm, left, load_text)
    shutil.rmtree(state_dir, ignore_errors=True)
    log(f"done in {time.monotonic() - began:.0f} s")


def stack_down(settings: Settings) -> list[str]:
    """`modelyard stack down`, then what still listens on the stack's ports: described, and
    killed (the benchmark started them)."""
    log("stack down …")
    try:
        cli(settings, "stack", "down")
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        log(f"  {error}")
    left = []
    for port in (settings.prefect_port, settings.mlflow_port, settings.bridge_port):
        owner = listener(port)
        if owner is not None:
            left.append(f"{describe(owner)} on port {port}")
            log(f"  left running after stack down: {left[-1]}; killing it")
            os.kill(owner, signal.SIGKILL)
    return left


def chaos(settings: Settings, args) -> tuple[list[Fault], list[Probe], dict[str, str], float]:
    from flows.build import build
    from flows.pipeline import model_pipeline
    from modelyard.cli.stack import MLFLOW_SERVER, PREFECT_SERVER, PREFECT_WORKER, REGISTRY_BRIDGE
    from modelyard.spec import load_spec
    from tests.support.broken_models import register_faulty_version

    specs = settings.state_dir / "specs"
    specs.mkdir(parents=True)
    blue_green = write_spec(specs, MODEL, {"strategy": "blue_green", "replicas": 2})
    canary = write_spec(specs, MODEL, {"strategy": "canary", "replicas": 2,
                                       "rollout": {"steps": [25, 50, 100], "bake_s": 4}})
    second = write_spec(specs, SECOND, {"strategy": "blue_green", "replicas": 1})

    bench = Bench(settings, args.calm)
    log("v1: model pipeline (champion → deploy by the registry event) …")
    v1 = model_pipeline(str(blue_green))["version"]
    active = bench.resources.serving.wait_active(MODEL, v1, ROLLOUT_TIMEOUT_S)
    if active is None:
        raise RuntimeError(f"{MODEL} v{v1} did not serve: {bench.ledger.records()[-3:]}")
    log("v2 (blue/green), v3 (canary), a bad version (canary, fails 1 in 5) …")
    v2 = build(str(blue_green))["version"]
    v3 = build(str(canary))["version"]
    bad = register_faulty_version(MODEL, v3, "errors", load_spec(canary).model_dump(mode="json"))
    versions = {"first champion": v1, "blue/green": v2, "canary": v3, "bad, fails 1 in 5": bad}
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"} if settings.api_token else {}
    prober = Prober(active["endpoint"], v2_body(), rate=args.rate, path=f"/v2/models/{MODEL}/infer", headers=headers)
    log(f"probing {active['endpoint']} at {args.rate}/s")
    stack = bench.stack
    with prober:
        bench.calm()
        bench.run(f"kill -9 of one replica (v{v1})", NO_FAILURE_DETECTED, bench.kill_replicas(v1, [0]))
        bench.run(f"kill -9 of every replica (v{v1}, both)", SERVING_AGAIN, bench.kill_replicas(v1, [0, 1]))
        bench.run(f"SIGSTOP of one replica for 10 s (v{v1})", NO_FAILURE_DETECTED, bench.stop_replica(v1, 1, 10))
        bench.run(f"blue/green v{v1} → v{v2}", NO_FAILURE, bench.champion(v2))
        canary_fault = bench.run(f"canary v{v2} → v{v3}", NO_FAILURE, bench.champion(v3))
        bench.faults[-1:] = split_canary(canary_fault)
        auto = bench.run(f"automatic rollback: canary of v{bad} (fails 1 in 5) refused by its gates",
                         ONLY_BAD_ANSWERS, bench.champion(bad))
        _auto_times(auto)
        bench.run("manual rollback (`modelyard rollback`)", NO_FAILURE, bench.manual_rollback())
        bench.run("first nginx reload: a second model trained, registered, deployed (`modelyard train`)",
                  NO_FAILURE, bench.second_model(second))
        for name, healthy, port in (
                (REGISTRY_BRIDGE, lambda since: stack.bridge_healthy(), settings.bridge_port),
                (PREFECT_WORKER, bench.worker_heartbeat_since, None),
                (PREFECT_SERVER, lambda since: stack.prefect_healthy(), settings.prefect_port),
                (MLFLOW_SERVER, lambda since: stack.mlflow_healthy(), settings.mlflow_port)):
            bench.run(f"kill -9 of the {name}", CONTROL_PLANE, bench.kill_component(name, healthy, port))
    probes = sorted(prober.probes, key=lambda p: p.sent)
    for fault in bench.faults:
        score(fault, probes)
    return bench.faults, probes, versions, prober.rate_seen()


def _auto_times(fault: Fault) -> None:
    """The automatic rollback's detection (the first step to the failed verdict) and restore
    (the verdict to the stable endpoint answering with the old version only)."""
    outcome = getattr(fault, "outcome", None)
    if outcome is None:
        return
    timeline = outcome["details"].get("timeline", [])
    first = next((s["at"] for s in timeline if s["step"].startswith("weight ")), None)
    verdict = next((s["at"] for s in timeline if s["step"].startswith("gates") and not s["ok"]), None)
    back = next((s for s in timeline if s["step"] == "rolled back"), None)
    if first is not None and verdict is not None:
        fault.detect_s = verdict - first
    if back is not None and (found := re.search(r" in ([\d.]+) s", back.get("detail", ""))):
        fault.restore_s = float(found.group(1))
    reason = outcome["details"].get("reason", "")
    fault.note = f"{outcome['action']}: {reason}"[:300]


# ---------------------------------------------------------------------------------- the report

def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores{f' ({model})' if model else ''}, Python {platform.python_version()}"


def draw(path: Path, faults: list[Fault], probes: list[Probe], versions: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = probes[0].sent
    fig, ax = plt.subplots(figsize=(16, 5.5))
    names = {v: k for k, v in versions.items()}
    colours = ["tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for (role, version), colour in zip(versions.items(), colours, strict=False):
        mine = [p for p in probes if p.ok and p.version == version]
        if mine:
            ax.scatter([p.sent - t0 for p in mine], [p.latency_s * 1000 for p in mine], s=4, color=colour,
                       label=f"answered by v{version} ({role})")
    other = [p for p in probes if p.ok and p.version not in names]
    if other:
        ax.scatter([p.sent - t0 for p in other], [p.latency_s * 1000 for p in other], s=4, color="grey", label="answered")
    failed = [p for p in probes if not p.ok]
    if failed:
        ax.scatter([p.sent - t0 for p in failed], [max(p.latency_s * 1000, 1) for p in failed], s=30, marker="x",
                   color="red", label=f"failed ({len(failed)})", zorder=5)
    ax.set_yscale("log")
    top = max(p.latency_s * 1000 for p in probes) * 3
    for n, fault in enumerate(faults, 1):
        ax.axvspan(fault.start - t0, fault.end - t0, color="0.85" if n % 2 else "0.93", zorder=0)
        ax.text((fault.start + fault.end) / 2 - t0, top, str(n), ha="center", va="bottom", fontsize=8,
                color="red" if not fault.held else "black")
        for mark in fault.marks.values():
            ax.axvline(mark - t0, color="0.5", lw=0.5, ls=":", zorder=1)
    ax.set_ylim(top=top * 2)
    ax.set_xlabel("seconds since the first probe (shaded: one fault each, numbered as in the table; dotted: "
                  "injection, detection, restore, rollout steps)")
    ax.set_ylabel("probe latency (ms, log)")
    ax.set_title(f"{len(probes)} probes through the stable endpoint of {MODEL}; {len(failed)} failed")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: Path, faults: list[Fault], probes: list[Probe], versions: dict[str, str], rate: float,
                 seconds: float, calm_s: float, left: list[str], load: str) -> None:
    picture = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(picture, faults, probes, versions)
    rows = []
    for n, f in enumerate(faults, 1):
        failures = f"{f.failed}" + (f" ({', '.join(f'{k}×{v}' for k, v in sorted(f.statuses.items()))})"
                                    if f.statuses else "")
        restore = _seconds(f.restore_s)
        if f.serving_again_s is not None:
            restore += f"; serving again {f.serving_again_s:.2f}"
        held = "**yes**" if f.held else "**NO**"
        note = "; ".join(part for part in (f.error, f.note) if part)
        rows.append(f"| {n} | {f.name} | {f.probes} | {failures} | {f.longest_outage_s:.2f} | {_seconds(f.detect_s)} | "
                    f"{restore} | {f.goal} | {held} | {note.replace('|', '/')[:220]} |")
    covered = [p for p in probes if not any(f.start <= p.sent < f.end for f in faults)]
    calm_failed = sum(not p.ok for p in covered)
    total_failed = sum(not p.ok for p in probes)
    held = sum(f.held for f in faults)
    missed = [f"{n}. {f.name}" for n, f in enumerate(faults, 1) if not f.held]
    versions_text = ", ".join(f"v{version} {role}" for role, version in versions.items())
    details = "".join(f"\n**{n}. {f.name}**: {f.detail}\n" for n, f in enumerate(faults, 1) if f.detail)
    path.write_text(f"""# Chaos benchmark: serving through faults

Produced by `make bench-chaos` (`infra/bench/chaos.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_machine()};
the whole run (stack up, training, every fault, stack down) took {seconds / 60:.1f} minutes ({load}).

A real stack (`modelyard stack up`, its own state dir and ports: supervisord, Prefect, MLflow,
worker, registry bridge, watchdog, nginx) serves `{MODEL}` (breast-cancer gradient boosting, ONNX)
from **2 supervised replicas** per version. A prober sends **{rate:.1f} requests/s** (one row each,
Open Inference `POST /v2/models/{MODEL}/infer`, its own `X-Request-ID`, 15 s client timeout,
keep-alive connections) through the model's stable nginx endpoint for the whole run and keeps
each answer's status, latency and answering version. Faults happen one at a time, each followed
by {calm_s:.0f} s of calm; rollouts go the way they go on any stack: the `champion` alias is
set in MLflow, its webhook reaches the bridge, Prefect's trigger runs the deploy flow on the
worker. Versions: {versions_text}.

**{total_failed} of {len(probes)} probes failed; the goal held for {held} of {len(faults)} rows.**
{('Missed: ' + '; '.join(missed) + '.') if missed else 'Every goal held.'}

| # | fault | probes | failed | longest outage (s) | detect (s) | restore (s) | goal | held | what happened |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Before the first fault (calm): {len(covered)} probes, {calm_failed} failed.
After the run, `modelyard stack down` left {('running: ' + '; '.join(left) + ' (the benchmark killed it)') if left else 'nothing running on the stack’s ports'}.
{details}

![probe latency and failures over the run, faults shaded](chaos.png)

How to read it:

- **probes / failed**: probes sent during the row's stretch (from the injection until the calm gap
  after its recovery); failed = any answer but 200, or none (the client error's name).
- **longest outage**: the longest run of consecutive failed probes, from the first of them to the
  next probe that succeeded.
- **detect / restore**, measured from the injection. Replicas: the watchdog's ledger records
  (`serving.replica_down` `detected_at`, `serving.replica_restored` `restored_at`; the latest
  replica when several). Control plane: supervisord showing a new pid (detect) and the
  component's own health check passing again (restore). Automatic rollback: from the first
  canary step to the failed verdict, and the rollback's own switch time. Manual rollback: the
  `rollback_s` the ledger records. When every replica dies, "serving again" is the first good
  answer after the last failed probe.
- **goal**: 0 failed probes for every fault that leaves a ready replica of a serving version
  (kills and stops of one replica also need detection within {DETECT_BOUND_S:.0f} s); serving
  again within {ALL_DEAD_BOUND_S:.0f} s when every replica dies; a control-plane fault fails no
  inference request. A canary of a version that fails its own requests is the one case where
  probes may fail: its 500s during its canary share are the gates' blast radius, and nothing
  else may fail.

Reproduce: `make bench-chaos` (needs nginx; about {seconds / 60:.0f} minutes on this machine).
""")
    log(f"wrote {path} and {picture}")


if __name__ == "__main__":
    main()
