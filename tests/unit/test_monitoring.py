"""The monitor's judgement as plain functions: which alerts a window raises, the performance
verdict once delayed labels arrive, the service verdict between two scrapes, and what one
monitor run leaves for the next — no Prefect, no servers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from modelyard.catalog import Event
from modelyard.spec import parse_spec
from tasks.monitoring import (
    INSUFFICIENT_DATA, PerformanceVerdict, ServiceVerdict, WindowVerdict, decide_alerts, join_labels,
    next_monitor_state, performance_verdict, read_labels, service_verdict,
)


def _spec(task: str = "binary_classification", primary: str = "accuracy", **monitoring):
    return parse_spec({"name": "fraud", "team": "t", "task": task, "data": {"source": "x.csv", "target": "is_fraud"},
                       "metrics": {"primary": primary}, "policy": {"allow_any": True},
                       "monitoring": {"min_labelled_rows": 4, "max_performance_drop": 0.05, **monitoring}})


SPEC = _spec()


def _verdict(**judged) -> WindowVerdict:
    return WindowVerdict("fraud", "3", "2026-11-26T10:00:00+00:00", "2026-11-26T10:05:00+00:00", 2400, "ok", **judged)


def _drift(drifted: list[str], calm: list[str], prediction_drifted: bool = False) -> dict:
    features = [{"column": c, "drifted": True} for c in drifted] + [{"column": c, "drifted": False} for c in calm]
    n = len(features)
    return {"dataset_drift": len(drifted) / n >= 0.5, "drift_share": len(drifted) / n, "drifted_columns": len(drifted),
            "n_columns": n, "features": features, "prediction": {"drifted": prediction_drifted}}


DEGRADED = PerformanceVerdict(400, "roc_auc", 0.71, 0.90, 0.19, True)
HEALTHY = PerformanceVerdict(400, "roc_auc", 0.89, 0.90, 0.01, False)


# --- alerts -------------------------------------------------------------------------------

def test_calm_window_raises_no_alert():
    verdict = _verdict(data_valid=True, drift=_drift([], ["amount", "hour"]), performance=HEALTHY,
                       service=ServiceVerdict(500, 0.0, 12.0, False))
    assert decide_alerts(verdict, SPEC, fresh_version=False) == []


def test_invalid_data_raises_only_data_invalid_even_with_drift_and_bad_performance():
    failures = [{"column": f"c{i}", "expectation": "expect_column_values_to_be_between"} for i in range(7)]
    verdict = _verdict(data_valid=False, validation={"failed": 7, "failures": failures},
                       drift=_drift(["amount", "hour"], ["country"]), performance=DEGRADED)
    [alert] = decide_alerts(verdict, SPEC, fresh_version=False)
    assert alert.event == Event.DATA_INVALID and alert.reason == "7 expectations failed on live data"
    assert alert.numbers["failed"] == 7 and alert.numbers["failures"] == failures[:5]


def test_dataset_drift_raises_drift_naming_the_drifted_features():
    verdict = _verdict(data_valid=True, drift=_drift(["amount", "hour", "channel"], ["country", "device"]))
    [alert] = decide_alerts(verdict, SPEC, fresh_version=False)
    assert alert.event == Event.DRIFT_DETECTED and alert.reason == "3 of 5 features drifted (share 0.60)"
    assert alert.numbers["top_features"] == ["amount", "hour", "channel"]
    assert alert.numbers["drift_share"] == 0.6 and alert.numbers["prediction_drift"] is False


def test_prediction_drift_alone_raises_drift():
    verdict = _verdict(data_valid=True, drift=_drift(["amount"], ["hour", "country", "device"], prediction_drifted=True))
    [alert] = decide_alerts(verdict, SPEC, fresh_version=False)
    assert alert.event == Event.DRIFT_DETECTED and alert.numbers["prediction_drift"] is True


def test_degraded_performance_raises_performance_with_its_numbers():
    [alert] = decide_alerts(_verdict(data_valid=True, performance=DEGRADED), SPEC, fresh_version=False)
    assert alert.event == Event.PERFORMANCE_DEGRADED and alert.reason == "roc_auc 0.7100 vs 0.9000 at evaluation"
    assert (alert.numbers["value"], alert.numbers["baseline"], alert.numbers["labelled_rows"]) == (0.71, 0.90, 400)


def test_degraded_service_raises_service_and_says_whether_the_version_is_fresh():
    service = ServiceVerdict(500, 0.2, 40.0, True)
    [fresh] = decide_alerts(_verdict(service=service), SPEC, fresh_version=True)
    assert fresh.event == Event.SERVICE_DEGRADED and fresh.reason == "error rate 0.200, p99 40.0 ms"
    assert fresh.numbers["fresh_version"] is True
    [old] = decide_alerts(_verdict(service=service), SPEC, fresh_version=False)
    assert old.numbers["fresh_version"] is False


def test_every_alert_of_a_window_is_raised_and_names_the_window():
    verdict = _verdict(data_valid=True, drift=_drift(["amount", "hour"], ["country"]), performance=DEGRADED,
                       service=ServiceVerdict(500, 0.2, 40.0, True))
    alerts = decide_alerts(verdict, SPEC, fresh_version=False)
    assert [a.event for a in alerts] == [Event.DRIFT_DETECTED, Event.PERFORMANCE_DEGRADED, Event.SERVICE_DEGRADED]
    for alert in alerts:
        assert alert.numbers["model"] == "fraud" and alert.numbers["version"] == "3"
        assert alert.numbers["window_start"] == "2026-11-26T10:00:00+00:00" and alert.numbers["rows"] == 2400


# --- performance on delayed labels ---------------------------------------------------------

def _window(predictions: list[int], probabilities: list[float] | None = None) -> pd.DataFrame:
    window = pd.DataFrame({"request_id": [f"r{i}" for i in range(len(predictions))],
                           "prediction_id": [f"p{i}" for i in range(len(predictions))],
                           "row": 0, "prediction": predictions})
    if probabilities is not None:
        window["probability"] = [[1 - p, p] for p in probabilities]
    return window


def _labels(truth: list[int], rows: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"prediction_id": [f"p{i}" for i in range(len(truth))],
                         "row": pd.array(rows if rows is not None else [pd.NA] * len(truth), dtype="Int64"),
                         "is_fraud": truth})


def test_labels_matching_the_predictions_keep_the_evaluation_baseline():
    verdict = performance_verdict(_window([0, 1, 0, 1, 0]), _labels([0, 1, 0, 1, 0]), SPEC, {"accuracy": 0.95})
    assert (verdict.rows, verdict.value, verdict.degraded) == (5, 1.0, False)
    assert verdict.drop == pytest.approx(-0.05)


def test_a_drop_beyond_the_allowance_is_degraded():
    verdict = performance_verdict(_window([0, 1, 0, 1, 0]), _labels([0, 1, 1, 1, 1]), SPEC, {"accuracy": 0.95})
    assert verdict.value == pytest.approx(0.6) and verdict.drop == pytest.approx(0.35) and verdict.degraded


def test_a_drop_within_the_allowance_is_not_degraded():
    verdict = performance_verdict(_window([0] * 20), _labels([0] * 19 + [1]), SPEC, {"accuracy": 0.97})
    assert verdict.value == pytest.approx(0.95) and verdict.drop == pytest.approx(0.02) and not verdict.degraded


def test_too_few_labelled_rows_give_no_verdict_yet():
    verdict = performance_verdict(_window([0, 1, 0, 1, 0]), _labels([1, 0, 1]), SPEC, {"accuracy": 0.95})
    assert verdict.rows == 3 and verdict.value is None and not verdict.degraded


def test_only_requests_with_a_label_are_judged():
    labels = _labels([0, 1, 0, 1, 0, 1]).iloc[[0, 2, 3, 5]]
    verdict = performance_verdict(_window([0, 1, 0, 1, 0, 1]), labels, SPEC, {"accuracy": 0.9})
    assert verdict.rows == 4 and verdict.value == 1.0


def test_ranking_metric_uses_the_logged_probabilities():
    spec = _spec(primary="roc_auc")
    window = _window([0, 0, 1, 1, 0, 1], probabilities=[0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    verdict = performance_verdict(window, _labels([0, 0, 1, 1, 0, 1]), spec, {"roc_auc": 0.95})
    assert verdict.value == pytest.approx(8 / 9) and verdict.degraded  # one positive ranked under a negative


def test_labels_of_one_class_only_give_no_auc_and_no_false_alarm():
    spec = _spec(primary="roc_auc")
    window = _window([0, 0, 1, 1], probabilities=[0.1, 0.4, 0.6, 0.8])
    verdict = performance_verdict(window, _labels([1, 1, 1, 1]), spec, {"roc_auc": 0.95})
    assert verdict.value is None and not verdict.degraded


def test_error_metric_that_rises_degrades_a_regression_model():
    spec = _spec(task="regression", primary="rmse", max_performance_drop=1.0)
    window = pd.DataFrame({"prediction_id": ["a", "b", "c", "d"], "row": 0, "prediction": [10.0, 20.0, 30.0, 40.0]})
    labels = pd.DataFrame({"prediction_id": ["a", "b", "c", "d"], "row": pd.array([pd.NA] * 4, dtype="Int64"),
                           "is_fraud": [12.0, 22.0, 32.0, 42.0]})
    verdict = performance_verdict(window, labels, spec, {"rmse": 0.5})
    assert verdict.value == pytest.approx(2.0) and verdict.drop == pytest.approx(1.5) and verdict.degraded


def test_metric_missing_from_the_baseline_gives_no_drop():
    verdict = performance_verdict(_window([0, 1, 0, 1, 0]), _labels([1, 1, 1, 1, 1]), SPEC, {})
    assert verdict.value == pytest.approx(0.4) and verdict.drop is None and not verdict.degraded


# --- labels join on the server's prediction id -------------------------------------------------

def test_a_repeated_client_request_id_never_pairs_a_label_with_the_wrong_row():
    """Two requests sent with the same X-Request-ID: each label reaches its own prediction."""
    window = pd.DataFrame({"request_id": ["tx-1", "tx-1", "tx-2"], "prediction_id": ["p-a", "p-b", "p-c"],
                           "row": 0, "prediction": [0, 1, 1]})
    labels = pd.DataFrame({"prediction_id": ["p-b", "p-a", "p-c"], "row": pd.array([pd.NA] * 3, dtype="Int64"),
                           "is_fraud": [1, 0, 1]})
    joined = join_labels(window, labels, "is_fraud")
    assert sorted(zip(joined["prediction_id"], joined["is_fraud"])) == [("p-a", 0), ("p-b", 1), ("p-c", 1)]
    verdict = performance_verdict(window, labels, _spec(min_labelled_rows=3), {"accuracy": 1.0})
    assert verdict.rows == 3 and verdict.value == 1.0 and not verdict.degraded


def test_labels_of_a_request_of_several_rows_need_the_row():
    window = pd.DataFrame({"prediction_id": ["p1", "p1", "p2"], "row": [0, 1, 0], "prediction": [0, 1, 1]})
    rowless = pd.DataFrame({"prediction_id": ["p1", "p2"], "row": pd.array([pd.NA, pd.NA], dtype="Int64"),
                            "is_fraud": [1, 1]})
    joined = join_labels(window, rowless, "is_fraud")
    assert list(joined["prediction_id"]) == ["p2"]  # which row of p1 the label meant is not known
    by_row = pd.DataFrame({"prediction_id": ["p1", "p1"], "row": pd.array([1, 0], dtype="Int64"), "is_fraud": [1, 0]})
    joined = join_labels(window, by_row, "is_fraud")
    assert sorted(zip(joined["row"], joined["prediction"], joined["is_fraud"])) == [(0, 0, 0), (1, 1, 1)]


def test_a_key_logged_twice_joins_nothing():
    window = pd.DataFrame({"prediction_id": ["p1", "p1", "p2"], "row": [0, 0, 0], "prediction": [0, 1, 1]})
    joined = join_labels(window, _labels([1, 1, 1]), "is_fraud")
    assert list(joined["prediction_id"]) == ["p2"]


def test_a_log_without_prediction_ids_gives_no_performance_verdict():
    """Fail closed: no falling back to the client's request id."""
    window = _window([0, 1, 0, 1, 0]).drop(columns="prediction_id")
    labels = _labels([0, 1, 0, 1, 0]).assign(request_id=[f"r{i}" for i in range(5)])
    verdict = performance_verdict(window, labels, SPEC, {"accuracy": 0.95})
    assert verdict.rows == 0 and verdict.value is None and not verdict.degraded


