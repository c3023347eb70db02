"""Fixtures shared by every kind of test (tests/unit, tests/integration, tests/e2e): the real
stacks, started once per session on free loopback ports. Unit tests use none of them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modelyard.cli.stack import Stack
from tests.support.stacks import AlertReceiver, make_settings


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
    """Run flows in this process against the session stack: MODELYARD_*, Prefect's API URL and
    auth string, and MLflow's service identity."""
    from prefect.settings import temporary_settings

    env = {**sqlite_stack.settings.child_env(), **sqlite_stack.settings.prefect_client_env()}
    env.pop("PREFECT_HOME", None)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with temporary_settings(sqlite_stack.settings.prefect_client_settings()):
            yield sqlite_stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
