"""The registry → Prefect event bridge.

MLflow registry webhooks are fire-and-forget (a few retries, never replayed), and Prefect OSS
has no inbound webhooks. This small ASGI service receives MLflow's deliveries, verifies each
one — HMAC-SHA256 signature in constant time, a timestamp window against replays, delivery ids
remembered (on disk, so a restart does not reopen the window) against duplicates, model name
and version against ``modelyard.names`` — and emits a Prefect event that deployment triggers
can match.

A delivery counts as done only once Prefect accepted its event: a failed emit answers 503, so
MLflow's own retries (429/5xx, same delivery id) bring it again, and the reconciler recovers it
if they are spent. A bad delivery gets a 4xx and emits nothing. Posts that cannot be
attributed to MLflow (no valid signature, stale, duplicate) are counted by reason — never one
ledger record each — summarised in the ledger at most once per interval, and answered 429 past
a burst.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.catalog import (WEBHOOK_EVENTS, WEBHOOK_PATH, Action, registered_model_resource_id,
                               registry_event, version_resource_id)
from modelyard.names import InvalidName, check_model_name, check_version
from modelyard.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-mlflow-signature"
DELIVERY_HEADER = "x-mlflow-delivery-id"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
MAX_AGE_S = 300
BRIDGE = "registry-bridge"  # the bridge as the ledger names it (actor and subject)
METRICS_PATH = "/metrics"  # the KPIs in the Prometheus text format, for a scraper with the kpi token
KPI_TOKEN = "kpi-token"  # its credential (credentials dir, 0600): `Authorization: Bearer <token>`

EMIT_TIMEOUT_S = 10.0  # well inside MLflow's 30 s request timeout, so a slow Prefect answers 503, not a hang
IN_FLIGHT_TIMEOUT_S = 60.0  # an emit marked in progress longer than this is taken as abandoned
RETRY_AFTER_S = 1  # what a 503 or 429 asks MLflow to wait before its retry
SUMMARY_INTERVAL_S = 60.0  # at most one ledger summary of refused posts per interval
REJECTION_BURST = 20  # refused posts answered with their own 4xx before 429s start
REJECTION_REFILL_PER_S = 1.0

# What each registry event must carry, checked against modelyard.names before it goes anywhere.
EVENT_FIELDS = {"model_version.created": ("name", "version"),
                "model_version_alias.created": ("name", "alias", "version"),
                "model_version_alias.deleted": ("name", "alias")}
_EVENT_ID_NAMESPACE = uuid.UUID("3f1c1f3e-8d0a-4b1e-9d7c-6a2b5e0c9f41")


class WebhookRejected(Exception):
    """A refused post: its HTTP status, a reason for the caller, a short ``code`` it is counted
    under, and whether it is ``attributed`` — signed by MLflow, fresh and never seen — so that it
    is recorded on its own (once: its delivery id is remembered) rather than only counted."""

    def __init__(self, status: int, reason: str, code: str, attributed: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.code, self.attributed = status, reason, code, attributed


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    timestamp: int
    entity: str
    action: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None


def sign(secret: str, delivery_id: str, timestamp: str, payload: str) -> str:
    """MLflow's signature: ``v1,`` + base64 HMAC-SHA256 of ``delivery_id.timestamp.payload``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{payload}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class SeenDeliveries:
    """Delivery ids handled within the replay window, kept in SQLite across restarts, and the ids
    being emitted right now (in memory, with a timeout: a restart mid-emit lets MLflow's retry
    through, and Prefect drops the second copy by its event id)."""

    def __init__(self, path: Path, window_s: int = MAX_AGE_S, in_flight_timeout_s: float = IN_FLIGHT_TIMEOUT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (delivery_id TEXT PRIMARY KEY, at REAL NOT NULL)")
        self._lock = threading.Lock()
        self._in_flight: dict[str, float] = {}
        self.window_s, self.in_flight_timeout_s = window_s, in_flight_timeout_s

    def done(self, delivery_id: str) -> bool:
        """Whether ``delivery_id`` was handled (emitted, or refused on its own record)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE delivery_id = ?", (delivery_id,)).fetchone() is not None

    def in_flight(self, delivery_id: str, now: float) -> bool:
        with self._lock:
            return now - self._in_flight.get(delivery_id, -math.inf) < self.in_flight_timeout_s

    def begin(self, delivery_id: str, now: float) -> bool:
        """Mark ``delivery_id`` as being emitted; False if it is done or another emit of it is under way."""
        with self._lock:
            if now - self._in_flight.get(delivery_id, -math.inf) < self.in_flight_timeout_s:
                return False
            if self._db.execute("SELECT 1 FROM seen WHERE delivery_id = ?", (delivery_id,)).fetchone():
                return False
            self._in_flight[delivery_id] = now
            return True

    def finish(self, delivery_id: str, now: float) -> bool:
        """Remember ``delivery_id`` as done (its event accepted, or its refusal recorded); False if it already was."""
        with self._lock:
            self._in_flight.pop(delivery_id, None)
            self._db.execute("DELETE FROM seen WHERE at < ?", (now - 2 * self.window_s,))
            try:
                self._db.execute("INSERT INTO seen (delivery_id, at) VALUES (?, ?)", (delivery_id, now))
            except sqlite3.IntegrityError:
                return False
            return True

    def abandon(self, delivery_id: str) -> None:
        """Its emit failed: not done, so the next delivery of the same id is emitted again."""
        with self._lock:
            self._in_flight.pop(delivery_id, None)

    def in_flight_count(self, now: float) -> int:
        with self._lock:
            return sum(1 for at in self._in_flight.values() if now - at < self.in_flight_timeout_s)


class WebhookVerifier:
    """Checks signature, timestamp, uniqueness and names of one MLflow webhook delivery. It
    decides; it records nothing (the bridge marks a delivery done once its event is accepted)."""

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
            raise WebhookRejected(401, "missing signature, delivery id or timestamp header", "missing_headers")
        try:
            payload_text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected(400, "the body is not UTF-8", "not_utf8") from None
        expected = sign(self.secret, delivery_id, timestamp, payload_text)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise WebhookRejected(401, "bad signature", "bad_signature")
        if not timestamp.isdigit():
            raise WebhookRejected(401, "the timestamp is not a unix time", "bad_timestamp")
        now = self.clock()
        if abs(now - int(timestamp)) > self.max_age_s:
            raise WebhookRejected(401, f"the delivery is {int(now - int(timestamp))} s old: replays older "
                                       f"than {self.max_age_s} s are refused", "stale")
        if self.seen.done(delivery_id):
            raise WebhookRejected(409, f"delivery {delivery_id[:64]} was already received", "duplicate")
        # Signed, fresh and new: what follows is MLflow's own word, refused on its own record.
        try:
            payload = json.loads(payload_text)
            entity, action, data = payload["entity"], payload["action"], payload["data"]
            if not isinstance(data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise WebhookRejected(400, "the body is not an MLflow webhook payload", "malformed", True) from None
        event = f"{entity}.{action}"
        if event not in WEBHOOK_EVENTS:
            raise WebhookRejected(400, f"{event[:80]} is not a registry event the bridge forwards",
                                  "unsupported_event", True)
        try:
            for name in EVENT_FIELDS[event]:
                value = data.get(name)
                check_version(value, f"data.{name}") if name == "version" else check_model_name(value, f"data.{name}")
        except InvalidName as invalid:
            raise WebhookRejected(400, str(invalid)[:300], "invalid_name", True) from None
        return Delivery(delivery_id, int(timestamp), str(entity), str(action), dict(data))


def event_id(delivery_id: str) -> str:
    """The Prefect event id of a delivery: the same for every retry of it, so that Prefect's
    triggers act on it once even if a retry emits it again."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, delivery_id))


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
        "id": event_id(delivery.delivery_id),
        "event": str(registry_event(delivery.entity, delivery.action)),
        "resource": resource,
        "related": [{"prefect.resource.id": registered_model_resource_id(name),
                     "prefect.resource.role": "model", "prefect.resource.name": name}],
        "payload": {**data, "delivery_id": delivery.delivery_id, "mlflow_timestamp": delivery.timestamp},
    }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