def test_label_files_keyed_by_request_id_only_are_refused_naming_prediction_id(tmp_path):
    pd.DataFrame({"request_id": ["r1"], "is_fraud": [1]}).to_parquet(tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"lack columns \['prediction_id'\].*X-Modelyard-Prediction-Id"):
        read_labels(tmp_path, "is_fraud")


def test_a_later_label_file_corrects_an_earlier_one(tmp_path):
    pd.DataFrame({"prediction_id": ["p0", "p1"], "is_fraud": [0, 0]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"prediction_id": ["p1"], "row": [0], "is_fraud": [1]}).to_csv(tmp_path / "b.csv", index=False)
    labels = read_labels(tmp_path, "is_fraud")
    joined = join_labels(_window([0, 1]), labels, "is_fraud")
    assert dict(zip(joined["prediction_id"], joined["is_fraud"])) == {"p0": 0, "p1": 1}
    assert read_labels(tmp_path / "none", "is_fraud").empty


def test_hex_prediction_ids_that_look_like_numbers_survive_a_csv_file(tmp_path):
    ids = ["0123456789012345", "1e10"]  # read as numbers, they would lose a zero or become 1e10 = 10000000000.0
    pd.DataFrame({"prediction_id": ids, "is_fraud": [1, 0]}).to_csv(tmp_path / "labels.csv", index=False)
    assert list(read_labels(tmp_path, "is_fraud")["prediction_id"]) == ids


