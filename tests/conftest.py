"""Fixtures that start real stacks (Prefect, MLflow, a worker) on free loopback ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from modelyard.settings import Settings
from modelyard.cli.stack import PROCESS_COMPONENTS, Stack


def quiet(spec: dict) -> dict:
    """A test spec kept out of the monitoring loop's way: its scheduled monitor runs hourly and
    its alerts start no retrain. Tests of the loop itself (test_monitoring.py) set their own."""
    spec["monitoring"] = {**spec.get("monitoring", {}), "interval_s": 3600}
    spec["retrain"] = {**spec.get("retrain", {}), "automatic": False}
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
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


@pytest.fixture(scope="session")
def alert_receiver() -> Iterator[AlertReceiver]:
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory, alert_receiver: AlertReceiver) -> Iterator[Stack]:
    """A real embedded stack on SQLite, shared by the tests of one session; its alert
    notifications go to a local receiver."""
    # Deploys started by registry events serve without a token here (the demo's choice).
    stack = Stack(make_settings(tmp_path_factory.mktemp("stack-sqlite") / "state", serve_anonymous=True,
                                notify_url=alert_receiver.url))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("MODELYARD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "MODELYARD_TEST_POSTGRES_URL is not set: run the tests with `make test`, which "
            "starts PostgreSQL (infra/scripts/start-postgres.sh) and sets it."
        )
    return url


@pytest.fixture(scope="session")
def stack_env(sqlite_stack: Stack) -> Iterator[Stack]:
    """Run flows in this process against the session stack: MODELYARD_* and Prefect's API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**sqlite_stack.settings.child_env(), **sqlite_stack.settings.prefect_client_env()}
    env.pop("PREFECT_HOME", None)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with temporary_settings({PREFECT_API_URL: sqlite_stack.settings.prefect_api_url}):
            yield sqlite_stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