@dataclass
class Rejections:
    """Refused posts that cannot be attributed to MLflow, counted by reason (``GET /health``).

    The ledger gets one summary record (counts by reason, first and last time) at most once per
    ``interval_s`` — the first refusal after a quiet interval at once, the rest when the interval
    has passed (or at shutdown) — never one record per post. A token bucket (``burst``, refilled
    at ``per_s``; the server is loopback-only, so one bucket for all sources) answers 429 past a
    burst. Only refusals draw on it: a delivery MLflow signed always gets through.
    """

    record: Callable[[dict[str, Any]], None]
    interval_s: float = SUMMARY_INTERVAL_S
    burst: int = REJECTION_BURST
    per_s: float = REJECTION_REFILL_PER_S
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    totals: Counter = field(default_factory=Counter)
    rate_limited: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Counter = Counter()
        self._pending_limited = 0
        self._first = self._last = None
        self._last_summary = -math.inf
        self._tokens, self._refilled = float(self.burst), self.clock()

    def refuse(self, code: str) -> bool:
        """Count one refusal; True while within the burst, False once rate limited (answer 429)."""
        with self._lock:
            now, at = self.clock(), self.wall()
            self.totals[code] += 1
            self._pending[code] += 1
            self._first = at if self._first is None else self._first
            self._last = at
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.per_s)
            self._refilled = now
            allowed = self._tokens >= 1
            if allowed:
                self._tokens -= 1
            else:
                self.rate_limited += 1
                self._pending_limited += 1
            summary = self._take(now) if now - self._last_summary >= self.interval_s else None
        self._write(summary)
        return allowed

    def count(self, code: str) -> None:
        """Count a refusal recorded on its own (a delivery MLflow signed): in the totals only."""
        with self._lock:
            self.totals[code] += 1

    def flush(self, force: bool = False) -> None:
        """Write what is pending once the interval since the last summary has passed (or now, ``force``)."""
        with self._lock:
            now = self.clock()
            due = self._pending and (force or now - self._last_summary >= self.interval_s)
            summary = self._take(now) if due else None
        self._write(summary)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"rejected": dict(self.totals), "rate_limited": self.rate_limited}

    def _take(self, now: float) -> dict[str, Any]:
        summary = {"counts": dict(self._pending), "total": sum(self._pending.values()),
                   "rate_limited": self._pending_limited, "first": _iso(self._first), "last": _iso(self._last),
                   "interval_s": self.interval_s}
        self._pending, self._pending_limited, self._first, self._last = Counter(), 0, None, None
        self._last_summary = now
        return summary

    def _write(self, summary: dict[str, Any] | None) -> None:
        if summary is None:
            return
        try:
            self.record(summary)
        except Exception as error:  # noqa: BLE001 - a ledger that cannot take the summary must not stop the bridge
            log.error("the summary of %d refused post(s) was not recorded: %s", summary["total"], error)