# --- service health between two scrapes ------------------------------------------------------

def _scrape(ok: int, errors: int, latency_s: float) -> dict:
    """A scrape as the monitor keeps it: ``ok + errors`` requests, all under ``latency_s``."""
    total = ok + errors
    buckets = {b: (total if b >= latency_s else 0) for b in (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, math.inf)}
    return {"by_status": {"200": ok, "500": errors}, "latency_buckets": {str(b): n for b, n in buckets.items()}}


def test_healthy_service_is_not_degraded():
    verdict = service_verdict(_scrape(100, 0, 0.005), _scrape(600, 1, 0.005), _spec())
    assert verdict.requests == 501 and verdict.error_rate == pytest.approx(1 / 501) and not verdict.degraded


def test_errors_above_the_limit_degrade_the_service():
    verdict = service_verdict(_scrape(100, 0, 0.005), _scrape(190, 10, 0.005), _spec(max_error_rate=0.01))
    assert verdict.error_rate == pytest.approx(0.1) and verdict.degraded


def test_slow_answers_degrade_the_service():
    verdict = service_verdict(None, _scrape(200, 0, 0.5), _spec(max_p99_ms=250))
    assert verdict.p99_ms > 250 and verdict.degraded
    assert not service_verdict(None, _scrape(200, 0, 0.5), _spec(max_p99_ms=1000)).degraded


