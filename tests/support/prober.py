"""A prober in the manner of Knative's upgrade prober (SLO 1.0): requests through a model's
stable endpoint at a fixed rate, each with its own request id, keeping every answer's status,
latency and (on the Open Inference route) the version that answered. Shared by the self-healing
tests and the chaos benchmark (infra/bench/chaos.py)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

PROBES_PER_S = 25


@dataclass(frozen=True)
class Probe:
    sent: float
    ended: float
    status: int | str  # the HTTP status, or the name of the client error (no answer)
    request_id: str
    version: str | None = None  # the ``model_version`` of an Open Inference answer

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency_s(self) -> float:
        return self.ended - self.sent


@dataclass
class Prober:
    """POSTs ``body`` to ``url + path`` at ``rate`` per second until the ``with`` block ends."""

    url: str
    body: dict
    rate: float = PROBES_PER_S
    path: str = "/invocations"
    headers: dict[str, str] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=64)  # probes held by a hung replica never delay the next
        self._client = httpx.Client(timeout=15, limits=httpx.Limits(max_connections=64))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        request_id, sent = uuid.uuid4().hex, time.time()
        version = None
        try:
            response = self._client.post(f"{self.url}{self.path}", json=self.body,
                                         headers={**self.headers, "X-Request-ID": request_id})
            status: int | str = response.status_code
            if status == 200 and response.headers.get("content-type", "").startswith("application/json"):
                answer = response.json()
                version = answer.get("model_version") if isinstance(answer, dict) else None
        except httpx.HTTPError as error:
            status = type(error).__name__
        except ValueError:  # a 200 whose body is not JSON: not a good answer
            status = "invalid JSON"
        with self._lock:
            self.probes.append(Probe(sent, time.time(), status, request_id, version))

    def _run(self) -> None:
        began = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self._pool.submit(self._one)
            n += 1
            time.sleep(max(0.0, began + n / self.rate - time.monotonic()))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._client.close()

    @property
    def failed(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]

    def rate_seen(self) -> float:
        return len(self.probes) / (max(p.sent for p in self.probes) - min(p.sent for p in self.probes))

    def between(self, start: float, end: float) -> list[Probe]:
        """The probes sent in [start, end), in the order they were sent (a copy: probing goes on)."""
        with self._lock:
            return sorted((p for p in self.probes if start <= p.sent < end), key=lambda p: p.sent)
