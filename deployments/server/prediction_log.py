"""The inference server's prediction log, written off the hot path.

Monitoring (drift, performance once labels arrive, audits of what a model answered) needs every
prediction the server made, with its inputs. Writing that record inline would put disk I/O,
Parquet encoding and pandas on the request path, where one slow disk stalls the asyncio event loop
and every request queued behind it. So the hot path only hands each request to a bounded
in-memory queue with ``put_nowait``: it never blocks, never raises for a full queue, costs a
lock, a counter and a queue append, and under overload it sheds log records (counted) rather
than latency. The queue is bounded in requests (``max_queue``) and in bytes (``max_queue_bytes``,
an estimate: the request body's size plus the predictions'). One daemon writer thread drains the
queue, batches rows (``batch_rows`` or ``flush_interval_s``, whichever comes first) and writes one
Parquet file per flush per hour::

    root/model=<model>/version=<version>/hour=<YYYY-MM-DDTHH>/part-<unix_ms>-<uuid8>.parquet

Each file is written under a hidden temporary name in the same folder and renamed into place with
``os.replace``, so a reader never sees half a file. A failed write is counted, its rows are kept
for one retry on the next flush, and dropped (counted) if that fails too; the thread keeps going.

Counting is exact: ``submitted == sampled_out + dropped + queued + written_requests + lost``, all
in requests (the ``*_rows`` keys count the same in rows).

Retention: with ``retention_s`` set, the writer thread deletes the model's hour partitions (every
version's) that ended more than ``retention_s`` ago, at start and every ``prune_interval_s``. A
partition is first claimed by renaming it (replicas of a model prune the same folders), then
``on_prune(version, details)`` records what goes (the audit ledger), and only then is it deleted;
when recording fails, the partition is put back.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["BASE_COLUMNS", "INPUT_PREFIX", "PredictionLog", "inputs_frame", "prune_partitions", "read_prediction_log"]

log = logging.getLogger(__name__)

INPUT_PREFIX = "input."
# request_id: the client's X-Request-ID (or the prediction id); prediction_id: the server's own
# unique id of the prediction (labels join on it); trace_id: the router's id of the request, the
# same for a served request and its shadow (null for requests that did not come through it).
BASE_COLUMNS = ("request_id", "prediction_id", "trace_id", "time", "model", "version", "row", "prediction")
_HOUR_FORMAT = "%Y-%m-%dT%H"
_POLL_S = 0.05  # how often the writer looks at the queue; close() wakes it at once
_IDLE_WAIT_S = 0.5  # how long the writer sleeps on an empty queue before re-checking for close
_MAX_ATTEMPTS = 2  # a batch is written at most twice: the first flush and one retry
_WAKE = object()  # put by close() to wake a writer waiting on an empty queue

# What the hot path enqueues per request, as a plain tuple (cheapest to build):
# (request_id, prediction_id, trace_id, received_at, columns, predictions, probabilities, n_rows, size_bytes)
_Request = tuple[str, str | None, str | None, float, dict[str, Sequence[Any]], Sequence[Any], Sequence[Any] | None,
                 int, int]
_TIME, _COLUMNS, _ROWS, _SIZE = 3, 4, 7, 8


class MatrixColumns(Mapping):
    """Input columns held as one [rows, columns] matrix: handed over on the hot path without
    splitting it, and stacked with its neighbours in one step by the writer."""

    __slots__ = ("names", "matrix", "_index")

    def __init__(self, names: Sequence[str], matrix: np.ndarray) -> None:
        self.names, self.matrix = tuple(names), matrix
        self._index = {name: i for i, name in enumerate(self.names)}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.matrix[:, self._index[name]]
        except KeyError:
            raise KeyError(name) from None

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@functools.lru_cache(maxsize=64)
def _hour_partition(hours_since_epoch: int) -> str:
    return datetime.fromtimestamp(hours_since_epoch * 3600, UTC).strftime(_HOUR_FORMAT)


class _Pending:
    """A request held by the writer, with the number of failed writes it has been through."""

    __slots__ = ("request", "attempts", "hour")

    def __init__(self, request: _Request) -> None:
        self.request = request
        self.attempts = 0
        try:
            self.hour = _hour_partition(int(request[_TIME] // 3600))
        except Exception:  # a bad timestamp: its own group, whose write fails and is counted
            self.hour = "invalid"

    @property
    def rows(self) -> int:
        return self.request[_ROWS]

    @property
    def size(self) -> int:
        return self.request[_SIZE]


def _safe_component(kind: str, value: str) -> str:
    value = str(value)
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{kind} {value!r} cannot name a folder of the prediction log")
    return value


class PredictionLog:
    """A non-blocking, sampled, bounded log of one model version's predictions.

    ``submit`` is for the event loop; everything else happens on the writer thread that
    ``start`` launches. Call ``close`` on shutdown: records still queued when the process exits
    without it are lost (the thread is a daemon so that it can never hold the server up).
    """

    def __init__(
        self,
        root: Path,
        model: str,
        version: str,
        *,
        max_queue: int = 10_000,
        max_queue_bytes: int = 256 * 1024 * 1024,
        batch_rows: int = 2_000,
        flush_interval_s: float = 1.0,
        sample_rate: float = 1.0,
        seed: int | None = None,
        retention_s: float | None = None,
        prune_interval_s: float = 3600.0,
        on_prune: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_queue_bytes < 1:
            raise ValueError("max_queue_bytes must be at least 1")
        if retention_s is not None and retention_s <= 0:
            raise ValueError("retention_s must be positive (None: keep everything)")
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be positive")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be within [0, 1]")
        self.root = Path(root)
        self.model = _safe_component("model", model)
        self.version = _safe_component("version", version)
        self.folder = self.root / f"model={self.model}" / f"version={self.version}"
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.sample_rate = sample_rate
        self.max_queue_bytes = max_queue_bytes
        self.retention_s, self.prune_interval_s, self.on_prune = retention_s, prune_interval_s, on_prune
        self._next_prune = 0.0  # monotonic; the first writer iteration prunes
        self._random = random.Random(seed)
        self._queue: queue.Queue[_Request | object] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._counts = dict.fromkeys(
            (
                "submitted",
                "submitted_rows",
                "sampled_out",
                "sampled_out_rows",
                "dropped",
                "dropped_rows",
                "accepted",
                "accepted_rows",
                "rejected_after_close",
                "written_requests",
                "written_rows",
                "written_files",
                "write_errors",
                "lost",
                "lost_rows",
                "accepted_bytes",
                "released_bytes",
                "pruned_partitions",
            ),
            0,
        )

    # ------------------------------------------------------------------ hot path

    def submit(
        self,
        request_id: str,
        received_at: float,
        columns: dict[str, list],
        predictions: list,
        probabilities: list[list[float]] | None = None,
        *,
        prediction_id: str | None = None,
        trace_id: str | None = None,
        size_bytes: int | None = None,
    ) -> bool:
        """Hand one request's rows to the writer; True when queued, False when not logged.

        Never blocks and never raises for load: a queue full in requests or in bytes drops the
        request (counted in ``dropped``/``dropped_rows``), sampling skips it (``sampled_out``), and
        after ``close`` it is refused (``rejected_after_close``). ``columns`` maps an input name to
        one value per row, ``predictions`` has one value per row, ``probabilities`` (optional) one
        list per row. ``size_bytes`` is what the request weighs against ``max_queue_bytes``
        (default: an estimate from the arrays). The lists are handed over, not copied: do not
        change them after submitting. Raises ValueError only for a malformed request (lengths
        that disagree).
        """
        n = len(predictions)
        lengths = [columns.matrix.shape[0]] if isinstance(columns, MatrixColumns) else map(len, columns.values())
        for length in lengths:
            if length != n:
                raise ValueError(f"request {request_id!r}: every column needs {n} values, one per prediction")
        if probabilities is not None and len(probabilities) != n:
            raise ValueError(f"request {request_id!r}: probabilities need {n} rows, one per prediction")
        if size_bytes is None:
            size_bytes = _estimate_bytes(columns, predictions, probabilities)
        counts = self._counts
        with self._lock:
            if self._closed:
                counts["rejected_after_close"] += 1
                return False
            counts["submitted"] += 1
            counts["submitted_rows"] += n
            if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
                counts["sampled_out"] += 1
                counts["sampled_out_rows"] += n
                return False
            try:
                if counts["accepted_bytes"] - counts["released_bytes"] + size_bytes > self.max_queue_bytes:
                    raise queue.Full
                self._queue.put_nowait((request_id, prediction_id, trace_id, received_at, columns, predictions,
                                        probabilities, n, size_bytes))
            except queue.Full:
                counts["dropped"] += 1
                counts["dropped_rows"] += n
                return False
            counts["accepted"] += 1
            counts["accepted_rows"] += n
            counts["accepted_bytes"] += size_bytes
            return True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (once; starting a running log does nothing)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the prediction log is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"prediction-log-{self.model}-{self.version}", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new records, write everything already queued, and join the writer.

        Safe to call more than once. Without a started writer, the queue is written here.
        """
        with self._lock:
            already = self._closed
            self._closed = True
            thread = self._thread
        if not already:
            self._stop.set()
            try:
                self._queue.put_nowait(_WAKE)
            except queue.Full:
                pass  # the writer is not waiting on an empty queue; it will see the stop flag
            if thread is None:
                self._run()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning(
                    "prediction log %s/%s: writer still busy after %.1fs; %d requests not yet written",
                    self.model, self.version, timeout_s, self.stats()["queued"],
                )

    def __enter__(self) -> PredictionLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters, in requests unless the key ends in ``_rows``.

        ``submitted == sampled_out + dropped + queued + written_requests + lost`` always holds;
        ``queued`` is accepted but not yet written (in the queue or in the writer's batch).
        ``rejected_after_close`` counts submits refused after ``close`` (not in ``submitted``).
        ``queued_bytes`` is what the queued requests weigh against ``max_queue_bytes``.
        """
        with self._lock:
            counts = dict(self._counts)
        counts["queued"] = counts["accepted"] - counts["written_requests"] - counts["lost"]
        counts["queued_rows"] = counts["accepted_rows"] - counts["written_rows"] - counts["lost_rows"]
        counts["queued_bytes"] = counts.pop("accepted_bytes") - counts.pop("released_bytes")
        return counts

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        buffer: list[_Pending] = []
        rows = 0
        oldest = 0.0  # monotonic time the oldest buffered request arrived at the writer
        while True:
            try:
                if self._stop.is_set():
                    self._drain(buffer)
                    return
                if self.retention_s is not None and time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self.prune_interval_s
                    self._prune()
                now = time.monotonic()
                wait = _IDLE_WAIT_S if not buffer else max(0.0, oldest + self.flush_interval_s - now)
                if wait > 0:
                    # Sleep instead of blocking on the queue: a blocked get() wakes this thread on
                    # every put, and each wake fights the event loop for the GIL (p99 latency).
                    self._stop.wait(min(wait, _POLL_S))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = _WAKE
                while item is not _WAKE:
                    if not buffer:
                        oldest = time.monotonic()
                    pending = _Pending(item)  # type: ignore[arg-type]
                    buffer.append(pending)
                    rows += pending.rows
                    if rows >= self.batch_rows:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if buffer and (rows >= self.batch_rows or time.monotonic() - oldest >= self.flush_interval_s):
                    buffer = self._flush(buffer)
                    rows = sum(p.rows for p in buffer)
                    oldest = time.monotonic()
            except Exception:  # never let the writer die silently: log it and keep serving
                log.exception("prediction log %s/%s: writer loop error", self.model, self.version)
                time.sleep(0.05)

    def _drain(self, buffer: list[_Pending]) -> None:
        """On close: write the batch and everything left in the queue, in batch_rows chunks."""
        rows = sum(p.rows for p in buffer)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _WAKE:
                continue
            pending = _Pending(item)  # type: ignore[arg-type]
            buffer.append(pending)
            rows += pending.rows
            if rows >= self.batch_rows:
                buffer = self._flush(buffer)
                rows = sum(p.rows for p in buffer)
        while buffer:  # a failed batch gets its one retry here; the second failure drops it
            buffer = self._flush(buffer)

    def _flush(self, buffer: list[_Pending]) -> list[_Pending]:
        """Write one file per hour partition; return what must be retried on the next flush."""
        by_hour: dict[str, list[_Pending]] = {}
        for pending in buffer:
            by_hour.setdefault(pending.hour, []).append(pending)
        retry: list[_Pending] = []
        for hour, group in by_hour.items():
            n_rows = sum(p.rows for p in group)
            try:
                self._write(hour, group)
            except Exception:
                log.exception(
                    "prediction log %s/%s: writing %d rows for hour %s failed",
                    self.model, self.version, n_rows, hour,
                )
                lost = [p for p in group if p.attempts + 1 >= _MAX_ATTEMPTS]
                for p in group:
                    p.attempts += 1
                    if p.attempts < _MAX_ATTEMPTS:
                        retry.append(p)
                with self._lock:
                    self._counts["write_errors"] += 1
                    self._counts["lost"] += len(lost)
                    self._counts["lost_rows"] += sum(p.rows for p in lost)
                    self._counts["released_bytes"] += sum(p.size for p in lost)
                continue
            with self._lock:
                self._counts["written_files"] += 1
                self._counts["written_requests"] += len(group)
                self._counts["written_rows"] += n_rows
                self._counts["released_bytes"] += sum(p.size for p in group)
        return retry

    def _prune(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.retention_s)
        try:
            pruned = prune_partitions(self.root, self.model, cutoff, self.on_prune)
        except Exception:  # a failed prune must not stop the writer; the next one tries again
            log.exception("prediction log %s: pruning partitions older than %s failed", self.model, cutoff)
            return
        with self._lock:
            self._counts["pruned_partitions"] += sum(len(d["partitions"]) for d in pruned.values())

    def _write(self, hour: str, group: list[_Pending]) -> None:
        table = _to_table(self.model, self.version, [p.request for p in group])
        folder = self.folder / f"hour={hour}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns() // 1_000_000}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------- table building


def _column(values: list[Any]) -> pa.Array:
    """Values in their natural Arrow type; mixed values (no common type) become strings."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _probability_column(values: list[Any]) -> pa.Array:
    kind = pa.list_(pa.float64())
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        cleaned: list[list[float] | None] = []
        for v in values:
            try:
                cleaned.append(None if v is None else [float(x) for x in v])
            except (TypeError, ValueError):
                cleaned.append(None)
        return pa.array(cleaned, type=kind)


def _estimate_bytes(columns: Mapping[str, Sequence[Any]], predictions: Sequence[Any],
                    probabilities: Sequence[Any] | None) -> int:
    """What a request weighs in memory, roughly: array sizes, or 64 bytes a value for lists."""
    parts = [columns.matrix] if isinstance(columns, MatrixColumns) else list(columns.values())
    parts += [predictions] + ([probabilities] if probabilities is not None else [])
    return sum(part.nbytes if isinstance(part, np.ndarray) else 64 * len(part) for part in parts)


def _to_table(model: str, version: str, requests: list[_Request]) -> pa.Table:
    request_ids: list[str] = []
    prediction_ids: list[str | None] = []
    trace_ids: list[str | None] = []
    times_us: list[int] = []
    row_index: list[int] = []
    names: dict[str, None] = {}
    any_probability = False
    for request_id, prediction_id, trace_id, received_at, columns, preds, probs, n, _ in requests:
        request_ids.extend([str(request_id)] * n)
        prediction_ids.extend([prediction_id] * n)
        trace_ids.extend([trace_id] * n)
        times_us.extend([round(received_at * 1_000_000)] * n)
        row_index.extend(range(n))
        names.update(dict.fromkeys(columns))
        any_probability = any_probability or probs is not None
    total = len(request_ids)
    data: dict[str, pa.Array] = {
        "request_id": pa.array(request_ids, type=pa.string()),
        "prediction_id": pa.array(prediction_ids, type=pa.string()),
        "trace_id": pa.array(trace_ids, type=pa.string()),
        "time": pa.array(times_us, type=pa.timestamp("us", tz="UTC")),
        "model": pa.array([model] * total, type=pa.string()),
        "version": pa.array([version] * total, type=pa.string()),
        "row": pa.array(row_index, type=pa.int64()),
    }
    blocks = [request[_COLUMNS] for request in requests]
    if all(isinstance(b, MatrixColumns) and b.names == blocks[0].names for b in blocks):
        stacked = np.concatenate([b.matrix for b in blocks])
        for i, name in enumerate(blocks[0].names):
            data[f"{INPUT_PREFIX}{name}"] = _column(stacked[:, i])
        names = {}
    for name in names:
        parts = [request[_COLUMNS].get(name) for request in requests]
        if all(isinstance(part, np.ndarray) for part in parts):
            # The server hands over numpy arrays: one concatenation, no per-value Python loop.
            merged = np.concatenate(parts)
            data[f"{INPUT_PREFIX}{name}"] = _column(merged.tolist() if merged.dtype == object else merged)
            continue
        values: list[Any] = []
        for part, request in zip(parts, requests, strict=True):
            values.extend(part if part is not None else [None] * request[_ROWS])
        data[f"{INPUT_PREFIX}{name}"] = _column(values)
    pred_parts = [request[5] for request in requests]
    if all(isinstance(part, np.ndarray) for part in pred_parts):
        merged_predictions = np.concatenate(pred_parts)
        data["prediction"] = _column(merged_predictions.tolist() if merged_predictions.dtype == object else merged_predictions)
    else:
        predictions: list[Any] = []
        for part in pred_parts:
            predictions.extend(part.tolist() if isinstance(part, np.ndarray) else part)
        data["prediction"] = _column(predictions)
    prob_parts = [request[6] for request in requests]
    if prob_parts and all(isinstance(p, np.ndarray) and p.ndim == 2 for p in prob_parts) \
            and len({p.shape[1] for p in prob_parts}) == 1:
        # One vectorised list column instead of a Python list per row.
        flat = np.concatenate(prob_parts).astype(np.float64)
        width = flat.shape[1]
        offsets = pa.array(np.arange(0, flat.size + 1, width, dtype=np.int32))
        data["probability"] = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))
    elif any_probability:
        probabilities: list[Any] = []
        for *_, probs, n, _ in requests:
            probabilities.extend(probs if probs is not None else [None] * n)
        data["probability"] = _probability_column(probabilities)
    return pa.table(data)