def test_an_interval_without_requests_is_not_degraded():
    same = _scrape(100, 50, 0.5)
    verdict = service_verdict(same, same, _spec())
    assert verdict.requests == 0 and not verdict.degraded


# --- what one run leaves for the next --------------------------------------------------------

def test_next_window_starts_after_a_judged_one_and_rows_too_few_to_judge_wait_for_more():
    previous = {"version": "3", "window_end": "2026-11-26T10:00:00+00:00", "metrics": {"requests": 10}}
    judged = WindowVerdict("fraud", "3", "2026-11-26T10:00:01+00:00", "2026-11-26T10:01:00+00:00", 2400, "ok")
    state = next_monitor_state(previous, judged, {"requests": 2410})
    assert state["window_end"] == "2026-11-26T10:01:00+00:00" and state["metrics"] == {"requests": 2410}
    assert state["version"] == "3" and "judged_at" in state

    too_few = WindowVerdict("fraud", "3", "2026-11-26T10:01:01+00:00", "2026-11-26T10:01:05+00:00", 12,
                            INSUFFICIENT_DATA)
    kept = next_monitor_state(state, too_few, None)
    assert kept["window_end"] == "2026-11-26T10:01:00+00:00"  # those 12 rows are judged with the next ones
    assert kept["metrics"] == {"requests": 2410}  # no scrape this time: rates stay relative to the last one


