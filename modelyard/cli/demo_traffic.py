"""Live traffic and delayed labels for the demo, so that gates and the monitor have something to
judge: single-row requests against a model's stable endpoint, each with its own ``X-Request-ID``;
the labels go back keyed by the prediction id each answer carried (``PREDICTION_ID_HEADER``),
as a client that learns outcomes later would send them. A failed request is counted, never raised.
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

from modelyard.catalog import PREDICTION_ID_HEADER


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
        # (sent at, request id, the server's prediction id) of every answered request, in order
        self.answered: list[tuple[float, str, str]] = []
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
                sent_at = time.time()
                try:
                    response = client.post(f"{self.url}/invocations", json=body, headers={"X-Request-ID": request_id})
                    self.statuses[response.status_code] += 1
                    prediction_id = response.headers.get(PREDICTION_ID_HEADER)
                    if response.status_code == 200 and prediction_id:
                        self.answered.append((sent_at, request_id, prediction_id))
                except httpx.HTTPError as error:
                    self.statuses[type(error).__name__] += 1
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
    ``directory`` (prediction_id, target) — what the monitor and retrain join on. ``truth``
    maps the request ids the traffic sends (unique transaction ids) to their outcome."""

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
        answered = self.traffic.answered
        upto = self._done
        while upto < len(answered) and answered[upto][0] <= cutoff:
            upto += 1
        due = [(prediction_id, self.truth[request_id]) for _, request_id, prediction_id in answered[self._done:upto]
               if request_id in self.truth]
        if due:
            self.directory.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(due, columns=["prediction_id", self.target])
            frame.to_parquet(self.directory / f"labels-{int(time.time() * 1000)}.parquet", index=False)
            self.written += len(due)
        self._done = upto

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._flush()
