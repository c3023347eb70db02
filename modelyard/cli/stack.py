"""The embedded stack (Prefect server, MLflow server, worker, registry bridge, serving watchdog,
deployments), every process a program of the stack's supervisord (modelyard/processes.py):
``up`` starts what is not running and fails naming the log of a component that does not come
up, then brings every model back to the versions and traffic split it served, proven through
its stable endpoint (deployments/desired_state.py); ``down`` stops only what ``up`` started,
serving replicas and nginx included; ``status`` lists the components and each serving model.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from modelyard.processes import EXITED_STATES, ProcessInfo, Program, stack_supervisor, port_in_use
from modelyard.settings import Settings
from modelyard.webhooks import ensure_registry_webhook, mlflow_secret_encryption_key

PREFECT_SERVER = "prefect-server"
MLFLOW_SERVER = "mlflow-server"
PREFECT_WORKER = "prefect-worker"
REGISTRY_BRIDGE = "registry-bridge"
WATCHDOG = "watchdog"
PROCESS_COMPONENTS = (WATCHDOG, PREFECT_WORKER, REGISTRY_BRIDGE, MLFLOW_SERVER, PREFECT_SERVER)  # stop order, by PRIORITY
# supervisord starts low priorities first and stops high ones first (serving replicas: 900).
PRIORITY = {PREFECT_SERVER: 100, MLFLOW_SERVER: 200, REGISTRY_BRIDGE: 300, PREFECT_WORKER: 400, WATCHDOG: 950}

Progress = Callable[[str], None]
RESTORE_WORKERS = 4  # models restored side by side on `up`

if TYPE_CHECKING:  # the resources package imports MLflow: seconds that `stack down` need not pay
    from deployments.desired_state import Restore


class StackError(RuntimeError):
    """A component could not be started or reached; the message says which and where to look."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    url: str | None
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServingStatus:
    """One model as `stack status` lists it: each version with its traffic share, replicas
    alive (ready) of those desired and restarts (losses the watchdog detected), the stable
    endpoint and what it answers."""

    model: str
    url: str | None
    healthy: bool
    detail: str
    versions: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.model, "kind": "serving", "pid": None, "url": self.url, "healthy": self.healthy,
                "detail": self.detail, "versions": self.versions}


def serving_health(split: dict[str, int], versions: list[dict], answered: str | None) -> tuple[bool, str]:
    """Whether a model serves as it should, and why not: every version of its split has all its
    replicas alive, and the stable endpoint answers with a version of the split."""
    problems = []
    if not split:
        problems.append("no active version")
    for row in versions:
        if row["version"] not in split:
            problems.append(f"v{row['version']} runs outside the route")
        elif row["replicas_desired"] is None or row["replicas_alive"] < row["replicas_desired"]:
            problems.append(f"v{row['version']} has {row['replicas_alive']}/{row['replicas_desired'] or '?'} replicas")
    if split and answered not in split:
        problems.append("the stable endpoint does not answer" if answered is None
                        else f"the stable endpoint answers v{answered}")
    return not problems, "; ".join(problems) or f"serving; the stable endpoint answers v{answered}"


def _venv_bin(tool: str) -> str:
    """The console script ``tool`` of the interpreter running modelyard."""
    candidate = Path(sys.executable).parent / tool
    return str(candidate) if candidate.exists() else tool


