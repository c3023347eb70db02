"""What every deployment target offers: start a version, find it, stop it.

Strategies (blue/green, canary, shadow) and the router only use this interface, so a rollout
works the same on local processes, Docker containers or Kubernetes.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from modelyard.settings import Settings

# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
MAX_SOCKET_PATH = 104


class TargetError(RuntimeError):
    """A version could not be started or did not become ready; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """A running version: its own URL (health checks, direct probes) and, for the nginx router,
    the unix socket it also listens on (``None`` where traffic goes elsewhere, e.g. Kubernetes)."""

    model: str
    version: str
    url: str
    port: int
    socket: str | None = None


def host_endpoint(settings: Settings, model: str, version: str, port: int, socket: str | None) -> Endpoint:
    """A version listening on this host (a local process or a host-network container)."""
    return Endpoint(model, version, f"http://{settings.host}:{port}", port, socket)


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_ready(endpoint: Endpoint, timeout_s: float, exited: Callable[[], bool]) -> bool:
    """Poll the version's readiness endpoint until it answers 200 (True), the process or
    container behind it has exited (False at once), or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited():
            return False
        try:
            if httpx.get(f"{endpoint.url}/v2/health/ready", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


class Target(Protocol):
    name: str

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint: ...

    def stop(self, model: str, version: str) -> bool: ...

    def endpoint(self, model: str, version: str) -> Endpoint | None: ...


def model_key(model: str) -> str:
    """A short, filesystem-safe key for a model name (socket paths must stay short)."""
    return hashlib.sha1(model.encode()).hexdigest()[:10]


def socket_path(settings: Settings, model: str, version: str) -> Path:
    """Where a version's server listens for the router; checked against the AF_UNIX limit."""
    path = settings.state_dir / "sock" / f"{model_key(model)}-v{version}.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        raise TargetError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes: use a shorter MODELYARD_STATE_DIR")
    return path
