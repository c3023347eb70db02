"""The serving watchdog: every replica's readiness, probed on its unix socket every 0.5 s.

A dead or hung replica (connection refused, process stopped or exited, or two failed probes in
a row) is taken out of its model's route at once and restarted: a hung one is killed, which
also cuts its in-flight requests so that the router retries them on a live replica;
supervisord (or Docker's restart policy) starts it again. It goes back in the route when it
answers again. Each loss and each return goes to the ledger and to Prefect as an event, with
its time to detect and to restore. Runs as a supervised program of the stack (`stack up`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import httpx
import psutil

from deployments.traffic.nginx import NginxRouter
from modelyard.catalog import Action, Event, model_resource_id
from modelyard.processes import ProcessInfo, stack_supervisor
from modelyard.settings import Settings
from modelyard.utilisation import SAMPLE_EVERY_S, Sampler, append_sample, samples_path

PERIOD_S = 0.5
PROBE_TIMEOUT_S = 0.5
FAILURES_TO_DOWN = 2  # of slow or not-ready probes; a refused, stopped or exited replica is down at once
RESTART_AGAIN_S = 10.0  # a replica still down and not being restarted is restarted again after this
PRUNE_EVERY_S = 3600.0  # prediction log retention of every served model (servers never prune: a prune is a ledger write)
HEARTBEAT = "watchdog.json"
ACTOR = "watchdog"


class Outcome(StrEnum):
    READY = "ready"
    NOT_READY = "not ready"  # answered, not 200
    TIMEOUT = "no answer within the probe timeout"
    REFUSED = "connection refused"  # nothing listens: the process is gone
    STOPPED = "process stopped"  # SIGSTOP: alive, will never answer
    EXITED = "process exited"  # supervisord says it is not running


FATAL = frozenset({Outcome.REFUSED, Outcome.STOPPED, Outcome.EXITED})
HUNG = frozenset({Outcome.STOPPED, Outcome.TIMEOUT, Outcome.NOT_READY})  # alive but useless: kill it


@dataclass
class Watch:
    """What the watchdog knows of one replica. ``state``: starting (never ready yet) → up ⇄ down."""

    model: str
    version: str
    target: str
    index: int
    socket: str
    handle: str
    state: str = "starting"
    failures: int = 0
    last_ready: float | None = None
    lost_ready_at: float | None = None  # the last answered probe before the current loss
    ready_pid: int | None = None
    detected_at: float | None = None
    restarted_at: float | None = None
    reason: str = ""
    downs: int = 0

    @property
    def key(self) -> str:
        return self.socket


def assess(watch: Watch, outcome: Outcome, now: float) -> str | None:
    """Move ``watch`` by one probe's ``outcome``; the transition it makes: ``down`` (lost),
    ``restored`` (back after a loss), ``ready`` (first time ready) or None."""
    if outcome == Outcome.READY:
        watch.failures = 0
        watch.last_ready = now
        previous, watch.state = watch.state, "up"
        return {"down": "restored", "starting": "ready"}.get(previous)
    watch.failures += 1
    if watch.state == "up" and (outcome in FATAL or watch.failures >= FAILURES_TO_DOWN):
        watch.state, watch.detected_at, watch.reason = "down", now, outcome.value
        watch.lost_ready_at = watch.last_ready
        watch.downs += 1
        return "down"
    return None


def down_record(watch: Watch) -> dict:
    """Ledger details and event payload of a loss: time to detect is measured from the last
    probe the replica answered (the fault came after it), so it is an upper bound."""
    return {"replica": watch.index, "handle": watch.handle, "target": watch.target, "reason": watch.reason,
            "last_ready_at": watch.lost_ready_at, "detected_at": watch.detected_at,
            "detect_s": round(watch.detected_at - watch.lost_ready_at, 3) if watch.lost_ready_at and watch.detected_at
            else None}


def restored_record(watch: Watch, now: float) -> dict:
    """Ledger details and event payload of a return: time to restore from the detection, and
    the replica's whole outage from its last answered probe before the loss."""
    return {"replica": watch.index, "handle": watch.handle, "target": watch.target, "reason": watch.reason,
            "detected_at": watch.detected_at, "restored_at": now,
            "restore_s": round(now - watch.detected_at, 3) if watch.detected_at else None,
            "outage_s": round(now - watch.lost_ready_at, 3) if watch.lost_ready_at else None}