class Stack:
    """One embedded stack, described by ``settings`` and living under its state dir."""

    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.settings = settings
        self.processes = stack_supervisor(settings)
        self._progress = progress or (lambda message: None)
        self.restores: list[Restore] = []  # what the last `up` restored, per model

    # -- environment of the child processes -------------------------------------------------

    def _supervisor_env(self) -> dict[str, str]:
        """What supervisord, and so every program and serving replica, inherits: the caller's
        environment less Prefect's and MLflow's variables and anything secret
        (``Settings.inherited_env``), plus where this stack is. No secret at all: each program
        gets its own in its environment."""
        return {**self.settings.inherited_env(), **self.settings.base_env(), **self.settings.prefect_location_env()}

    def _trusted_env(self) -> dict[str, str]:
        """A trusted component's environment (the worker and its flow runs, `prefect deploy`):
        the Prefect API's auth string, the MLflow service identity and modelyard's own secrets."""
        return {**self.settings.child_env(), **self.settings.prefect_client_env()}

    def _component_env(self) -> dict[str, str]:
        """The bridge's and the watchdog's: a trusted component's, less the database URL."""
        env = self._trusted_env()
        env.pop("MODELYARD_DATABASE_URL", None)
        return env

    def _prefect_server_env(self) -> dict[str, str]:
        """The Prefect server's secrets (its database URL, its API auth string) and extras."""
        auth = self.settings.prefect_auth()
        return {**self.PREFECT_SERVER_ENV, "PREFECT_UI_API_URL": self.settings.prefect_api_url,
                "PREFECT_API_DATABASE_CONNECTION_URL": self.settings.prefect_database_url,
                "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}

    def _mlflow_server_env(self) -> dict[str, str]:
        """MLflow's secrets (its store's URL, the webhook key, the auth app's configuration and
        Flask key), never on its command line, and extras."""
        from modelyard.mlflow_auth import server_env

        return {**self.MLFLOW_ENV, "MLFLOW_BACKEND_STORE_URI": self.settings.mlflow_backend_uri,
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": mlflow_secret_encryption_key(self.settings),
                **server_env(self.settings)}

    # Per-program extras without secrets.
    PREFECT_SERVER_ENV = {
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        # Monitor schedules are added while the stack runs (one per deployed model):
        # the scheduler picks them up within 10 s instead of its default minute.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
    }
    # Event-triggered runs (deploy on a registry event, retrain on an alert) wait for the
    # worker's next poll: every 2 s instead of Prefect's 10 s. One small query on loopback.
    WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    MLFLOW_ENV = {
        # Registry webhooks to the loopback bridge (never in production).
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # The job runner starts 7 extra processes we do not use on 2 cores.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }

    def _program(self, name: str, command: list[str], environment: dict[str, str] | None = None) -> Program:
        return Program(name, command, self.settings.project_dir, environment or {}, priority=PRIORITY[name])

    # -- health ---------------------------------------------------------------------------

    def prefect_healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.settings.prefect_api_url}/health", timeout=2.0)
            return response.status_code == 200 and response.json() is True
        except (httpx.HTTPError, ValueError):
            return False

    def mlflow_healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.settings.mlflow_url}/health", timeout=2.0)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def bridge_healthy(self) -> bool:
        try:
            return httpx.get(f"http://{self.settings.host}:{self.settings.bridge_port}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.settings.prefect_api_url, auth_string=self.settings.prefect_auth())

    @property
    def worker_name(self) -> str:
        return f"modelyard-{self.settings.work_pool}"

    def watchdog_healthy(self) -> bool:
        from deployments.watchdog import heartbeat_age

        age = heartbeat_age(self.settings)
        return age is not None and age < 5.0

    def worker_online(self) -> bool:
        from prefect.exceptions import ObjectNotFound

        try:
            with self._client() as client:
                workers = client.read_workers_for_work_pool(self.settings.work_pool)
        except (ObjectNotFound, httpx.HTTPError):
            return False
        return any(w.name == self.worker_name and str(w.status.value) == "ONLINE" for w in workers)

    # -- declared deployments ---------------------------------------------------------------

    @property
    def prefect_yaml(self) -> Path:
        return self.settings.project_dir / "prefect.yaml"

    def declared_deployments(self) -> list[str]:
        """Deployment names declared in prefect.yaml."""
        spec = yaml.safe_load(self.prefect_yaml.read_text()) or {}
        return [deployment["name"] for deployment in spec.get("deployments") or []]

    def registered_deployments(self) -> list[str]:
        """Names of the deployments the Prefect server holds."""
        try:
            with self._client() as client:
                return sorted(d.name for d in client.read_deployments())
        except httpx.HTTPError:
            return []

    def _deployments_fingerprint(self) -> str:
        spec = yaml.safe_load(self.prefect_yaml.read_text()) or {}
        digest = hashlib.sha256(self.prefect_yaml.read_bytes())
        for deployment in spec.get("deployments") or []:
            path = self.settings.project_dir / deployment["entrypoint"].split(":")[0]
            if path.exists():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    # -- up ---------------------------------------------------------------------------------

    def up(self) -> list[ComponentStatus]:
        """Start whatever is not running, wait until all is healthy, register deployments."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.state_dir / "prefect").mkdir(exist_ok=True)
        self.settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        # The model-signing key pair exists before anything can register a version.
        from modelyard.signing import ensure_signing_key

        ensure_signing_key(self.settings)
        if self.settings.database_url is not None:
            self._ensure_postgres_databases()
        else:
            self._check_sqlite_stores()

        if self.processes.start(self._supervisor_env()):
            self._progress(f"started supervisord ({self.processes.socket})")
        started = []
        started.append(self._start_server(PREFECT_SERVER, self.settings.prefect_port, self._prefect_command(),
                                          self._prefect_server_env()))
        started.append(self._start_server(MLFLOW_SERVER, self.settings.mlflow_port, self._mlflow_command(),
                                          self._mlflow_server_env()))
        self._wait_all_healthy([(PREFECT_SERVER, started[0], self.prefect_healthy),
                                (MLFLOW_SERVER, started[1], self.mlflow_healthy)])
        self._check_authentication_enforced()
        self._ensure_mlflow_identities()

        self._ensure_work_pool()
        worker = None
        if self.processes.alive(PREFECT_WORKER) is None:
            self._progress(f"starting {PREFECT_WORKER} for pool '{self.settings.work_pool}'")
            worker = self.processes.ensure(self._program(PREFECT_WORKER, self._worker_command(),
                                                         {**self._trusted_env(), **self.WORKER_ENV}))
        # The worker boots (seconds of imports) while the bridge starts and deployments register.
        bridge = self._start_server(REGISTRY_BRIDGE, self.settings.bridge_port,
                                    [sys.executable, "-m", "deployments.bridge"], self._component_env())
        watchdog = None
        if self.processes.alive(WATCHDOG) is None:
            self._progress(f"starting {WATCHDOG} (serving replicas)")
            watchdog = self.processes.ensure(self._program(WATCHDOG, [sys.executable, "-m", "deployments.watchdog"],
                                                           self._component_env()))
        self._wait_healthy(REGISTRY_BRIDGE, bridge, self.bridge_healthy)
        try:
            ensure_registry_webhook(self.settings)
        except Exception as error:  # MLflow answers, but not for webhooks: say so, with the log
            raise StackError(f"registering the MLflow registry webhook failed: {error}. "
                             f"MLflow's log: {self.processes.log_path(MLFLOW_SERVER)}") from error
        self._ensure_deployments()
        self._wait_healthy(PREFECT_WORKER, worker, self.worker_online)
        self._wait_healthy(WATCHDOG, watchdog, self.watchdog_healthy)
        from prefect.settings import temporary_settings

        from modelyard.automations import ensure_notifications

        with temporary_settings(self.settings.prefect_client_settings()):
            notifications = ensure_notifications(self.settings)
        if notifications != "unchanged":
            self._progress(f"notifications: {notifications}" + ("" if notifications != "disabled" else
                           " (set MODELYARD_NOTIFY_URL, MODELYARD_NOTIFY_SLACK_URL or MODELYARD_NOTIFY_TEAMS_URL)"))
        self.restores = self.restore_serving()
        self._progress(self.credentials_summary())
        return self.status()

    def credentials_summary(self) -> str:
        """Where this stack's credentials are and how to log in (printed by every `up`)."""
        where = self.settings.credentials_dir
        prefect = ("MODELYARD_PREFECT_AUTH_STRING (configured)" if self.settings.prefect_auth_string is not None
                   else f"{where / 'prefect-auth'}")
        users = ", ".join(f"{self.settings.mlflow_username(identity)} ({where / f'mlflow-{identity}'})"
                          for identity in ("admin", "service", "viewer"))
        return (f"credentials (0600 files in {where}): Prefect UI and API login: {prefect}; "
                f"MLflow users and their passwords: {users}")

    def _check_authentication_enforced(self) -> None:
        """Fail closed: a server that answers an anonymous API call (one started by a modelyard
        without authentication, still running) stops `up` with what to do."""
        anonymous = {PREFECT_SERVER: lambda: httpx.post(f"{self.settings.prefect_api_url}/flows/filter",
                                                        json={"limit": 1}, timeout=10),
                     MLFLOW_SERVER: lambda: httpx.get(f"{self.settings.mlflow_url}/api/2.0/mlflow/experiments/search",
                                                      params={"max_results": 1}, timeout=10)}
        open_servers = []
        for name, call in anonymous.items():
            try:
                status = call().status_code
            except httpx.HTTPError as error:
                raise StackError(f"{name} did not answer an authentication check: {error}. "
                                 f"Its log: {self.processes.log_path(name)}") from error
            if status != 401:
                open_servers.append(f"{name} (HTTP {status})")
        if open_servers:
            raise StackError(f"{', '.join(open_servers)} answered a request without credentials: it was started "
                             "without authentication (by an older modelyard?). Run `modelyard stack down`, then "
                             "`modelyard stack up`.")

    def _ensure_mlflow_identities(self) -> None:
        """MLflow's users (service, viewer) and their roles as they should be; a failure names
        MLflow's log."""
        from modelyard.mlflow_auth import MlflowAuthError, ensure_identities

        try:
            changes = ensure_identities(self.settings)
        except MlflowAuthError as error:
            raise StackError(f"{error} MLflow's log: {self.processes.log_path(MLFLOW_SERVER)}") from error
        for change in changes:
            self._progress(change)

    def restore_serving(self) -> list[Restore]:
        """Every model with an active version serving again at its versions and traffic split:
        started, routed and proven through its stable endpoint (models side by side). A restore,
        a repair or a failed restore is recorded in the ledger with its proof or its reason."""
        from concurrent.futures import ThreadPoolExecutor

        from deployments.desired_state import restore
        from modelyard.audit import append_audit_record
        from modelyard.resources.serving_state import ServingState

        models = ServingState(self.settings.state_dir).served_models()
        if not models:
            return []
        with ThreadPoolExecutor(max_workers=min(RESTORE_WORKERS, len(models))) as pool:
            outcomes = [o for o in pool.map(lambda model: restore(self.settings, model, "stack up"), models)
                        if o is not None]
        for outcome in outcomes:
            if outcome.action is not None:
                append_audit_record(outcome.action, outcome.subject, outcome.details(), settings=self.settings)
            self._progress(outcome.describe())
        return outcomes

    def _prefect_command(self) -> list[str]:
        return [
            _venv_bin("prefect"), "server", "start",
            "--host", self.settings.host, "--port", str(self.settings.prefect_port),
        ]

    def _mlflow_command(self) -> list[str]:
        return [
            _venv_bin("mlflow"), "server", "--app-name", "basic-auth",
            "--host", self.settings.host, "--port", str(self.settings.mlflow_port),
            "--workers", "1",
            "--artifacts-destination", str(self.settings.mlflow_artifacts_dir),
            "--serve-artifacts",
        ]

    def _worker_command(self) -> list[str]:
        return [
            _venv_bin("prefect"), "worker", "start",
            "--pool", self.settings.work_pool, "--type", "process",
            "--name", self.worker_name,
        ]

    def _start_server(self, name: str, port: int, command: list[str],
                      environment: dict[str, str] | None = None) -> ProcessInfo | None:
        if self.processes.alive(name) is not None:
            self._progress(f"{name} already running")
            return None
        if port_in_use(self.settings.host, port):
            raise StackError(
                f"{name} cannot start: port {port} on {self.settings.host} is taken by a process "
                f"this stack did not start. Stop it or choose another port "
                f"(MODELYARD_{ {PREFECT_SERVER: 'PREFECT', MLFLOW_SERVER: 'MLFLOW'}.get(name, 'BRIDGE') }_PORT)."
            )
        self._progress(f"starting {name} on {self.settings.host}:{port}")
        return self.processes.ensure(self._program(name, command, environment))

    def _wait_healthy(self, name: str, started: ProcessInfo | None, healthy: Callable[[], bool]) -> None:
        self._wait_all_healthy([(name, started, healthy)])

    def _exited(self, name: str, started: ProcessInfo | None) -> ProcessInfo | None:
        """What supervisord says of ``name`` if it exited since it was started (or, for one that
        already ran, if it is no longer alive); None while it lives."""
        info = self.processes.info(name)
        if info is None:
            return ProcessInfo(name, "STOPPED", None, 0.0, 0, "not configured")
        if started is None:
            return None if info.alive else info
        moved = started.pid is not None and info.pid is not None and info.pid != started.pid
        return info if info.state in EXITED_STATES or moved else None

    def _wait_all_healthy(self, components: list[tuple[str, ProcessInfo | None, Callable[[], bool]]]) -> None:
        """Wait for components starting side by side; the first that exits fails the start at
        once, naming its log (not after the others are up, nor at the timeout), and is stopped
        there (supervisord would go on restarting it)."""
        waiting = list(components)
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while waiting and time.monotonic() < deadline:
            for component in list(waiting):
                name, started, healthy = component
                if healthy():
                    self._progress(f"{name} healthy")
                    waiting.remove(component)
                    continue
                exited = self._exited(name, started)
                if exited is not None:
                    self.processes.stop(name)
                    raise StackError(
                        f"{name} exited during start-up"
                        + (f" with code {exited.exit_status}" if started is not None else "")
                        + f". Its log: {self.processes.log_path(name)}\n"
                        + self.processes.tail(name)
                    )
            if waiting:
                time.sleep(0.25)
        if waiting:
            name = waiting[0][0]
            raise StackError(
                f"{name} was not healthy after {self.settings.startup_timeout_s:.0f} s. "
                f"Its log: {self.processes.log_path(name)}\n{self.processes.tail(name)}"
            )

    def _ensure_work_pool(self) -> None:
        """The process pool the worker serves, plus the docker and gpu (kubernetes) pools whose
        base job templates live in infra/work-pools/ (created or updated when they changed)."""
        from modelyard.work_pools import ensure_work_pools

        with self._client() as client:
            changes = ensure_work_pools(client, self.settings)
        for pool, change in changes.items():
            if change != "unchanged":
                self._progress(f"work pool '{pool}': {change}")

    def _ensure_deployments(self) -> None:
        fingerprint_path = self.settings.run_dir / "deployments.json"
        fingerprint = self._deployments_fingerprint()
        declared = set(self.declared_deployments())
        try:
            recorded = json.loads(fingerprint_path.read_text()).get("fingerprint")
        except (FileNotFoundError, ValueError):
            recorded = None
        if recorded == fingerprint and declared <= set(self.registered_deployments()):
            self._progress(f"{len(declared)} deployments already registered")
            return
        self._progress(f"registering {len(declared)} deployments from prefect.yaml")
        env = {**self.settings.inherited_env(), **self._trusted_env()}
        result = subprocess.run(
            [_venv_bin("prefect"), "--no-prompt", "deploy", "--all"],
            cwd=self.settings.project_dir, env=env, capture_output=True, text=True, timeout=300,
        )
        log_path = self.processes.log_path("deploy")
        log_path.write_text(result.stdout + result.stderr)
        missing = declared - set(self.registered_deployments())
        if result.returncode != 0 or missing:
            raise StackError(
                f"registering deployments failed (missing: {sorted(missing)}). Its log: {log_path}\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            )
        fingerprint_path.write_text(json.dumps({"fingerprint": fingerprint, "deployments": sorted(declared)}))

    def _check_sqlite_stores(self) -> None:
        """A store path that cannot be a database file stops `up` at once: MLflow would retry
        opening it with back-off for about 100 s before exiting."""
        stores = {PREFECT_SERVER: self.settings.prefect_sqlite_path, MLFLOW_SERVER: self.settings.mlflow_sqlite_path}
        for name, path in stores.items():
            if path.exists() and not path.is_file():
                raise StackError(f"{name} cannot start: its SQLite store {path} is not a file. Move it away "
                                 f"or choose another MODELYARD_STATE_DIR.")
            if not os.access(path.parent, os.W_OK):
                raise StackError(f"{name} cannot start: {path.parent} is not writable.")

    def _ensure_postgres_databases(self) -> None:
        import psycopg2
        from psycopg2 import sql

        assert self.settings.database_url is not None
        url = self.settings.database_url.get_secret_value()
        parts = urlsplit(url)
        maintenance = urlunsplit((parts.scheme.split("+")[0], parts.netloc, "/postgres", "", ""))
        try:
            connection = psycopg2.connect(maintenance, connect_timeout=5)
        except psycopg2.Error as error:
            raise StackError(f"cannot reach PostgreSQL at {parts.hostname}:{parts.port}: {error}".strip()) from error
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for component in ("prefect", "mlflow", "mlflow_auth"):
                    name = urlsplit(self.settings.postgres_url_for(component, "postgresql")).path.lstrip("/")
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        self._progress(f"creating PostgreSQL database {name}")
                        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()

    # -- down and status ---------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop the processes this stack started — the watchdog first (it would restart what
        stops), then model servers and nginx, then the rest with supervisord; return the names
        of those that were running."""
        from deployments.targets.local import LocalTarget
        from deployments.traffic.nginx import NginxRouter

        stopped = []
        if self.processes.running():
            if self.processes.stop(WATCHDOG):
                self._progress(f"stopped {WATCHDOG}")
                stopped.append(WATCHDOG)
            for name in LocalTarget(self.settings).stop_all():
                self._progress(f"stopped {name}")
                stopped.append(name)
        router = NginxRouter(self.settings)
        if router.running():
            router.stop()
            self._progress("stopped nginx")
            stopped.append("nginx")
        for name in sorted(self.processes.shutdown(), key=lambda n: PRIORITY.get(n, 0), reverse=True):
            self._progress(f"stopped {name}")
            stopped.append(name)
        return stopped

    def _replica_restarts(self) -> dict[tuple[str, str], int]:
        """Losses of each version's replicas (model, version → count) that the watchdog detected
        and restarted since it started, from its heartbeat."""
        from deployments.watchdog import HEARTBEAT

        try:
            beat = json.loads((self.settings.run_dir / HEARTBEAT).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        restarts: dict[tuple[str, str], int] = {}
        for replica in beat.get("replicas", []):
            key = (replica["model"], replica["version"])
            restarts[key] = restarts.get(key, 0) + int(replica.get("downs", 0))
        return restarts

    def serving_status(self) -> list[ServingStatus]:
        """Each model that serves or should (an active version) or runs a version: per version its
        share of traffic, replicas alive/desired, restarts; the stable endpoint and its answer."""
        from deployments.desired_state import desired_split
        from deployments.targets.factory import make_target
        from deployments.traffic.nginx import NginxRouter
        from modelyard.resources import get_resources

        resources = get_resources(self.settings)
        serving = resources.serving
        router = NginxRouter(self.settings)
        restarts = self._replica_restarts()
        rows = []
        for model in sorted(set(serving.served_models()) | set(serving.replicated_models())):
            split = desired_split(serving.active_version(model), router.weights(model))
            records = serving.replicas(model)
            versions = []
            for version in [*split, *(v for v in records if v not in split)]:
                record = records.get(version)
                alive = 0
                if record is not None:
                    try:
                        endpoint = make_target(self.settings, record["target"]).endpoint(model, version)
                        alive = len(endpoint.replicas) if endpoint is not None else 0
                    except Exception:  # noqa: BLE001 - a target that cannot be asked has nothing alive to show
                        alive = 0
                versions.append({"version": version, "weight": split.get(version, 0), "replicas_alive": alive,
                                 "replicas_desired": len(record["replicas"]) if record else None,
                                 "restarts": restarts.get((model, version), 0),
                                 "target": record["target"] if record else None})
            url = router.url(model) if router.state(model) else None
            answer = resources.inference.version_info(url) if url and router.running() else None
            answered = answer.get("version") if answer else None
            healthy, detail = serving_health(split, versions, str(answered) if answered is not None else None)
            rows.append(ServingStatus(model, url, healthy, detail, versions))
        return rows

    def status(self) -> list[ComponentStatus]:
        rows = []
        checks = {
            PREFECT_SERVER: (self.settings.prefect_ui_url, self.prefect_healthy),
            MLFLOW_SERVER: (self.settings.mlflow_url, self.mlflow_healthy),
            PREFECT_WORKER: (f"pool '{self.settings.work_pool}'", self.worker_online),
            REGISTRY_BRIDGE: (f"http://{self.settings.host}:{self.settings.bridge_port}", self.bridge_healthy),
            WATCHDOG: ("serving replicas", self.watchdog_healthy),
        }
        supervised = self.processes.processes()
        for name in (PREFECT_SERVER, MLFLOW_SERVER, PREFECT_WORKER, REGISTRY_BRIDGE, WATCHDOG):
            url, check = checks[name]
            info = supervised.get(name)
            if info is None or not info.alive:
                rows.append(ComponentStatus(name, None, url, False, "stopped"))
                continue
            if info.state != "RUNNING" or info.pid is None:
                rows.append(ComponentStatus(name, info.pid, url, False, f"restarting ({info.state.lower()})"))
                continue
            ok = check()
            rows.append(ComponentStatus(name, info.pid, url, ok, "healthy" if ok else "running, not healthy"))
        if self.prefect_healthy():
            declared = self.declared_deployments()
            registered = set(self.registered_deployments())
            missing = [d for d in declared if d not in registered]
            rows.append(
                ComponentStatus(
                    "deployments", None, f"{self.settings.prefect_ui_url}/deployments", not missing,
                    f"{len(declared) - len(missing)}/{len(declared)} registered"
                    + (f"; missing {missing}" if missing else ""),
                )
            )
        else:
            rows.append(ComponentStatus("deployments", None, None, False, "Prefect server unreachable"))
        return rows
