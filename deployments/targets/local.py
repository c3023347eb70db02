"""The ``local`` target: each model version is a supervised `modelyard serve` process on a
loopback port, started, health-checked and stopped like the stack's own components."""

from __future__ import annotations

import json
import sys
from pathlib import Path


from deployments.targets.base import Endpoint, TargetError, free_port, host_endpoint, socket_path, wait_ready
from modelyard.processes import ProcessTable
from modelyard.settings import Settings

__all__ = ["Endpoint", "LocalTarget", "TargetError"]


class LocalTarget:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "serving"
        self.processes = ProcessTable(self.root / "run", settings.logs_dir)

    @staticmethod
    def process_name(model: str, version: str) -> str:
        return f"serve-{model}-v{version}"

    def _ports_path(self, model: str) -> Path:
        return self.root / f"{model}.ports.json"

    def _ports(self, model: str) -> dict[str, int]:
        try:
            return json.loads(self._ports_path(model).read_text())
        except FileNotFoundError:
            return {}

    def endpoint(self, model: str, version: str) -> Endpoint | None:
        """The running endpoint of a version, if its process is alive."""
        port = self._ports(model).get(version)
        if port is None or self.processes.alive(self.process_name(model, version)) is None:
            return None
        return host_endpoint(self.settings, model, version, port, str(socket_path(self.settings, model, version)))

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint:
        """Start ``models:/model/version`` (integrity-checked by the server) and wait until ready."""
        running = self.endpoint(model, version)
        if running is not None:
            return running
        port = free_port(self.settings.host)
        uds = socket_path(self.settings, model, version)
        name = self.process_name(model, version)
        env = {**self.settings.child_env(), **self.settings.prefect_client_env(), "PATH": str(Path(sys.executable).parent)}
        record = self.processes.start(
            name, [sys.executable, "-m", "modelyard.cli", "serve", f"models:/{model}/{version}", "--port", str(port),
             "--uds", str(uds)],
            env, self.settings.project_dir,
        )
        ports = self._ports(model) | {version: port}
        self.root.mkdir(parents=True, exist_ok=True)
        self._ports_path(model).write_text(json.dumps(ports))
        endpoint = host_endpoint(self.settings, model, version, port, str(uds))
        if wait_ready(endpoint, timeout_s, exited=lambda: record.process() is None):
            return endpoint
        if record.process() is None:
            raise TargetError(f"{model} v{version} exited during start-up: {self.processes.tail(name, 5)}")
        self.stop(model, version)
        raise TargetError(f"{model} v{version} was not ready after {timeout_s:.0f} s; log {self.processes.log_path(name)}")

    def stop(self, model: str, version: str) -> bool:
        return self.processes.stop(self.process_name(model, version))