class BridgeApp:
    """ASGI app: POST /webhooks/mlflow → verified → Prefect event; GET /health (with counters);
    GET /metrics (the KPIs, with the kpi token)."""

    def __init__(self, verifier: WebhookVerifier, emit: Callable[[dict[str, Any]], None],
                 audit: Callable[[Action, str, dict], None], max_body: int = 1 << 20,
                 rejections: Rejections | None = None, metrics: Callable[[], bytes] | None = None,
                 metrics_token: str | None = None) -> None:
        self.verifier, self.emit, self.audit, self.max_body = verifier, emit, audit, max_body
        self.metrics, self.metrics_token = metrics, metrics_token
        self.rejections = rejections or Rejections(lambda summary: audit(Action.WEBHOOK_REJECTED, BRIDGE, summary))
        self.counts: Counter = Counter()
        self._counts_lock = threading.Lock()

    # --- the delivery path, synchronous (the ASGI wrapper runs ``forward`` in a thread) --------
    def deliver(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """One POST to the webhook path, start to end."""
        checked = self.check(headers, body)
        return checked if isinstance(checked, Answer) else self.forward(checked)

    def check(self, headers: Mapping[str, str], body: bytes) -> Delivery | Answer:
        """The verified delivery, or the answer refusing it (counted or recorded, see ``refused``)."""
        try:
            return self.verifier.verify(headers, body)
        except WebhookRejected as rejected:
            return self.refused(rejected, headers.get(DELIVERY_HEADER, ""))

    def forward(self, delivery: Delivery) -> Answer:
        """Emit the delivery's event; mark it done only once Prefect accepted it."""
        seen = self.verifier.seen
        if not seen.begin(delivery.delivery_id, self.verifier.clock()):
            if seen.done(delivery.delivery_id):
                return self.refused(WebhookRejected(409, f"delivery {delivery.delivery_id[:64]} was already "
                                                         "received", "duplicate"), delivery.delivery_id)
            return self.refused(WebhookRejected(503, f"delivery {delivery.delivery_id[:64]} is being emitted; "
                                                     "retry", "in_progress"), delivery.delivery_id)
        event = prefect_event(delivery)
        try:
            self.emit(event)
        except Exception as error:  # noqa: BLE001 - any failure of the emit: not done, MLflow retries
            seen.abandon(delivery.delivery_id)
            self._count("emit_failed")
            log.warning("delivery %s: Prefect did not accept %s (%s: %s); answered 503 for MLflow to retry",
                        delivery.delivery_id[:64], event["event"], type(error).__name__, str(error)[:200])
            return Answer(503, {"error": f"Prefect did not accept the event ({type(error).__name__}); "
                                         "retry this delivery"}, RETRY_AFTER_S)
        seen.finish(delivery.delivery_id, self.verifier.clock())
        self._count("emitted")
        try:
            self.audit(Action.REGISTRY_EVENT_EMITTED, event["resource"]["prefect.resource.id"],
                       {"event": event["event"], "delivery_id": delivery.delivery_id, **delivery.data})
        except Exception as error:  # noqa: BLE001 - the event is in Prefect; say the record is missing
            log.error("delivery %s emitted but not recorded in the ledger: %s", delivery.delivery_id[:64], error)
        return Answer(202, {"emitted": event["event"], "resource": event["resource"]["prefect.resource.id"]})

    def refused(self, rejected: WebhookRejected, delivery_id: str) -> Answer:
        """A delivery MLflow signed (fresh, new) is recorded on its own, once; any other refusal
        is counted, summarised per interval, and answered 429 past the burst."""
        if rejected.attributed:
            self.rejections.count(rejected.code)
            if self.verifier.seen.finish(delivery_id, self.verifier.clock()):
                self.audit(Action.REGISTRY_WEBHOOK_REJECTED, BRIDGE,
                           {"status": rejected.status, "code": rejected.code, "reason": rejected.reason,
                            "delivery_id": delivery_id[:64]})
            return Answer(rejected.status, {"error": rejected.reason})
        if not self.rejections.refuse(rejected.code):
            return Answer(429, {"error": f"too many refused requests; {rejected.reason}"}, RETRY_AFTER_S)
        retry = RETRY_AFTER_S if rejected.status == 503 else None
        return Answer(rejected.status, {"error": rejected.reason}, retry)

    def health(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self.counts)
        return {"status": "ok", "deliveries": {**counts, "in_flight": self.verifier.seen.in_flight_count(
            self.verifier.clock())}, **self.rejections.snapshot()}

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    # --- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/health":
            await _respond(send, Answer(200, self.health()))
            return
        if scope["method"] == "GET" and scope["path"] == METRICS_PATH and self.metrics is not None:
            await self._serve_metrics(scope, send)
            return
        if (scope["method"], scope["path"]) != ("POST", WEBHOOK_PATH):
            await _respond(send, self.refused(WebhookRejected(404, "no such route", "no_route"), ""))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _respond(send, self.refused(WebhookRejected(413, "body too large", "too_large"), ""))
                return
            body.append(chunk)
            if not message.get("more_body"):
                break
        checked = self.check(headers, b"".join(body))
        if isinstance(checked, Delivery):  # the emit blocks on Prefect: off the loop, so refusals stay cheap
            checked = await asyncio.to_thread(self.forward, checked)
        await _respond(send, checked)

    def metrics_allowed(self, headers: Mapping[str, str]) -> bool:
        """Whether a scrape carries the kpi token (``Authorization: Bearer``), compared in constant time."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return (self.metrics_token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(token.strip().encode(), self.metrics_token.encode()))

    async def _serve_metrics(self, scope, send) -> None:
        """The KPIs for a scraper with the token; without it, 401 counted like any refused post."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.metrics_allowed(headers):
            answer = self.refused(WebhookRejected(401, "the kpi token is required (Authorization: Bearer)",
                                                  "metrics_unauthorized"), "")
            await _respond(send, answer, [(b"www-authenticate", b'Bearer realm="modelyard-kpis"')])
            return
        try:
            body = await asyncio.to_thread(self.metrics)
        except Exception as error:  # noqa: BLE001 - the scrape fails visibly; the bridge goes on
            log.error("KPI exposition failed: %s", error)
            await _respond(send, Answer(503, {"error": f"KPIs could not be computed ({type(error).__name__})"}))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive, send) -> None:
        flusher = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                flusher = asyncio.create_task(self._flush_periodically())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if flusher is not None:
                    flusher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await flusher
                await asyncio.to_thread(self.rejections.flush, True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.rejections.interval_s)
            await asyncio.to_thread(self.rejections.flush)


