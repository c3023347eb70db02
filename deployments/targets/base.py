"""What every deployment target offers: start a version (as N replicas), find its ready
replicas, stop it.

Strategies (blue/green, canary, shadow) and the router only use this interface, so a rollout
works the same on local processes, Docker containers or Kubernetes.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from modelyard.names import check_model_name, check_version
from modelyard.processes import MAX_SOCKET_PATH
from modelyard.settings import Settings

if TYPE_CHECKING:  # the resources package imports MLflow: seconds that `stack down` need not pay
    from modelyard.resources.serving_state import ReplicaRecord

READY_PROBE_TIMEOUT_S = 0.5


class TargetError(RuntimeError):
    """A version could not be started or did not become ready; the message says why."""


@dataclass(frozen=True)
class Replica:
    """One process (or container) of a version: its own URL (health checks, direct probes) and,
    for the nginx router, the unix socket it also listens on (``None`` where traffic goes
    elsewhere, e.g. Kubernetes)."""

    index: int
    url: str
    port: int
    socket: str | None = None
    handle: str = ""  # the target's name for it: a supervisord program, a container

    def record(self) -> ReplicaRecord:
        return {"index": self.index, "url": self.url, "port": self.port, "socket": self.socket, "handle": self.handle}

    @classmethod
    def of(cls, record: ReplicaRecord) -> Replica:
        return cls(record["index"], record["url"], record["port"], record["socket"], record["handle"])


@dataclass(frozen=True)
class Endpoint:
    """A running version and its ready replicas (at least one). ``url``, ``port`` and ``socket``
    are the first replica's: enough for one direct probe."""

    model: str
    version: str
    replicas: tuple[Replica, ...]

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError(f"{self.model} v{self.version}: an endpoint has at least one replica")

    @property
    def url(self) -> str:
        return self.replicas[0].url

    @property
    def port(self) -> int:
        return self.replicas[0].port

    @property
    def socket(self) -> str | None:
        return self.replicas[0].socket

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]


def host_replica(settings: Settings, index: int, port: int, socket: str | None, handle: str) -> Replica:
    """A replica listening on this host (a local process or a host-network container)."""
    return Replica(index, f"http://{settings.host}:{port}", port, socket, handle)


def is_ready(url: str, timeout_s: float = READY_PROBE_TIMEOUT_S) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def ready_endpoint(model: str, version: str, replicas: Iterable[Replica]) -> Endpoint | None:
    """The version's endpoint with those of ``replicas`` that answer their readiness check now
    (None if none does)."""
    ready = tuple(replica for replica in replicas if is_ready(replica.url))
    return Endpoint(model, version, ready) if ready else None


# What a model server reads from its settings, passed to it explicitly: its environment is built
# here, never inherited from a process that holds other secrets.
SERVING_SETTINGS = ("serve_max_batch", "serve_max_wait_ms", "serve_max_body_bytes", "serve_max_rows",
                    "prediction_log_sample_rate", "prediction_log_queue", "prediction_log_queue_bytes")


def replica_environment(settings: Settings) -> dict[str, str]:
    """A model server's whole environment: ``Settings.replica_env()`` (where the stack is, and the
    server's own inference and admin tokens: never the database URL, the webhook secret, a
    registry credential or a ledger key), its serving settings, where the trusted model keys are,
    and no prediction log retention: a server never prunes its log, because that is recorded in
    the ledger, which only the host writes (``prune_logs``)."""
    from modelyard.signing import trusted_keys_dir

    env = settings.replica_env()
    for name in SERVING_SETTINGS:
        env[f"MODELYARD_{name.upper()}"] = str(getattr(settings, name))
    env["MODELYARD_TRUSTED_MODEL_KEYS_DIR"] = str(trusted_keys_dir(settings))
    env["MODELYARD_PREDICTION_LOG_RETENTION_DAYS"] = "0"
    return env


def prune_logs(settings: Settings, model: str, actor: str) -> dict[str, dict]:
    """The prediction log retention of a model whose servers never prune (``replica_environment``):
    partitions older than the host's ``prediction_log_retention_days`` are recorded in the ledger
    by ``actor``, then deleted. Targets run it at every start; what was deleted, by version."""
    from datetime import UTC, datetime, timedelta

    from deployments.server.main import record_prune
    from deployments.server.prediction_log import prune_partitions

    days = settings.prediction_log_retention_days
    if days <= 0:
        return {}
    return prune_partitions(settings.prediction_log_dir, check_model_name(model),
                            datetime.now(UTC) - timedelta(days=days), record_prune(settings, model, actor))


def desired_replicas(settings: Settings, model: str, version: str) -> int:
    """How many replicas the version's own spec asks for (``serving.replicas``; 1 without a spec)."""
    from modelyard.resources import get_resources
    from modelyard.resources.registry import version_spec

    try:
        spec = version_spec(get_resources(settings).registry, model, version)
    except Exception as error:  # noqa: BLE001 - the registry's own errors: say what was being read
        raise TargetError(f"reading serving.replicas of {model} v{version} from its spec failed: {error}") from error
    return spec.serving.replicas if spec is not None else 1


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_ready(replicas: Iterable[Replica], timeout_s: float, exited: Callable[[Replica], bool]) -> Replica | None:
    """Poll every replica's readiness endpoint until all answer 200 (None), one of them has
    exited (that one, at once), or ``timeout_s`` passes (the first one still not ready)."""
    waiting = list(replicas)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for replica in list(waiting):
            if exited(replica):
                return replica
            if is_ready(replica.url, timeout_s=1.0):
                waiting.remove(replica)
        if not waiting:
            return None
        if time.monotonic() >= deadline:
            return waiting[0]
        time.sleep(0.2)
    return None


class Target(Protocol):
    name: str

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint: ...

    def stop(self, model: str, version: str) -> bool: ...

    def endpoint(self, model: str, version: str) -> Endpoint | None: ...


def model_key(model: str) -> str:
    """A short, filesystem-safe key for a model name (socket paths must stay short)."""
    return hashlib.sha1(model.encode()).hexdigest()[:10]


def checked(model: str, version: str) -> tuple[str, str]:
    """``(model, version)`` if both match modelyard's one pattern (``modelyard.names``), else
    InvalidName: every target checks what it was handed before a name reaches a path, a program,
    an image or an object name, whichever entry point it came through."""
    return check_model_name(model), check_version(version)


def socket_dir(settings: Settings) -> Path:
    """Where replicas' unix sockets live (the router's nginx workers must be able to reach it)."""
    return settings.state_dir / "sock"


def socket_path(settings: Settings, model: str, version: str, replica: int = 0) -> Path:
    """Where a replica of a version listens for the router; checked against the AF_UNIX limit."""
    model, version = checked(model, version)
    path = socket_dir(settings) / f"{model_key(model)}-v{version}-r{int(replica)}.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        raise TargetError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes: use a shorter MODELYARD_STATE_DIR")
    return path
