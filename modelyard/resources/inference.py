"""The client of modelyard's own inference servers: smoke, warm-up, readiness, the switch probe,
Prometheus scrapes and replays. Strategies, gates and the monitor all talk to servers through it,
with the stack's bearer token added once here."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from modelyard.catalog import REPLAY_HEADER

INFERENCE_ROUTES = ("invocations", "v2_infer")
WARM_UP_REQUESTS = 20
_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class InferenceError(RuntimeError):
    """A server did not answer as a healthy modelyard server must; the message says how."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """Inference requests by status, and the latency histogram (upper bounds → cumulative counts)."""

    by_status: dict[int, int]
    latency_buckets: dict[float, int]

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())


def parse_metrics(text: str) -> MetricsSnapshot:
    """The request counters and latency histogram out of a server's Prometheus text."""
    by_status: dict[int, int] = {}
    buckets: dict[float, int] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        value = float(match["value"])
        if match["name"] == "modelyard_requests_total" and labels.get("route") in INFERENCE_ROUTES:
            status = int(labels["status"])
            by_status[status] = by_status.get(status, 0) + int(value)
        elif match["name"] == "modelyard_request_latency_seconds_bucket":
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            buckets[bound] = int(value)
    return MetricsSnapshot(by_status, buckets)


def merge_snapshots(snapshots: list[MetricsSnapshot]) -> MetricsSnapshot:
    """One version's metrics from its replicas' (counters and cumulative buckets add up)."""
    by_status: dict[int, int] = {}
    buckets: dict[float, int] = {}
    for snapshot in snapshots:
        for status, count in snapshot.by_status.items():
            by_status[status] = by_status.get(status, 0) + count
        for bound, count in snapshot.latency_buckets.items():
            buckets[bound] = buckets.get(bound, 0) + count
    return MetricsSnapshot(by_status, buckets)


def dataframe_split(frame: pd.DataFrame) -> dict:
    """The MLflow scoring body for ``frame`` (NaN sent as null)."""
    return {"dataframe_split": {"columns": list(frame.columns),
                                "data": frame.astype(object).where(frame.notna(), None).values.tolist()}}


class InferenceClient:
    """Calls modelyard inference servers with the stack's bearer token; replays carry the admin
    token in the replay header, without which a server refuses them."""

    def __init__(self, token: str | None, models_dir: Path, admin_token: str | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.replay_headers = {**self.headers, REPLAY_HEADER: admin_token or ""}
        self.models_dir = Path(models_dir)

    def serving_example(self, model: str, version: str) -> bytes:
        """The version's own serving input example, as downloaded next to the model."""
        model_dir = self.models_dir / f"{model}-{version}"
        example = next(iter(sorted(model_dir.rglob("serving_input_example.json"))), None)
        if example is None:
            raise InferenceError("the version has no serving input example to smoke-test with")
        return example.read_bytes()

    def smoke(self, url: str, model: str, version: str, warm_up: int = WARM_UP_REQUESTS) -> None:
        """POST the version's serving input example; anything but 200 fails. Then warm the
        version up with ``warm_up`` replays (kept out of its latency metrics and prediction log),
        so that its first live requests do not pay for cold paths."""
        body = self.serving_example(model, version)
        headers = {"Content-Type": "application/json", **self.headers}
        response = httpx.post(f"{url}/invocations", content=body, timeout=10, headers=headers)
        if response.status_code != 200:
            raise InferenceError(f"smoke request answered {response.status_code}: {response.text[:200]}")
        with httpx.Client(timeout=10, headers={**self.replay_headers, "Content-Type": "application/json"}) as client:
            for _ in range(warm_up):
                client.post(f"{url}/invocations", content=body)

    def is_ready(self, url: str) -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def version_info(self, url: str) -> dict | None:
        """``url``'s ``/version`` answer (model, version, artifact sha256, …); None when it does
        not answer 200 with a JSON object."""
        try:
            answer = httpx.get(f"{url}/version", headers=self.headers, timeout=2)
            info = answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def serving_version(self, url: str) -> str | None:
        """The version ``url`` answers with now (None when it does not answer)."""
        info = self.version_info(url)
        return info.get("version") if info is not None else None

    def wait_serving(self, url: str, version: str, timeout_s: float = 10, streak_needed: int = 3) -> bool:
        """Until ``url`` answers with ``version`` several times in a row (True), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            streak = streak + 1 if self.serving_version(url) == version else 0
            if streak >= streak_needed:
                return True
            time.sleep(0.05)
        return False

    def scrape(self, url: str) -> MetricsSnapshot:
        response = httpx.get(f"{url}/metrics", headers=self.headers, timeout=5)
        response.raise_for_status()
        return parse_metrics(response.text)

    def scrape_all(self, urls: list[str]) -> MetricsSnapshot:
        """The metrics of every replica of a version, added up."""
        return merge_snapshots([self.scrape(url) for url in urls])

    def replay(self, frame: pd.DataFrame, url: str, chunk: int = 500) -> np.ndarray:
        """``url``'s answers to ``frame``, marked as a replay so they stay out of its prediction
        log and latency metrics."""
        answers: list = []
        with httpx.Client(timeout=30, headers=self.replay_headers) as client:
            for start in range(0, len(frame), chunk):
                response = client.post(f"{url}/invocations", json=dataframe_split(frame.iloc[start:start + chunk]))
                response.raise_for_status()
                answers.extend(response.json()["predictions"])
        return np.asarray(answers)
