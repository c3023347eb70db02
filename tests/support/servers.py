"""Starting real inference server processes for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.stacks import free_port


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(model_uri: str, settings_env: dict[str, str], log_path: Path, **overrides: str) -> ServerProcess:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), **settings_env, **overrides}
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "serve", model_uri, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return ServerProcess(process, url, log_path)
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server not ready in time: {log_path.read_text()[-3000:]}")
