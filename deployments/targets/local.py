"""The ``local`` target: each model version runs as N replicas (``serving.replicas``), each a
``python -m deployments.server`` program of the stack's supervisord on its own loopback port and
unix socket, restarted by supervisord's policy when it exits (and by the watchdog when it hangs).

The target, in its own trusted process, downloads the version once, checks it against the
registered sha256 and its signature, and hands every replica that directory and that sha256; a
replica verifies both again before it loads anything. A replica thus never talks to the registry:
a restart needs neither MLflow nor a download (it comes back while the registry itself is
restarting), and a model server holds no registry credential. Its environment is
``Settings.replica_env()``: its own inference and admin tokens, and no other secret.

A replica never prunes its prediction log (that is recorded in the ledger, which a model server
does not write): the target prunes at every start, as the docker target does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deployments.targets.base import (Endpoint, Replica, TargetError, checked, desired_replicas, free_port,
                                      host_replica, prune_logs, ready_endpoint, replica_environment, socket_path,
                                      wait_ready)
from deployments.server.main import registered_digest, resolve_model_dir
from modelyard.catalog import TAG_ARTIFACT_SHA256
from modelyard.processes import EXITED_STATES, Program, stack_supervisor
from modelyard.settings import Settings

__all__ = ["Endpoint", "LocalTarget", "TargetError"]

PROGRAM_PREFIX = "serve-"
ACTOR = "host:local-target"  # who prunes replicas' logs and records a refused version
REPLICA_PRIORITY = 900  # stopped before the stack's own programs, after the watchdog
STOP_WAIT_S = 15


class LocalTarget:
    name = "local"

    def __init__(self, settings: Settings, replicas: int | None = None) -> None:
        """``replicas``: how many to start per version; by default what the version's spec says."""
        self.settings = settings
        self.supervisor = stack_supervisor(settings)
        self.replica_count = replicas

    @staticmethod
    def program_name(model: str, version: str, index: int) -> str:
        model, version = checked(model, version)
        return f"{PROGRAM_PREFIX}{model}-v{version}-r{int(index)}"

    def _serving(self):
        from modelyard.resources import get_resources

        return get_resources(self.settings).serving

    def replicas(self, model: str, version: str) -> list[Replica]:
        """Every replica the version was started with, ready or not."""
        record = self._serving().replicas(model).get(version)
        if record is None or record["target"] != self.name:
            return []
        return [Replica.of(r) for r in record["replicas"]]

    def endpoint(self, model: str, version: str) -> Endpoint | None:
        """The version with its ready replicas (supervisord runs them and they answer their
        readiness check); None if none is."""
        replicas = self.replicas(model, version)
        if not replicas:
            return None
        running = self.supervisor.processes()
        alive = [r for r in replicas if r.handle in running and running[r.handle].state in {"STARTING", "RUNNING"}]
        return ready_endpoint(model, version, alive)

    def _program(self, model: str, version: str, replica: Replica, model_dir: Path, digest: str) -> Program:
        """A replica's program: the verified directory and its sha256 on the command line (no
        secret), its own tokens in its environment (``replica_environment``)."""
        command = [sys.executable, "-m", "deployments.server", str(model_dir), "--name", model, "--version", version,
                   "--expected-sha256", digest, "--port", str(replica.port), "--uds", str(replica.socket)]
        environment = {**replica_environment(self.settings), "PATH": str(Path(sys.executable).parent)}
        return Program(replica.handle, command, self.settings.project_dir, environment, priority=REPLICA_PRIORITY,
                       startsecs=5, stopwaitsecs=STOP_WAIT_S)

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint:
        """Start ``models:/model/version`` as N supervised replicas and wait until every one is
        ready; replicas already running are kept. The version's files are checked here against
        the registered sha256 and their signature (a refusal raises before any replica starts),
        and again by every replica before it loads them."""
        model, version = checked(model, version)
        if not self.supervisor.running():
            raise TargetError(f"the stack's supervisor is not running ({self.supervisor.socket}): "
                              "run `modelyard stack up`")
        count = self.replica_count or desired_replicas(self.settings, model, version)
        try:
            _, _, digest = registered_digest(f"models:/{model}/{version}", self.settings)
        except Exception as error:  # noqa: BLE001 - the registry's own errors: say what was being fetched
            raise TargetError(f"fetching {model} v{version} from the registry failed: {error}") from error
        if not digest:
            raise TargetError(f"{model} v{version} has no recorded artifact sha256 ({TAG_ARTIFACT_SHA256}): "
                              "refusing to serve it")
        try:  # checked here, in this trusted process: the sha256 and the signature (recorded if refused)
            model_dir = resolve_model_dir(f"models:/{model}/{version}", self.settings, digest, actor=ACTOR)
        except Exception as error:  # noqa: BLE001 - a refusal or the registry's own error: say which version
            raise TargetError(f"{model} v{version} cannot be served: {error}") from error
        prune_logs(self.settings, model, ACTOR)
        known = {r.index: r for r in self.replicas(model, version)}
        replicas = [known.get(index) or host_replica(
            self.settings, index, free_port(self.settings.host), str(socket_path(self.settings, model, version, index)),
            self.program_name(model, version, index)) for index in range(count)]
        self._serving().record_replicas(model, version, self.name, [r.record() for r in replicas])
        started = {r.handle: self.supervisor.ensure(self._program(model, version, r, model_dir, digest))
                   for r in replicas}
        for extra in [r for index, r in known.items() if index >= count]:
            self.supervisor.remove(extra.handle)

        def exited(replica: Replica) -> bool:
            info = self.supervisor.info(replica.handle)
            first = started[replica.handle].pid
            return info is None or info.state in EXITED_STATES or (first is not None and info.pid not in (None, first))

        failed = wait_ready(replicas, timeout_s, exited)
        if failed is None:
            return Endpoint(model, version, tuple(replicas))
        log = self.supervisor.log_path(failed.handle)
        if exited(failed):
            tail = self.supervisor.tail(failed.handle, 5)
            self.stop(model, version)
            raise TargetError(f"{model} v{version} exited during start-up: {tail}")
        self.stop(model, version)
        raise TargetError(f"{model} v{version} was not ready after {timeout_s:.0f} s; log {log}")

    def stop(self, model: str, version: str) -> bool:
        """Stop every replica of the version (gracefully: in-flight requests finish) and forget it."""
        model, version = checked(model, version)
        replicas = self.replicas(model, version)
        self._serving().forget_replicas(model, version)  # the watchdog lets them go first
        stopped = [self.supervisor.remove(r.handle) for r in replicas]
        return any(stopped)

    def restart_replica(self, handle: str, hung: bool, pid: int | None = None) -> str:
        """Have a lost replica started again; what was done. A hung one (alive, not answering,
        or stopped) is killed, never waited on, and supervisord restarts it — unless the process
        is no longer the one found hung (``pid``): then it was restarted already. One that
        supervisord gave up on is started."""
        info = self.supervisor.info(handle)
        if info is None:
            return "gone"
        if hung and info.state in {"RUNNING", "STARTING"} and (pid is None or info.pid == pid):
            return "killed" if self.supervisor.kill(handle) else "not running"
        if info.state in {"EXITED", "FATAL"}:
            self.supervisor.start_process(handle)
            return "started"
        return f"left to supervisord ({info.state.lower()})"

    def stop_all(self) -> list[str]:
        """Stop every local replica of every model (``stack down``); their program names."""
        serving = self._serving()
        for model in serving.replicated_models():
            for version, record in serving.replicas(model).items():
                if record["target"] == self.name:
                    serving.forget_replicas(model, version)
        names = [name for name in self.supervisor.processes() if name.startswith(PROGRAM_PREFIX)]
        return [name for name in names if self.supervisor.remove(name)]