async def _respond(send, answer: Answer, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), *(extra_headers or [])]
    if answer.retry_after is not None:
        headers.append((b"retry-after", str(answer.retry_after).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(answer.body).encode()})


class EmitFailed(RuntimeError):
    """Prefect did not accept an event (or no Prefect API is configured to send it to)."""


def emit_prefect_event(event: dict[str, Any], timeout_s: float = EMIT_TIMEOUT_S) -> None:
    """Send ``event`` to the Prefect API and return only once the server accepted it; raise otherwise.

    ``prefect.events.emit_event`` queues the event for a background websocket and cannot say
    whether the server took it; the REST endpoint (``POST /events``) answers only once it did.
    The client is Prefect's own, so ``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING`` apply.
    Without an API URL it refuses, rather than start an ephemeral server no trigger listens to.
    """
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    if not PREFECT_API_URL.value():
        raise EmitFailed("no Prefect API URL is configured (PREFECT_API_URL): the event has nowhere to go")
    body = Event(id=event.get("id") or uuid.uuid4(), event=event["event"], resource=event["resource"],
                 related=event.get("related", []), payload=event.get("payload", {})).model_dump(mode="json")
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 1}), \
            get_client(sync_client=True, httpx_settings={"timeout": timeout_s}) as client:
        client.request("POST", "/events", json=[body])