def heartbeat_age(settings: Settings) -> float | None:
    """Seconds since the watchdog's last round of probes (None if it never ran)."""
    try:
        return time.time() - float(json.loads((settings.run_dir / HEARTBEAT).read_text())["at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


class Watchdog:
    def __init__(self, settings: Settings) -> None:
        from modelyard.resources import get_resources

        self.settings = settings
        self.resources = get_resources(settings)
        self.router = NginxRouter(settings)
        self.supervisor = stack_supervisor(settings)
        self.watches: dict[str, Watch] = {}
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.records = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")  # ledger and events, in order
        self.restarts = ThreadPoolExecutor(max_workers=2, thread_name_prefix="restarts")
        self.stopping = False
        self.next_prune = time.monotonic() + PRUNE_EVERY_S  # a version's start prunes too
        self.sampler = Sampler(settings)  # CPU/memory of every replica, for the utilisation KPI
        self.sampling = ThreadPoolExecutor(max_workers=1, thread_name_prefix="utilisation")
        self.next_sample = 0.0

    # -- what to watch --------------------------------------------------------------------

    def _recorded(self) -> dict[str, Watch]:
        serving = self.resources.serving
        found = {}
        for model in serving.replicated_models():
            for version, record in serving.replicas(model).items():
                for replica in record["replicas"]:
                    if replica["socket"]:
                        watch = Watch(model, version, record["target"], replica["index"], replica["socket"],
                                      replica["handle"])
                        found[watch.key] = watch
        return found

    def _still_recorded(self, watch: Watch) -> bool:
        """Whether the target still runs the replica (a target stopping a version forgets it first)."""
        record = self.resources.serving.replicas(watch.model).get(watch.version)
        return record is not None and any(r["socket"] == watch.socket for r in record["replicas"])

    async def _refresh(self) -> None:
        recorded = self._recorded()
        for key in set(self.watches) - set(recorded):
            self.watches.pop(key)
        for key in set(self.clients) - set(recorded):
            await self.clients.pop(key).aclose()
        for key, watch in recorded.items():
            if key not in self.watches or self.watches[key].handle != watch.handle:
                self.watches[key] = watch

    def _prune_logs(self, models: set[str]) -> None:
        """Prediction log retention for the served models, hourly: a server cannot record a prune
        in the ledger (it holds no ledger key), so the host does it (``targets.base.prune_logs``)."""
        from deployments.targets.base import prune_logs

        for model in sorted(models):
            try:
                pruned = prune_logs(self.settings, model, ACTOR)
            except Exception as error:  # noqa: BLE001 - retried next hour; the watch goes on
                print(f"{model}: prediction log retention failed: {error}", flush=True)
                continue
            if pruned:
                print(f"{model}: pruned prediction log partitions of {sorted(pruned)}", flush=True)

    # -- probing --------------------------------------------------------------------------

    def _client(self, socket_path: str) -> httpx.AsyncClient:
        if socket_path not in self.clients:
            self.clients[socket_path] = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=socket_path), base_url="http://replica",
                timeout=PROBE_TIMEOUT_S, headers={"Connection": "close"})
        return self.clients[socket_path]

    async def _probe(self, watch: Watch, infos: dict[str, ProcessInfo] | None) -> Outcome:
        info = infos.get(watch.handle) if infos is not None else None
        if watch.target == "local" and infos is not None and (info is None or info.state not in {"STARTING", "RUNNING"}):
            return Outcome.EXITED
        try:
            response = await self._client(watch.socket).get("/v2/health/ready")
        except httpx.ConnectError:
            return Outcome.REFUSED
        except httpx.TimeoutException:
            process = info.process() if info is not None else None
            try:
                return Outcome.STOPPED if process is not None and process.status() == psutil.STATUS_STOPPED else Outcome.TIMEOUT
            except psutil.Error:
                return Outcome.REFUSED
        except httpx.HTTPError:
            return Outcome.NOT_READY
        return Outcome.READY if response.status_code == 200 else Outcome.NOT_READY

    # -- acting ---------------------------------------------------------------------------

    def _restart(self, watch: Watch, hung: bool, pid: int | None) -> None:
        from deployments.targets.factory import make_target

        try:
            target = make_target(self.settings, watch.target)
            done = target.restart_replica(watch.handle, hung, pid)
        except Exception as error:  # noqa: BLE001 - a failed restart is retried; the watchdog goes on
            done = f"failed: {error}"
        print(f"{watch.model} v{watch.version} r{watch.index}: restart {done}", flush=True)

    def _record(self, action: Action, event: Event, watch: Watch, details: dict) -> None:
        subject = f"{watch.model}/{watch.version}"
        try:
            self.resources.ledger.append(ACTOR, str(action), subject, details)
        except Exception as error:  # noqa: BLE001
            print(f"ledger: {action} {subject} not recorded: {error}", flush=True)
        self._incident(action, watch, details)  # opened (or resolved) at once, before any event goes out
        try:
            from prefect.events import emit_event

            emit_event(event=str(event),
                       resource={"prefect.resource.id": model_resource_id(watch.model),
                                 "prefect.resource.name": watch.model, "modelyard.model": watch.model,
                                 "modelyard.version": watch.version, "modelyard.replica": str(watch.index)},
                       payload={"version": watch.version, **details})
        except Exception as error:  # noqa: BLE001 - Prefect may be down; the ledger has it
            print(f"event: {event} {subject} not emitted: {error}", flush=True)

    def _incident(self, action: Action, watch: Watch, details: dict) -> None:
        """A replica down opens a ``replica`` incident (its first bad signal: the last probe it
        answered); its return resolves that replica's incident by recovery, "replica restored"."""
        from modelyard.incidents import emit_incident_event, open_incident, resolve_by_recovery

        def record(kind: Action, subject: str, facts: dict) -> dict:
            return self.resources.ledger.append(ACTOR, str(kind), subject, facts)

        def emit(event: Event, incident) -> None:
            try:
                emit_incident_event(event, incident)
            except Exception as error:  # noqa: BLE001 - Prefect may be down; the ledger has it
                print(f"event: {event} {incident.id} not emitted: {error}", flush=True)

        replica = f"v{watch.version} r{watch.index}"
        try:
            records = self.resources.ledger.records()
            if action == Action.SERVING_REPLICA_DOWN:
                open_incident(record, records, model=watch.model, version=watch.version, kind="replica",
                              alert_action=action,
                              first_signal_at=details.get("last_ready_at") or details.get("detected_at"),
                              summary=f"replica {watch.index} of v{watch.version} down: {watch.reason}",
                              details=details, replica=replica, emit=emit)
            elif action == Action.SERVING_REPLICA_RESTORED:
                resolve_by_recovery(record, records, model=watch.model, how="replica restored", kinds=("replica",),
                                    replica=replica, recovered_at=details.get("restored_at"), emit=emit)
        except Exception as error:  # noqa: BLE001 - the watch goes on; the loss itself is in the ledger
            print(f"incident: {action} {watch.model} {replica} not recorded: {error}", flush=True)

    def _act(self, watch: Watch, outcome: Outcome, transition: str | None, info: ProcessInfo | None,
             now: float) -> None:
        if transition == "down":
            if not self._still_recorded(watch):  # its version is being stopped: not a loss
                self.watches.pop(watch.key, None)
                return
            self.router.set_replica(watch.model, watch.version, watch.socket, live=False)
            watch.restarted_at = now
            self.restarts.submit(self._restart, watch, outcome in HUNG, watch.ready_pid)
            self.records.submit(self._record, Action.SERVING_REPLICA_DOWN, Event.SERVING_REPLICA_DOWN, watch,
                                down_record(watch))
            print(f"{watch.model} v{watch.version} r{watch.index} down: {watch.reason}", flush=True)
        elif transition == "restored":
            self.router.set_replica(watch.model, watch.version, watch.socket, live=True)
            details = restored_record(watch, now)
            self.records.submit(self._record, Action.SERVING_REPLICA_RESTORED, Event.SERVING_REPLICA_RESTORED,
                                watch, details)
            print(f"{watch.model} v{watch.version} r{watch.index} restored in {details['restore_s']} s", flush=True)
        elif watch.state == "up":
            self.router.set_replica(watch.model, watch.version, watch.socket, live=True)
        elif watch.state == "down":
            self.router.set_replica(watch.model, watch.version, watch.socket, live=False)
            given_up = watch.target != "local" or (info is not None and info.state in {"EXITED", "FATAL"})
            if given_up and watch.restarted_at is not None and now - watch.restarted_at > RESTART_AGAIN_S:
                watch.restarted_at = now
                self.restarts.submit(self._restart, watch, outcome in HUNG and watch.target != "local", None)
        if outcome == Outcome.READY and info is not None:
            watch.ready_pid = info.pid

    async def round(self) -> None:
        """One round: probe every replica at once, act on what changed."""
        await self._refresh()
        if not self.watches:
            return
        if time.monotonic() >= self.next_prune:
            self.next_prune = time.monotonic() + PRUNE_EVERY_S
            self.restarts.submit(self._prune_logs, {watch.model for watch in self.watches.values()})
        if time.monotonic() >= self.next_sample:
            self.next_sample = time.monotonic() + SAMPLE_EVERY_S
            self.sampling.submit(self._sample_utilisation)
        # supervisord's view of local replicas; None when it does not answer (then probes alone judge).
        infos = self.supervisor.processes() or None if any(w.target == "local" for w in self.watches.values()) else None
        watches = list(self.watches.values())
        outcomes = await asyncio.gather(*(self._probe(w, infos) for w in watches))
        now = time.time()
        for watch, outcome in zip(watches, outcomes, strict=True):
            transition = assess(watch, outcome, now)
            try:
                self._act(watch, outcome, transition, infos.get(watch.handle) if infos else None, now)
            except Exception as error:  # noqa: BLE001 - one replica's trouble never stops the watch
                print(f"{watch.model} v{watch.version} r{watch.index}: {error}", flush=True)

    def _sample_utilisation(self) -> None:
        """One utilisation sample of every replica into the bounded file (modelyard/utilisation.py)."""
        try:
            append_sample(samples_path(self.settings), self.sampler.sample())
        except Exception as error:  # noqa: BLE001 - a missed sample is retried next period; the watch goes on
            print(f"utilisation sample failed: {error}", flush=True)

    def _heartbeat(self) -> None:
        path = self.settings.run_dir / HEARTBEAT
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(json.dumps({"at": time.time(), "pid": os.getpid(), "replicas": [
            {"model": w.model, "version": w.version, "replica": w.index, "target": w.target, "state": w.state,
             "downs": w.downs, "detected_at": w.detected_at, "last_ready": w.last_ready}
            for w in self.watches.values()]}))
        os.replace(staged, path)

    async def run(self) -> None:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(self, "stopping", True))
        print(f"watching serving replicas every {PERIOD_S} s", flush=True)
        while not self.stopping:
            began = time.monotonic()
            try:
                await self.round()
                self._heartbeat()
            except Exception as error:  # noqa: BLE001 - e.g. supervisord restarting: try again next round
                print(f"round failed: {error}", flush=True)
            await asyncio.sleep(max(0.0, PERIOD_S - (time.monotonic() - began)))
        for client in self.clients.values():
            await client.aclose()
        self.records.shutdown(wait=True)
        self.restarts.shutdown(wait=True)
        self.sampling.shutdown(wait=True)


if __name__ == "__main__":
    from modelyard.settings import get_settings

    asyncio.run(Watchdog(get_settings()).run())
