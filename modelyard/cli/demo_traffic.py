"""Live traffic and delayed labels for the demo, so that gates and the monitor have something to
judge: single-row requests against a model's stable endpoint, each with its own ``X-Request-ID``
for the labels to join; a failed request is counted, never raised.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Self

import httpx
import pandas as pd


def model_inputs(url: str, headers: dict[str, str] | None = None) -> list[str]:
    """The input columns the serving version declares (Open Inference v2 metadata)."""
    version = httpx.get(f"{url}/version", headers=headers or {}, timeout=5).json()
    meta = httpx.get(f"{url}/v2/models/{version['model']}", headers=headers or {}, timeout=5).json()
    return [item["name"] for item in meta["inputs"]]


class _Background:
    """A daemon thread running ``_run`` from ``start`` until ``stop`` (also a context manager)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TrafficGenerator(_Background):
    """Posts the rows of ``frame`` one by one at about ``rate`` requests per second, cycling."""

    def __init__(self, url: str, frame: pd.DataFrame, rate: float = 40.0,
                 headers: dict[str, str] | None = None, id_column: str | None = None) -> None:
        self.url, self.rate, self.headers = url, rate, dict(headers or {})
        self.columns = model_inputs(url, self.headers)
        self.id_column = id_column
        self.statuses: Counter = Counter()
        self.sent_ids: list[str] = []
        self.sent_at: list[float] = []
        self.switched_at: float | None = None
        self._lock = threading.Lock()
        self._load(frame)
        super().__init__("traffic")

    def _load(self, frame: pd.DataFrame) -> None:
        rows = frame[self.columns].astype(object).where(frame[self.columns].notna(), None).values.tolist()
        ids = frame[self.id_column].astype(str).tolist() if self.id_column else None
        with self._lock:
            self.rows, self.ids, self._index = rows, ids, 0

    def switch(self, frame: pd.DataFrame) -> float:
        """From the next request on, send ``frame``'s rows; returns when that began (epoch s)."""
        self._load(frame)
        self.switched_at = time.time()
        return self.switched_at

    def _run(self) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        with httpx.Client(timeout=10, headers=self.headers) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                with self._lock:
                    row = self._index % len(self.rows)
                    self._index += 1
                    request_id = self.ids[row] if self.ids else uuid.uuid4().hex
                    body = {"dataframe_split": {"columns": self.columns, "data": [self.rows[row]]}}
                try:
                    response = client.post(f"{self.url}/invocations", json=body, headers={"X-Request-ID": request_id})
                    self.statuses[response.status_code] += 1
                except httpx.HTTPError as error:
                    self.statuses[type(error).__name__] += 1
                self.sent_ids.append(request_id)
                self.sent_at.append(time.time())
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


class LabelFeeder(_Background):
    """Delayed labels, as a fraud team's case outcomes would arrive: every ``every_s``, the
    labels of requests sent more than ``delay_s`` ago are written as one Parquet file to
    ``directory`` (request_id, target) — what the monitor and retrain join by request id."""

    def __init__(self, traffic: TrafficGenerator, truth: dict[str, int], target: str, directory: Path | str,
                 delay_s: float = 15.0, every_s: float = 10.0) -> None:
        self.traffic, self.truth, self.target = traffic, truth, target
        self.directory = Path(directory)
        self.delay_s, self.every_s = delay_s, every_s
        self.written = 0
        self._done = 0
        super().__init__("labels")

    def add_truth(self, truth: dict[str, int]) -> None:
        self.truth.update(truth)

    def _flush(self) -> None:
        cutoff = time.time() - self.delay_s
        sent_at, sent_ids = self.traffic.sent_at, self.traffic.sent_ids
        upto = self._done
        while upto < len(sent_at) and sent_at[upto] <= cutoff:
            upto += 1
        ids = [i for i in sent_ids[self._done:upto] if i in self.truth]
        if ids:
            self.directory.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame({"request_id": ids, self.target: [self.truth[i] for i in ids]})
            frame.to_parquet(self.directory / f"labels-{int(time.time() * 1000)}.parquet", index=False)
            self.written += len(ids)
        self._done = upto

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._flush()
