"""Helpers for tests that start real stacks: free ports, settings on them, quiet specs, the
stack's processes, and a local receiver for alert notifications."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

from modelyard.cli.stack import PROCESS_COMPONENTS, Stack
from modelyard.settings import Settings


def quiet(spec: dict, keep_environments: bool = False) -> dict:
    """A test spec kept out of the monitoring loop's way: its scheduled monitor runs hourly and
    its alerts start no retrain (its window at least that hour: a shorter one is a spec error).
    Tests of the loop itself (monitoring, closed loop) set their own. Unless ``keep_environments``
    (the governance tests), it serves in dev only: a spec copied from specs/fraud.yaml would
    otherwise promote itself into staging and wait for production, serving processes and flow
    runs no test looks at."""
    monitoring = spec.get("monitoring", {})
    spec["monitoring"] = {**monitoring, "interval_s": 3600, "window_s": max(monitoring.get("window_s", 3600), 3600)}
    spec["retrain"] = {**spec.get("retrain", {}), "automatic": False}
    if not keep_environments:
        spec["environments"] = {"dev": {}}
    return spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(state_dir: Path, **overrides) -> Settings:
    return Settings(
        state_dir=state_dir,
        prefect_port=free_port(),
        mlflow_port=free_port(),
        bridge_port=free_port(),
        worker_query_seconds=1.0,
        **overrides,
    )


def prefect_client(settings: Settings):
    """A Prefect client of the stack ``settings`` describes, signed in with its API auth string."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(settings.prefect_api_url, auth_string=settings.prefect_auth())


def stack_secrets(settings: Settings) -> dict[str, str]:
    """Every secret value of a stack, by where it comes from: each generated credential (files
    of the credentials dir), the admin token, and the configured secrets (the database URL's
    password included)."""
    from urllib.parse import urlsplit

    found = {f"credentials/{path.name}": path.read_text(errors="replace").strip()
             for path in settings.credentials_dir.iterdir() if path.is_file() and not path.name.endswith(".ini")}
    found["admin_token"] = settings.admin_secret()
    for name in ("api_token", "webhook_secret", "ledger_key", "prefect_auth_string", "database_url"):
        value = getattr(settings, name)
        if value is not None:
            found[name] = value.get_secret_value()
    if settings.database_url is not None and urlsplit(settings.database_url.get_secret_value()).password:
        found["database password"] = urlsplit(settings.database_url.get_secret_value()).password
    found["prefect-auth password"] = settings.prefect_auth().split(":", 1)[-1]
    return {where: value for where, value in found.items() if len(value) >= 8}


def stack_pids(stack: Stack) -> set[int]:
    """Every live pid of the stack's processes and their descendants."""
    pids: set[int] = set()
    for name in PROCESS_COMPONENTS:
        record = stack.processes.alive(name)
        if record is None:
            continue
        proc = record.process()
        pids.add(proc.pid)
        pids.update(child.pid for child in proc.children(recursive=True))
    return pids


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.add(pid)
        except psutil.NoSuchProcess:
            pass
    return living


class AlertReceiver:
    """A local webhook receiver: what the alert notifications POST, kept in order."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