# ---------------------------------------------------------------------- retention


def prune_partitions(
    root: Path, model: str, before: datetime,
    on_prune: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Delete ``model``'s hour partitions (every version's) that ended at or before ``before``.

    Per version: claim its old partitions by renaming them (so that a concurrent pruner skips
    them), call ``on_prune(version, details)`` with what goes (partitions, files, rows, bytes),
    then delete them. If ``on_prune`` raises, the partitions are put back and the error raised.
    Returns the details of what was deleted, by version.
    """
    cutoff = _as_utc(before)
    base = Path(root) / f"model={_safe_component('model', model)}"
    pruned: dict[str, dict[str, Any]] = {}
    for version_dir in sorted(base.glob("version=*")):
        claimed: list[tuple[Path, Path]] = []
        for hour_dir in sorted(version_dir.glob("hour=*")):
            try:
                start = datetime.strptime(hour_dir.name.removeprefix("hour="), _HOUR_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                continue
            if start + timedelta(hours=1) > cutoff:
                continue
            tombstone = version_dir / f".pruning-{hour_dir.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(hour_dir, tombstone)
            except FileNotFoundError:  # another replica claimed it first
                continue
            claimed.append((hour_dir, tombstone))
        if not claimed:
            continue
        version = version_dir.name.removeprefix("version=")
        files = [f for _, tombstone in claimed for f in tombstone.glob("part-*.parquet")]
        details = {
            "model": model, "version": version, "before": cutoff.isoformat(),
            "partitions": [hour_dir.relative_to(root).as_posix() for hour_dir, _ in claimed],
            "files": len(files), "rows": sum(_parquet_rows(f) for f in files),
            "bytes": sum(f.stat().st_size for f in files),
        }
        try:
            if on_prune is not None:
                on_prune(version, details)
        except BaseException:
            for hour_dir, tombstone in claimed:
                os.rename(tombstone, hour_dir)
            raise
        for _, tombstone in claimed:
            shutil.rmtree(tombstone, ignore_errors=True)
        pruned[version] = details
    return pruned


def _parquet_rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # an unreadable file still goes; it counts no rows
        return 0


# ---------------------------------------------------------------------- reading


def _empty_log() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype="object"),
            "prediction_id": pd.Series(dtype="object"),
            "trace_id": pd.Series(dtype="object"),
            "time": pd.Series(dtype="datetime64[ns, UTC]"),
            "model": pd.Series(dtype="object"),
            "version": pd.Series(dtype="object"),
            "row": pd.Series(dtype="int64"),
            "prediction": pd.Series(dtype="object"),
        }
    )


def _as_utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def read_prediction_log(
    root: Path, model: str, version: str | None = None, since: datetime | None = None
) -> pd.DataFrame:
    """Every logged row of ``model`` (one version, or all when None), sorted by time.

    Inputs keep their ``input.`` prefix (see ``inputs_frame``). ``since`` keeps rows at or after
    it (a naive datetime is taken as UTC) and skips hour folders that end before it. Only complete
    files are read. Nothing logged gives an empty frame with the base columns.
    """
    base = Path(root) / f"model={_safe_component('model', model)}"
    versions = f"version={_safe_component('version', version)}" if version is not None else "version=*"
    cutoff = _as_utc(since) if since is not None else None
    frames: list[pd.DataFrame] = []
    for hour_dir in sorted(base.glob(f"{versions}/hour=*")):
        if cutoff is not None:
            try:
                start = datetime.strptime(hour_dir.name.removeprefix("hour="), _HOUR_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                start = None
            if start is not None and start + timedelta(hours=1) <= cutoff:
                continue
        for part in sorted(hour_dir.glob("part-*.parquet")):
            frames.append(pq.read_table(part).to_pandas())
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _empty_log()
    df = pd.concat(frames, ignore_index=True)
    df["time"] = df["time"].astype("datetime64[ns, UTC]")
    if cutoff is not None:
        df = df[df["time"] >= cutoff]
    return df.sort_values(["time", "request_id", "row"], kind="stable").reset_index(drop=True)


def inputs_frame(log_df: pd.DataFrame) -> pd.DataFrame:
    """The input columns of a prediction log frame, with the ``input.`` prefix stripped."""
    columns = [c for c in log_df.columns if c.startswith(INPUT_PREFIX)]
    return log_df[columns].rename(columns=lambda c: c[len(INPUT_PREFIX):])
