"""The registry → Prefect event bridge.

MLflow registry webhooks are fire-and-forget (a few retries, never replayed), and Prefect OSS
has no inbound webhooks. This small ASGI service receives MLflow's deliveries, verifies each
one — HMAC-SHA256 signature in constant time, a timestamp window against replays, delivery ids
remembered (on disk, so a restart does not reopen the window) against duplicates — and emits a
Prefect event that deployment triggers can match. A bad delivery gets a 4xx and emits nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.catalog import (WEBHOOK_EVENTS, WEBHOOK_PATH, Action, registered_model_resource_id,
                               registry_event, version_resource_id)
from modelyard.settings import Settings

SIGNATURE_HEADER = "x-mlflow-signature"
DELIVERY_HEADER = "x-mlflow-delivery-id"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
MAX_AGE_S = 300


class WebhookRejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    timestamp: int
    entity: str
    action: str
    data: dict[str, Any]


def sign(secret: str, delivery_id: str, timestamp: str, payload: str) -> str:
    """MLflow's signature: ``v1,`` + base64 HMAC-SHA256 of ``delivery_id.timestamp.payload``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{payload}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class SeenDeliveries:
    """Delivery ids accepted within the replay window, kept in SQLite across restarts."""

    def __init__(self, path: Path, window_s: int = MAX_AGE_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (delivery_id TEXT PRIMARY KEY, at REAL NOT NULL)")
        self._lock = threading.Lock()
        self.window_s = window_s

    def claim(self, delivery_id: str, now: float) -> bool:
        """Remember ``delivery_id``; False if it was already seen (a duplicate)."""
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE at < ?", (now - 2 * self.window_s,))
            try:
                self._db.execute("INSERT INTO seen (delivery_id, at) VALUES (?, ?)", (delivery_id, now))
            except sqlite3.IntegrityError:
                return False
            return True


class WebhookVerifier:
    """Checks signature, timestamp and uniqueness of one MLflow webhook delivery."""

    def __init__(self, secret: str, seen: SeenDeliveries, max_age_s: int = MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("the webhook secret must not be empty")
        self.secret, self.seen, self.max_age_s, self.clock = secret, seen, max_age_s, clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        signature = headers.get(SIGNATURE_HEADER, "")
        delivery_id = headers.get(DELIVERY_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        if not signature or not delivery_id or not timestamp:
            raise WebhookRejected(401, "missing signature, delivery id or timestamp header")
        try:
            payload_text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected(400, "the body is not UTF-8") from None
        expected = sign(self.secret, delivery_id, timestamp, payload_text)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise WebhookRejected(401, "bad signature")
        if not timestamp.isdigit():
            raise WebhookRejected(401, "the timestamp is not a unix time")
        now = self.clock()
        if abs(now - int(timestamp)) > self.max_age_s:
            raise WebhookRejected(401, f"the delivery is {int(now - int(timestamp))} s old: replays older "
                                       f"than {self.max_age_s} s are refused")
        try:
            payload = json.loads(payload_text)
            entity, action, data = payload["entity"], payload["action"], payload["data"]
        except (ValueError, KeyError, TypeError):
            raise WebhookRejected(400, "the body is not an MLflow webhook payload") from None
        if f"{entity}.{action}" not in WEBHOOK_EVENTS:
            raise WebhookRejected(400, f"{entity}.{action} is not a registry event the bridge forwards")
        if not self.seen.claim(delivery_id, now):
            raise WebhookRejected(409, f"delivery {delivery_id} was already received")
        return Delivery(delivery_id, int(timestamp), str(entity), str(action), dict(data))


def prefect_event(delivery: Delivery) -> dict[str, Any]:
    """The Prefect event for a registry change: resources name the model and the version."""
    data = delivery.data
    name, version = str(data.get("name", "")), str(data.get("version", ""))
    resource = {"prefect.resource.id": version_resource_id(name, version),
                "prefect.resource.name": f"{name} v{version}",
                "mlflow.model": name, "mlflow.version": version}
    if "alias" in data:
        resource["mlflow.alias"] = str(data["alias"])
    return {
        "event": str(registry_event(delivery.entity, delivery.action)),
        "resource": resource,
        "related": [{"prefect.resource.id": registered_model_resource_id(name),
                     "prefect.resource.role": "model", "prefect.resource.name": name}],
        "payload": {**data, "delivery_id": delivery.delivery_id, "mlflow_timestamp": delivery.timestamp},
    }


class BridgeApp:
    """ASGI app: POST /webhooks/mlflow → verified → Prefect event; GET /health."""

    def __init__(self, verifier: WebhookVerifier, emit: Callable[[dict[str, Any]], None],
                 audit: Callable[[Action, str, dict], None], max_body: int = 1 << 20) -> None:
        self.verifier, self.emit, self.audit, self.max_body = verifier, emit, audit, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/health":
            await _respond(send, 200, {"status": "ok"})
            return
        if (scope["method"], scope["path"]) != ("POST", WEBHOOK_PATH):
            await _respond(send, 404, {"error": f"no route {scope['method']} {scope['path']}"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _respond(send, 413, {"error": "body too large"})
                return
            body.append(chunk)
            if not message.get("more_body"):
                break
        try:
            delivery = self.verifier.verify(headers, b"".join(body))
        except WebhookRejected as rejected:
            self.audit(Action.REGISTRY_WEBHOOK_REJECTED, "registry-bridge",
                       {"status": rejected.status, "reason": rejected.reason,
                        "delivery_id": headers.get(DELIVERY_HEADER, "")[:64]})
            await _respond(send, rejected.status, {"error": rejected.reason})
            return
        event = prefect_event(delivery)
        self.emit(event)
        self.audit(Action.REGISTRY_EVENT_EMITTED, event["resource"]["prefect.resource.id"],
                   {"event": event["event"], "delivery_id": delivery.delivery_id, **delivery.data})
        await _respond(send, 202, {"emitted": event["event"], "resource": event["resource"]["prefect.resource.id"]})


async def _respond(send, status: int, payload: dict) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def emit_prefect_event(event: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event["event"], resource=event["resource"], related=event["related"], payload=event["payload"])


def serve_bridge(settings: Settings) -> None:
    """Run the bridge for the stack ``settings`` describes (started by `modelyard stack up`)."""
    import uvicorn

    from modelyard.ledger import ledger_from_settings
    from modelyard.webhooks import webhook_secret

    ledger = ledger_from_settings(settings)
    verifier = WebhookVerifier(webhook_secret(settings), SeenDeliveries(settings.run_dir / "bridge-deliveries.sqlite"))
    app = BridgeApp(verifier, emit_prefect_event, lambda action, subject, details: ledger.append(
        "registry-bridge", str(action), subject, details))
    uvicorn.run(app, host=settings.host, port=settings.bridge_port, log_level="warning", access_log=False)


if __name__ == "__main__":
    from modelyard.settings import get_settings

    serve_bridge(get_settings())