def test_verdict_is_json_safe_for_the_ledger_and_the_ui():
    verdict = _verdict(data_valid=True, performance=HEALTHY, service=ServiceVerdict(10, 0.0, np.float64(3.5), False))
    as_dict = verdict.as_dict()
    assert as_dict["performance"]["value"] == 0.89 and as_dict["service"]["p99_ms"] == 3.5


# --- a service that cannot be read ------------------------------------------------------------

def _few_rows() -> pd.DataFrame:
    times = pd.date_range("2026-11-26T10:00:00", periods=3, freq="s", tz="UTC")
    return pd.DataFrame({"time": times, "prediction": [0, 1, 0]})


def test_unreachable_metrics_are_a_service_problem_never_insufficient_data():
    from tasks.monitoring import open_verdict, unreachable_service

    verdict = open_verdict("fraud", "3", _few_rows(), unreachable_service("no replica of v3 answers its readiness check"),
                           min_rows=200)
    verdict.conclude(decide_alerts(verdict, SPEC, fresh_version=True))
    [alert] = verdict.alerts
    assert alert.event == Event.SERVICE_DEGRADED and verdict.status == "alert" != INSUFFICIENT_DATA
    assert alert.reason == "service unreachable: no replica of v3 answers its readiness check"
    assert alert.numbers["unreachable"] and alert.numbers["fresh_version"] is True


def test_a_model_with_few_rows_and_a_healthy_service_is_only_insufficient_data():
    from tasks.monitoring import open_verdict

    verdict = open_verdict("fraud", "3", _few_rows(), service_verdict(_scrape(10, 0, 0.005), _scrape(12, 0, 0.005),
                                                                      SPEC), min_rows=200)
    verdict.conclude(decide_alerts(verdict, SPEC, fresh_version=True))
    assert verdict.status == INSUFFICIENT_DATA and verdict.alerts == []


def test_an_unreachable_version_a_rollout_or_restore_holds_is_not_rolled_back_for_it():
    from tasks.monitoring import unreachable_service

    [alert] = decide_alerts(_verdict(service=unreachable_service("no replica ready", rollout_in_progress=True)), SPEC,
                            fresh_version=True)
    assert alert.numbers["fresh_version"] is False and alert.numbers["rollout_in_progress"] is True


def test_replica_windows_count_a_restarted_or_new_replica_from_zero_and_forget_a_gone_one():
    from tasks.monitoring import replica_window

    before = {"a": _scrape(100, 0, 0.005), "b": _scrape(500, 5, 0.005), "gone": _scrape(900, 90, 0.005)}
    after = {"a": _scrape(150, 0, 0.005), "b": _scrape(20, 1, 0.005), "new": _scrape(30, 0, 0.005)}
    then, now = replica_window(before, after)
    verdict = service_verdict(then, now, SPEC)
    assert verdict.requests == 50 + 21 + 30 and verdict.error_rate == pytest.approx(1 / 101)
    assert replica_window(_scrape(1, 0, 0.005), after)[0] == {"by_status": {}, "latency_buckets": {}}  # an older, merged scrape


def test_metrics_that_no_ready_replica_answers_are_reported_unreachable():
    from tasks.monitor_steps import MonitorPlan, service_task

    plan = MonitorPlan("fraud", "3", SPEC, "run", ["http://127.0.0.1:9"], None, {})
    verdict, metrics = service_task.fn(plan)
    assert verdict.degraded and metrics is None
    assert verdict.unreachable.startswith("/metrics of v3 did not answer on any ready replica: http://127.0.0.1:9")
    nothing_ready = MonitorPlan("fraud", "3", SPEC, "run", [], None, {}, unreachable="no replica of v3 answers")
    assert service_task.fn(nothing_ready)[0].unreachable == "no replica of v3 answers"
