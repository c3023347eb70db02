"""A steady stream of single-row requests against a model's stable endpoint.

The demo uses it so that canary gates have live traffic to judge (and, later, so that the
monitor has a prediction log to watch); each request carries its own ``X-Request-ID`` so that
delayed labels can be joined to it. Statuses are counted, never raised: a failed request is
a finding, not a crash.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx
import pandas as pd


def model_inputs(url: str, headers: dict[str, str] | None = None) -> list[str]:
    """The input columns the serving version declares (Open Inference v2 metadata)."""
    version = httpx.get(f"{url}/version", headers=headers or {}, timeout=5).json()
    meta = httpx.get(f"{url}/v2/models/{version['model']}", headers=headers or {}, timeout=5).json()
    return [item["name"] for item in meta["inputs"]]


class TrafficGenerator:
    """Posts the rows of ``frame`` one by one at about ``rate`` requests per second, cycling."""

    def __init__(self, url: str, frame: pd.DataFrame, rate: float = 40.0,
                 headers: dict[str, str] | None = None, id_column: str | None = None) -> None:
        self.url, self.rate, self.headers = url, rate, dict(headers or {})
        columns = model_inputs(url, self.headers)
        self.columns = columns
        self.rows = frame[columns].astype(object).where(frame[columns].notna(), None).values.tolist()
        self.ids = frame[id_column].astype(str).tolist() if id_column else None
        self.statuses: Counter = Counter()
        self.sent_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        index = 0
        with httpx.Client(timeout=10, headers=self.headers) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                row = index % len(self.rows)
                request_id = self.ids[row] if self.ids else uuid.uuid4().hex
                body = {"dataframe_split": {"columns": self.columns, "data": [self.rows[row]]}}
                try:
                    response = client.post(f"{self.url}/invocations", json=body, headers={"X-Request-ID": request_id})
                    self.statuses[response.status_code] += 1
                except httpx.HTTPError as error:
                    self.statuses[type(error).__name__] += 1
                self.sent_ids.append(request_id)
                index += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def start(self) -> TrafficGenerator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def __enter__(self) -> TrafficGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
