"""MLflow webhook deliveries as MLflow's own delivery code signs them, and the stack's bridge run in
the test's process with an emit that fails, for the bridge's and the reconciler's tests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.webhooks.delivery import _generate_hmac_signature

from modelyard.catalog import WEBHOOK_PATH


def signed_delivery(secret: str, age_s: int = 0, delivery_id: str | None = None, data: dict | None = None,
                    entity: str = "model_version_alias", action: str = "created") -> tuple[dict[str, str], bytes]:
    """Headers and body of one delivery, signed with ``secret``, stamped ``age_s`` seconds ago."""
    payload = json.dumps({"entity": entity, "action": action, "timestamp": "now",
                          "data": data or {"name": "fraud", "alias": "champion", "version": "3"}})
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) - age_s)
    headers = {"x-mlflow-signature": _generate_hmac_signature(secret, delivery_id, timestamp, payload),
               "x-mlflow-delivery-id": delivery_id, "x-mlflow-timestamp": timestamp,
               "content-type": "application/json"}
    return headers, payload.encode()


# --- a bridge in this process, for the tests that make its emit fail ---------------------------

MLFLOW_WEBHOOK_RETRIES = 3  # MLflow's MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES default (the stack keeps it)


def refused_emit(event: dict) -> None:
    """The real emit, sent to a Prefect API address nobody listens on: refused, as when Prefect is down."""
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.bridge import emit_prefect_event

    with socket.socket() as sock:  # a port that was free a moment ago: connecting to it is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        emit_prefect_event(event, timeout_s=5)


class RefusedFirst:
    """Emits refused (``refused_emit``) for the first ``times`` calls, then the real emit."""

    def __init__(self, times: int = 1) -> None:
        self.times, self.calls = times, 0

    def __call__(self, event: dict) -> None:
        from deployments.bridge import emit_prefect_event

        self.calls += 1
        (refused_emit if self.calls <= self.times else emit_prefect_event)(event)


@dataclass(frozen=True)
class Attempt:
    """One POST the bridge answered: which delivery, of what, the answer, and whether the
    delivery was recorded as done right after it."""

    delivery_id: str
    event: str
    model: str
    alias: str | None
    status: int
    done: bool


class InProcessBridge:
    """The stack's own bridge (``make_bridge``: its secret, deliveries, ledger) with the emit the
    test gives, served on the stack's bridge port from a thread of this process, recording every
    answer. Stop the stack's bridge first; bring it back with ``Stack.up()`` afterwards."""

    def __init__(self, settings, emit) -> None:
        from deployments.bridge import make_bridge

        self.settings, self.app = settings, make_bridge(settings, emit)
        self.attempts: list[Attempt] = []

    async def _recording(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH:
            await self.app(scope, receive, send)
            return
        body, status = [], {}

        async def receiving():
            message = await receive()
            body.append(message.get("body", b""))
            return message

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receiving, sending)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        delivery_id = headers.get("x-mlflow-delivery-id", "")
        try:
            payload = json.loads(b"".join(body))
            event, model = f"{payload['entity']}.{payload['action']}", str(payload["data"].get("name"))
            alias = payload["data"].get("alias")
        except (ValueError, KeyError, TypeError, AttributeError):
            event, model, alias = "", "", None
        self.attempts.append(Attempt(delivery_id, event, model, alias, status.get("code", 0),
                                     self.app.verifier.seen.done(delivery_id)))

    def __enter__(self) -> InProcessBridge:
        import contextvars
        import threading

        import httpx
        import uvicorn

        from tests.support.waits import wait_until

        config = uvicorn.Config(self._recording, host=self.settings.host, port=self.settings.bridge_port,
                                log_level="warning", access_log=False, lifespan="on", interface="asgi3")
        self._server = uvicorn.Server(config)
        # The thread carries the test's Prefect settings (the stack's API URL) in its context.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._server.run,), daemon=True)
        self._thread.start()
        url = f"http://{self.settings.host}:{self.settings.bridge_port}/health"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the in-process bridge answering /health")
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def of(self, event: str, model: str, alias: str | None = None) -> list[Attempt]:
        return [a for a in self.attempts
                if a.event == event and a.model == model and (alias is None or a.alias == alias)]


@contextmanager
def bridge_replaced(stack, emit) -> Iterator[InProcessBridge]:
    """The stack's bridge stopped and served from this process with ``emit`` instead; the stack's
    own bridge started again afterwards."""
    from modelyard.cli.stack import REGISTRY_BRIDGE
    from tests.support.waits import wait_until

    assert stack.processes.stop(REGISTRY_BRIDGE)
    try:
        with InProcessBridge(stack.settings, emit) as bridge:
            yield bridge
    finally:
        stack.processes.start_process(REGISTRY_BRIDGE)
        wait_until(stack.bridge_healthy, 60, "the stack's bridge back")
