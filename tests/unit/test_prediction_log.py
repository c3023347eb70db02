"""The prediction log: every accepted record lands on disk exactly once, overload (in requests or
in bytes) and sampling are counted instead of blocking, close flushes, files are partitioned by
model, version and hour, the reader filters and strips prefixes, and partitions past their
retention are deleted after they are recorded. Real Parquet files under tmp_path, real threads."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

import pytest

from deployments.server.prediction_log import (
    BASE_COLUMNS,
    PredictionLog,
    inputs_frame,
    prune_partitions,
    read_prediction_log,
)

T0 = datetime(2024, 5, 1, 10, 15, tzinfo=UTC).timestamp()
PART = re.compile(r"^part-\d{13}-[0-9a-f]{8}\.parquet$")


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _request(thread: int, i: int) -> dict:
    """A deterministic request: odd ones carry three rows, even ones one row."""
    n = 3 if i % 2 else 1
    key = thread * 100_000 + i * 10
    return {
        "request_id": f"t{thread}-r{i}",
        "received_at": T0 + i * 0.001,
        "columns": {"x": [float(key + k) for k in range(n)], "city": [f"c-{key + k}" for k in range(n)]},
        "predictions": [key + k for k in range(n)],
        "probabilities": [[k / 4, 1 - k / 4] for k in range(n)],
    }


def _parts(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def _stats_add_up(stats: dict[str, int]) -> None:
    assert stats["submitted"] == (
        stats["sampled_out"] + stats["dropped"] + stats["queued"] + stats["written_requests"] + stats["lost"]
    )
    assert stats["submitted_rows"] == (
        stats["sampled_out_rows"] + stats["dropped_rows"] + stats["queued_rows"] + stats["written_rows"]
        + stats["lost_rows"]
    )


def test_concurrent_submits_are_all_written_exactly_once(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "3", batch_rows=500, flush_interval_s=0.05)
    plog.start()
    threads, per_thread = 8, 500
    barrier = threading.Barrier(threads)
    results: dict[int, list[bool]] = {}

    def client(t: int) -> None:
        barrier.wait()
        results[t] = [plog.submit(**_request(t, i)) for i in range(per_thread)]

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    plog.close()

    assert all(all(r) for r in results.values())
    expected = {}
    for t in range(threads):
        for i in range(per_thread):
            req = _request(t, i)
            for k in range(len(req["predictions"])):
                expected[(req["request_id"], k)] = (
                    req["columns"]["x"][k], req["columns"]["city"][k], req["predictions"][k],
                    req["probabilities"][k], req["received_at"],
                )

    df = read_prediction_log(tmp_path, "iris", "3")
    assert len(df) == len(expected)
    assert not df.duplicated(["request_id", "row"]).any()
    assert set(df["model"]) == {"iris"} and set(df["version"]) == {"3"}
    assert df["time"].is_monotonic_increasing
    for rec in df.to_dict("records"):
        x, city, prediction, probability, received_at = expected[(rec["request_id"], rec["row"])]
        assert rec["input.x"] == x and rec["input.city"] == city
        assert rec["prediction"] == prediction
        assert list(rec["probability"]) == probability
        assert rec["time"].timestamp() == pytest.approx(received_at, abs=1e-6)

    parts = _parts(tmp_path)
    assert parts
    for part in parts:
        model, version, hour, name = part.relative_to(tmp_path).parts
        assert (model, version, hour) == ("model=iris", "version=3", "hour=2024-05-01T10")
        assert PART.match(name)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]

    stats = plog.stats()
    assert stats["submitted"] == stats["written_requests"] == threads * per_thread
    assert stats["written_rows"] == len(expected)
    assert stats["written_files"] == len(parts)
    assert stats["dropped"] == stats["sampled_out"] == stats["queued"] == stats["write_errors"] == 0
    _stats_add_up(stats)


def test_full_queue_drops_instead_of_blocking(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1", max_queue=5)
    results = []
    for i in range(1000):  # the writer is not even running yet: the queue fills at once
        results.append(plog.submit(**_request(0, i)))
    stats = plog.stats()
    accepted = {f"t0-r{i}" for i, ok in enumerate(results) if ok}
    assert len(accepted) == 5
    assert stats["dropped"] == results.count(False) == 995
    assert stats["dropped_rows"] == sum(len(_request(0, i)["predictions"]) for i, ok in enumerate(results) if not ok)
    assert stats["queued"] == 5

    plog.start()
    plog.close()
    df = read_prediction_log(tmp_path, "iris", "1")
    assert set(df["request_id"]) == accepted
    stats = plog.stats()
    assert stats["written_requests"] + stats["dropped"] == stats["submitted"] == 1000
    assert stats["queued"] == 0
    _stats_add_up(stats)


def test_sampling_keeps_about_the_rate_and_counts_the_rest(tmp_path):
    def run(root: Path) -> list[bool]:
        plog = PredictionLog(root, "iris", "1", sample_rate=0.25, seed=7, flush_interval_s=0.05)
        plog.start()
        results = [plog.submit(**_request(0, i)) for i in range(2000)]
        plog.close()
        stats = plog.stats()
        kept = sum(results)
        assert stats["sampled_out"] == 2000 - kept
        assert stats["written_requests"] == kept
        assert stats["written_requests"] + stats["sampled_out"] == stats["submitted"] == 2000
        _stats_add_up(stats)
        written = set(read_prediction_log(root, "iris")["request_id"])
        assert written == {f"t0-r{i}" for i, ok in enumerate(results) if ok}
        return results

    first = run(tmp_path / "a")
    assert 0.15 * 2000 <= sum(first) <= 0.35 * 2000
    assert run(tmp_path / "b") == first  # the same seed keeps the same requests


def test_close_flushes_and_then_refuses(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1", flush_interval_s=60, batch_rows=10_000)
    plog.start()
    for i in range(3):
        assert plog.submit(**_request(0, i))
    plog.close()
    assert set(read_prediction_log(tmp_path, "iris", "1")["request_id"]) == {"t0-r0", "t0-r1", "t0-r2"}
    assert plog.submit(**_request(0, 99)) is False
    before = plog.stats()
    assert before["rejected_after_close"] == 1 and before["queued"] == 0
    plog.close()  # harmless
    assert plog.stats() == before
    assert len(read_prediction_log(tmp_path, "iris", "1")) == 5  # 1 + 3 + 1 rows, nothing twice


def test_close_without_start_still_writes_the_queue(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1")
    assert plog.submit(**_request(0, 1))
    plog.close()
    assert len(read_prediction_log(tmp_path, "iris")) == 3


def test_flushes_by_batch_size_and_by_interval(tmp_path):
    by_size = PredictionLog(tmp_path / "size", "iris", "1", batch_rows=10, flush_interval_s=60)
    for i in range(100):
        by_size.submit(request_id=f"r{i}", received_at=T0, columns={"x": [i]}, predictions=[0])
    by_size.start()
    _wait_for(lambda: by_size.stats()["written_rows"] == 100)
    assert len(_parts(tmp_path / "size")) == 10
    by_size.close()

    by_time = PredictionLog(tmp_path / "time", "iris", "1", batch_rows=10_000, flush_interval_s=0.1)
    by_time.start()
    by_time.submit(request_id="r0", received_at=T0, columns={"x": [1]}, predictions=[0])
    _wait_for(lambda: len(_parts(tmp_path / "time")) == 1)  # on disk before any close
    by_time.close()


def test_requests_in_two_hours_land_in_two_partitions(tmp_path):
    before = datetime(2024, 5, 1, 10, 59, 59, 500_000, tzinfo=UTC).timestamp()
    after = datetime(2024, 5, 1, 11, 0, 0, 250_000, tzinfo=UTC).timestamp()
    plog = PredictionLog(tmp_path, "iris", "1")
    plog.submit(request_id="late", received_at=before, columns={"x": [1]}, predictions=[0])
    plog.submit(request_id="early", received_at=after, columns={"x": [2]}, predictions=[1])
    plog.start()
    plog.close()
    folder = tmp_path / "model=iris" / "version=1"
    assert sorted(p.name for p in folder.iterdir()) == ["hour=2024-05-01T10", "hour=2024-05-01T11"]
    assert [p.parent.name for p in _parts(tmp_path)] == ["hour=2024-05-01T10", "hour=2024-05-01T11"]
    df = read_prediction_log(tmp_path, "iris", "1")
    assert list(df["request_id"]) == ["late", "early"]
    assert [t.timestamp() for t in df["time"]] == pytest.approx([before, after])


def test_reader_filters_by_version_and_since_and_strips_prefixes(tmp_path):
    v1 = PredictionLog(tmp_path, "iris", "1")
    v1.submit("a", T0, {"x": [1.5, 2.5], "city": ["oslo", "rome"]}, ["setosa", "virginica"], [[0.9, 0.1], [0.2, 0.8]])
    v1.submit("e", T0 + 1, {"x": [0.5]}, ["setosa"])  # lacks "city" and probabilities, same file as "a"
    v1.submit("b", T0 + 3600, {"x": [3.5]}, ["setosa"])  # lacks them too, and sits in the next hour
    v1.close()
    v2 = PredictionLog(tmp_path, "iris", "2")
    v2.submit("c", T0 + 60, {"x": [4.5], "city": ["lima"], "mixed": [1]}, ["versicolor"])
    v2.submit("d", T0 + 120, {"x": [5.5], "city": ["kyiv"], "mixed": ["one"]}, ["versicolor"])
    v2.close()

    one = read_prediction_log(tmp_path, "iris", "1")
    assert list(one["request_id"]) == ["a", "a", "e", "b"] and list(one["row"]) == [0, 1, 0, 0]
    assert one["input.city"].isna().tolist() == [False, False, True, True]
    assert one["probability"].isna().tolist() == [False, False, True, True]
    assert list(one.loc[1, "probability"]) == [0.2, 0.8]

    both = read_prediction_log(tmp_path, "iris")
    assert list(both["request_id"]) == ["a", "a", "e", "c", "d", "b"]
    assert set(both["version"]) == {"1", "2"}

    since = datetime.fromtimestamp(T0 + 90, UTC)
    assert list(read_prediction_log(tmp_path, "iris", since=since)["request_id"]) == ["d", "b"]
    naive = since.replace(tzinfo=None)  # naive means UTC
    assert list(read_prediction_log(tmp_path, "iris", "2", since=naive)["request_id"]) == ["d"]
    later = datetime.fromtimestamp(T0 + 7200, UTC)
    assert read_prediction_log(tmp_path, "iris", since=later).empty

    inputs = inputs_frame(read_prediction_log(tmp_path, "iris", "2"))
    assert list(inputs.columns) == ["x", "city", "mixed"]
    assert list(inputs["mixed"]) == ["1", "one"]  # mixed values become strings
    assert list(inputs["city"]) == ["lima", "kyiv"]

    empty = read_prediction_log(tmp_path, "no-such-model")
    assert empty.empty
    assert list(empty.columns) == list(BASE_COLUMNS)


def test_write_error_is_retried_once_then_counted_as_lost(tmp_path):
    blocked = tmp_path / "disk"
    blocked.write_text("a file where the log folder should be")

    # Recovers: the failed batch is kept and written by the next flush.
    plog = PredictionLog(blocked, "iris", "1", batch_rows=1, flush_interval_s=60)
    plog.start()
    plog.submit("a", T0, {"x": [1]}, [0])
    _wait_for(lambda: plog.stats()["write_errors"] == 1)
    blocked.unlink()
    blocked.mkdir()
    plog.submit("b", T0, {"x": [2]}, [0])
    _wait_for(lambda: plog.stats()["written_requests"] == 2)  # the writer thread survived the error
    plog.close()
    assert sorted(read_prediction_log(blocked, "iris")["request_id"]) == ["a", "b"]
    assert plog.stats()["lost"] == 0

    # Stays broken: one retry, then the rows are dropped and counted.
    broken = tmp_path / "broken"
    broken.write_text("not a folder")
    plog = PredictionLog(broken, "iris", "1", batch_rows=1, flush_interval_s=60)
    plog.start()
    plog.submit("c", T0, {"x": [1, 2]}, [0, 1])
    _wait_for(lambda: plog.stats()["write_errors"] == 1)
    plog.close()
    stats = plog.stats()
    assert stats["write_errors"] == 2 and stats["lost"] == 1 and stats["lost_rows"] == 2
    assert stats["written_rows"] == 0 and stats["queued"] == 0
    _stats_add_up(stats)


def test_rejects_malformed_requests_and_unsafe_names(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1")
    with pytest.raises(ValueError):
        plog.submit("a", T0, {"x": [1, 2]}, [0])
    with pytest.raises(ValueError):
        PredictionLog(tmp_path, "../etc", "1")
    plog.close()
    assert plog.stats()["submitted"] == 0


def test_queue_bounded_in_bytes_drops_and_counts_without_blocking(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1", max_queue=1000, max_queue_bytes=10_000)
    big = {"x": np.zeros(500)}  # 4 kB of inputs and 4 kB of predictions: one fits, two do not
    results = [plog.submit(f"r{i}", T0, big, np.zeros(500)) for i in range(3)]
    assert results == [True, False, False]
    small = [plog.submit(f"s{i}", T0, {"x": [1.0]}, [0], size_bytes=100) for i in range(30)]
    assert small.count(True) == 20  # 8 kB + 20 × 100 B fill the 10 kB
    stats = plog.stats()
    assert stats["dropped"] == 2 + 10 and stats["queued_bytes"] == 10_000
    plog.start()
    plog.close()
    stats = plog.stats()
    assert stats["queued_bytes"] == 0 and stats["written_requests"] == 21
    _stats_add_up(stats)
    # Once written, the bytes are free again.
    again = PredictionLog(tmp_path, "iris", "2", max_queue_bytes=10_000, flush_interval_s=0.05)
    again.start()
    for i in range(5):
        assert again.submit(f"r{i}", T0, big, np.zeros(500))
        _wait_for(lambda: again.stats()["queued_bytes"] == 0)
    again.close()


def test_logs_the_prediction_id_and_trace_id_of_each_request(tmp_path):
    plog = PredictionLog(tmp_path, "iris", "1")
    plog.submit("same", T0, {"x": [1.0, 2.0]}, [0, 1], prediction_id="p1", trace_id="t1")
    plog.submit("same", T0 + 1, {"x": [3.0]}, [1], prediction_id="p2")
    plog.close()
    df = read_prediction_log(tmp_path, "iris", "1")
    assert set(BASE_COLUMNS) <= set(df.columns)
    assert list(df["prediction_id"]) == ["p1", "p1", "p2"] and list(df["row"]) == [0, 1, 0]
    assert list(df["trace_id"].fillna("-")) == ["t1", "t1", "-"]


def _hour(root: Path, version: str, moment: datetime, rows: int = 2) -> Path:
    plog = PredictionLog(root, "iris", version)
    plog.submit(f"at-{moment:%d%H}", moment.timestamp(), {"x": [1.0] * rows}, [0] * rows)
    plog.close()
    return root / "model=iris" / f"version={version}" / f"hour={moment:%Y-%m-%dT%H}"


def test_prune_deletes_partitions_past_retention_after_recording_them(tmp_path):
    now = datetime(2024, 5, 20, 12, 30, tzinfo=UTC)
    old = [_hour(tmp_path, "1", now - timedelta(days=9)), _hour(tmp_path, "2", now - timedelta(days=8), rows=3)]
    edge = _hour(tmp_path, "2", now - timedelta(days=7, minutes=30))  # ends 30 min after the cutoff
    fresh = _hour(tmp_path, "2", now - timedelta(hours=1))
    other_model = PredictionLog(tmp_path, "wine", "1")
    other_model.submit("w", (now - timedelta(days=30)).timestamp(), {"x": [1.0]}, [0])
    other_model.close()
    recorded = []
    pruned = prune_partitions(tmp_path, "iris", now - timedelta(days=7), lambda v, d: recorded.append((v, d)))
    assert not any(p.exists() for p in old) and edge.exists() and fresh.exists()
    assert [v for v, _ in recorded] == ["1", "2"] and set(pruned) == {"1", "2"}
    details = dict(recorded)["2"]
    assert details["partitions"] == [old[1].relative_to(tmp_path).as_posix()]
    assert details["files"] == 1 and details["rows"] == 3 and details["bytes"] > 0
    assert list((tmp_path / "model=wine").rglob("*.parquet"))  # another model's log is not this server's
    assert not [p for p in tmp_path.rglob(".pruning-*")]
    assert prune_partitions(tmp_path, "iris", now - timedelta(days=7)) == {}


def test_prune_puts_partitions_back_when_recording_fails(tmp_path):
    now = datetime(2024, 5, 20, 12, 30, tzinfo=UTC)
    old = _hour(tmp_path, "1", now - timedelta(days=9))

    def refuse(version, details):
        raise OSError("ledger unavailable")

    with pytest.raises(OSError):
        prune_partitions(tmp_path, "iris", now - timedelta(days=7), refuse)
    assert old.exists() and len(read_prediction_log(tmp_path, "iris")) == 2


def test_the_writer_prunes_at_start_and_keeps_writing(tmp_path):
    old = _hour(tmp_path, "1", datetime.now(UTC) - timedelta(days=3))
    recorded = []
    plog = PredictionLog(tmp_path, "iris", "1", retention_s=86400, flush_interval_s=0.05,
                         on_prune=lambda v, d: recorded.append(d))
    plog.start()
    _wait_for(lambda: plog.stats()["pruned_partitions"] == 1)
    assert not old.exists() and recorded[0]["rows"] == 2
    plog.submit("new", time.time(), {"x": [1.0]}, [0])
    plog.close()
    assert list(read_prediction_log(tmp_path, "iris")["request_id"]) == ["new"]