def make_bridge(settings: Settings, emit: Callable[[dict[str, Any]], None] = emit_prefect_event) -> BridgeApp:
    """The bridge of the stack ``settings`` describes: its webhook secret, its remembered
    deliveries, its ledger, and ``emit`` (Prefect's API unless a test says otherwise)."""
    from modelyard.ledger import ledger_from_settings
    from modelyard.webhooks import webhook_secret

    from modelyard.kpi_exposition import CachedExposition
    from modelyard.kpi_snapshot import KpiReader

    ledger = ledger_from_settings(settings)
    verifier = WebhookVerifier(webhook_secret(settings), SeenDeliveries(settings.run_dir / "bridge-deliveries.sqlite"))
    return BridgeApp(verifier, emit,
                     lambda action, subject, details: ledger.append(BRIDGE, str(action), subject, details),
                     metrics=CachedExposition(KpiReader(settings).snapshot), metrics_token=kpi_token(settings))


def kpi_token(settings: Settings) -> str:
    """The token a scraper presents to ``GET /metrics``: generated once into the credentials dir."""
    return settings.credential(KPI_TOKEN)


def serve_bridge(settings: Settings) -> None:
    """Run the bridge for the stack ``settings`` describes (started by `modelyard stack up`)."""
    import uvicorn

    uvicorn.run(make_bridge(settings), host=settings.host, port=settings.bridge_port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    from modelyard.settings import get_settings

    serve_bridge(get_settings())
