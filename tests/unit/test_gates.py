"""Rollout gates as plain functions of numbers: what a canary's window must show (requests,
errors, latency against the serving version, agreement and prediction PSI on the same inputs)
before it gets more traffic, and the verdict with the gate that failed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from deployments import gates as g
from modelyard.resources.inference import MetricsSnapshot, parse_metrics
from modelyard.spec import GateSpec

METRICS = """# TYPE modelyard_requests_total counter
modelyard_requests_total{model="m",version="2",route="invocations",status="200"} 90
modelyard_requests_total{model="m",version="2",route="invocations",status="500"} 10
modelyard_requests_total{model="m",version="2",route="metrics",status="200"} 7
modelyard_requests_total{model="m",version="2",route="replay",status="200"} 50
modelyard_request_latency_seconds_bucket{model="m",version="2",le="0.001"} 50
modelyard_request_latency_seconds_bucket{model="m",version="2",le="0.01"} 99
modelyard_request_latency_seconds_bucket{model="m",version="2",le="0.1"} 100
modelyard_request_latency_seconds_bucket{model="m",version="2",le="+Inf"} 100
"""
GATES = GateSpec(min_requests=20, max_error_rate=0.01, max_p99_ratio=3.0, min_agreement=0.9, max_prediction_psi=0.25)


def _gate(results: list[g.GateResult], name: str) -> g.GateResult:
    return next(r for r in results if r.gate == name)


def _window(fast: int, slow: int, fast_s: float, slow_s: float) -> g.ServiceWindow:
    """``fast`` requests under ``fast_s`` and ``slow`` under ``slow_s``, as a scraped histogram."""
    bounds = sorted({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf})
    cumulative = {b: (fast if b >= fast_s else 0) + (slow if b >= slow_s else 0) for b in bounds}
    return g.service_window(MetricsSnapshot({}, {}), MetricsSnapshot({200: fast + slow}, cumulative))


# --- the service window -----------------------------------------------------------------

def test_metrics_window_counts_inference_only_and_estimates_p99():
    after = parse_metrics(METRICS)
    assert after.by_status == {200: 90, 500: 10}
    window = g.service_window(MetricsSnapshot({}, {}), after)
    assert window.requests == 100 and window.error_rate == pytest.approx(0.1)
    assert window.p99_ms == pytest.approx(10.0)  # the 99th of 100 is the top of the 10 ms bucket


def test_window_is_the_difference_between_two_scrapes():
    before = MetricsSnapshot({200: 40, 500: 1}, {0.01: 30, math.inf: 41})
    after = MetricsSnapshot({200: 140, 500: 1}, {0.01: 130, math.inf: 141})
    window = g.service_window(before, after)
    assert (window.requests, window.server_errors, window.error_rate) == (100, 0, 0.0)
    assert window.latency_buckets == {0.01: 100, math.inf: 100}


def test_client_errors_are_not_server_errors():
    window = g.service_window(MetricsSnapshot({}, {}), MetricsSnapshot({200: 90, 400: 8, 503: 2}, {}))
    assert window.requests == 100 and window.server_errors == 2 and window.error_rate == pytest.approx(0.02)


# --- quantiles ----------------------------------------------------------------------------

def test_histogram_quantile_interpolates_inside_its_bucket():
    cumulative = {0.01: 50, 0.02: 100, math.inf: 100}
    assert g.histogram_quantile(0.5, cumulative) == pytest.approx(0.01)
    assert g.histogram_quantile(0.75, cumulative) == pytest.approx(0.015)
    assert g.histogram_quantile(0.5, {0.001: 50, 0.01: 99, math.inf: 100}) == pytest.approx(0.001)


def test_histogram_quantile_in_the_open_bucket_is_the_last_finite_bound():
    assert g.histogram_quantile(0.99, {0.01: 50, math.inf: 100}) == pytest.approx(0.01)


def test_histogram_quantile_without_observations_is_none():
    assert g.histogram_quantile(0.99, {math.inf: 0}) is None
    assert g.histogram_quantile(0.5, {}) is None


@pytest.mark.parametrize(("requests", "quantile"), [(0, 0.5), (5, 0.5), (20, 0.5), (40, 0.75), (100, 0.9),
                                                    (1000, 0.99), (50_000, 0.99)])
def test_supported_quantile_keeps_ten_requests_above_it(requests: int, quantile: float):
    assert g.supported_quantile(requests) == pytest.approx(quantile)


def test_supported_quantile_never_exceeds_the_highest_asked():
    assert g.supported_quantile(10_000, highest=0.95) == pytest.approx(0.95)


# --- service gates ------------------------------------------------------------------------

def test_healthy_canary_passes_every_gate():
    results = g.judge(GATES, g.ServiceWindow(200, 0, 2.0), g.ServiceWindow(800, 0, 1.5), g.ModelWindow(200, 1.0, 0.0))
    assert [r.gate for r in results] == ["requests", "error_rate", "p99_ratio", "compared_rows", "agreement",
                                         "prediction_psi"]
    assert all(r.ok for r in results) and g.failures(results) == ""


def test_judge_names_each_failed_gate():
    failing = g.judge(GATES, g.ServiceWindow(200, 40, 60.0), g.ServiceWindow(800, 0, 2.0), g.ModelWindow(200, 0.5, 1.0))
    assert {r.gate for r in failing if not r.ok} == {"error_rate", "p99_ratio", "agreement", "prediction_psi"}
    assert "error_rate 0.2 (limit 0.01) FAILED" in g.failures(failing)
    assert "requests 200 (limit 20)" not in g.failures(failing)  # a passed gate is not listed


def test_too_few_requests_fail_only_the_request_gate():
    too_few = g.judge(GATES, g.ServiceWindow(3, 0, 1.0), None, g.ModelWindow(30, 1.0, 0.0))
    assert [r.gate for r in too_few if not r.ok] == ["requests"]
    assert _gate(too_few, "requests").value == 3 and _gate(too_few, "requests").threshold == 20


def test_error_rate_at_the_limit_passes_and_above_it_fails():
    assert _gate(g.judge(GATES, g.ServiceWindow(200, 2, 1.0), None, None), "error_rate").ok
    assert not _gate(g.judge(GATES, g.ServiceWindow(200, 3, 1.0), None, None), "error_rate").ok


def test_absolute_p99_ceiling_is_judged_only_when_set():
    assert "p99_ms" not in {r.gate for r in g.judge(GATES, g.ServiceWindow(100, 0, 900.0), None, None)}
    ceiling = GATES.model_copy(update={"max_p99_ms": 50.0})
    assert _gate(g.judge(ceiling, g.ServiceWindow(100, 0, 40.0), None, None), "p99_ms").ok
    assert not _gate(g.judge(ceiling, g.ServiceWindow(100, 0, 60.0), None, None), "p99_ms").ok
    assert not _gate(g.judge(ceiling, g.ServiceWindow(100, 0, None), None, None), "p99_ms").ok  # nothing measured


def test_slower_canary_fails_the_latency_ratio_against_the_serving_version():
    slow = _gate(g.judge(GATES, g.ServiceWindow(200, 0, 8.0), g.ServiceWindow(800, 0, 2.0), None), "p99_ratio")
    assert not slow.ok and slow.value == pytest.approx(4.0)
    close = _gate(g.judge(GATES, g.ServiceWindow(200, 0, 5.0), g.ServiceWindow(800, 0, 2.0), None), "p99_ratio")
    assert close.ok and close.value == pytest.approx(2.5)


def test_sub_millisecond_latencies_are_compared_from_one_millisecond():
    """0.9 ms against 0.1 ms is noise, not a nine-fold slowdown."""
    result = _gate(g.judge(GATES, g.ServiceWindow(200, 0, 0.9), g.ServiceWindow(800, 0, 0.1), None), "p99_ratio")
    assert result.ok and result.value == pytest.approx(1.0)


def test_latency_ratio_is_not_judged_without_serving_traffic():
    for serving in (None, g.ServiceWindow(0, 0, None)):
        assert "p99_ratio" not in {r.gate for r in g.judge(GATES, g.ServiceWindow(200, 0, 50.0), serving, None)}


def test_latency_is_compared_at_the_tail_the_window_can_estimate():
    spec = GateSpec(min_requests=20, max_p99_ratio=3.0)
    serving = _window(400, 0, 0.0025, 1.0)
    # 41 requests, one of them cold (25 ms) among 2.5 ms ones: its "p99" is that one request.
    cold_start = _window(40, 1, 0.0025, 0.025)
    assert cold_start.p99_ms > 3 * serving.p99_ms
    gate = _gate(g.judge(spec, cold_start, serving, None), "p99_ratio")
    assert gate.ok and "at p76: 41 requests" in gate.describe()
    # A version slower on every request is still refused at that quantile.
    slow = _gate(g.judge(spec, _window(0, 41, 0.0025, 0.025), serving, None), "p99_ratio")
    assert not slow.ok and slow.value >= 3
    # With enough requests, it is the p99 itself: 2% slow requests fail it.
    tail = _gate(g.judge(spec, _window(1960, 40, 0.0025, 0.025), _window(2000, 0, 0.0025, 1.0), None), "p99_ratio")
    assert tail.note == "" and not tail.ok


# --- model gates --------------------------------------------------------------------------

def test_a_canary_with_an_empty_prediction_log_fails_its_model_gates():
    """Fail closed: no logged predictions means no comparison, never a pass without one."""
    results = g.judge(GATES, g.ServiceWindow(200, 0, 2.0), g.ServiceWindow(800, 0, 1.5), None)
    failed = [r for r in results if not r.ok]
    assert [r.gate for r in failed] == ["compared_rows"]
    assert "compared_rows 0 (limit 20) [no logged predictions to compare] FAILED" in g.failures(results)


def test_model_gates_judged_on_fewer_rows_than_min_requests_fail():
    results = g.judge(GATES, g.ServiceWindow(200, 0, 2.0), None, g.ModelWindow(5, 1.0, 0.0))
    assert [r.gate for r in results if not r.ok] == ["compared_rows"]
    assert _gate(g.judge(GATES, g.ServiceWindow(200, 0, 2.0), None, g.ModelWindow(20, 1.0, 0.0)), "compared_rows").ok


def test_canary_that_answers_differently_fails_agreement_only():
    results = g.judge(GATES, g.ServiceWindow(200, 0, 2.0), None, g.ModelWindow(200, 0.8, 0.1))
    assert [r.gate for r in results if not r.ok] == ["agreement"]


def test_canary_whose_answers_shift_in_distribution_fails_prediction_psi_only():
    results = g.judge(GATES, g.ServiceWindow(200, 0, 2.0), None, g.ModelWindow(200, 0.95, 0.4))
    assert [r.gate for r in results if not r.ok] == ["prediction_psi"]


def test_psi_sees_a_shift_and_ignores_noise():
    rng = np.random.default_rng(0)
    same = rng.normal(size=5000)
    assert g.psi(same, same, categorical=False) == pytest.approx(0.0)
    assert g.psi(same, rng.normal(size=5000), categorical=False) < 0.05
    assert g.psi(same, rng.normal(1.0, size=5000), categorical=False) > 0.25
    assert g.psi(np.array([0] * 95 + [1] * 5), np.array([0] * 50 + [1] * 50), categorical=True) > 0.25


def test_psi_of_a_class_the_reference_never_gave_is_a_major_shift():
    assert g.psi(np.array(["a"] * 100), np.array(["a"] * 60 + ["b"] * 40), categorical=True) > 0.25


def test_psi_of_constant_or_empty_answers_is_defined():
    assert g.psi(np.ones(100), np.ones(100), categorical=False) == pytest.approx(0.0)
    assert g.psi(np.array([]), np.ones(10), categorical=False) == 0.0


def test_agreement_counts_the_same_class_or_a_close_enough_value():
    assert g.agreement(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), True, 0) == 0.75
    assert g.agreement(np.array([1, 0]), np.array(["1", "0"]), True, 0) == 1.0  # JSON may bring strings
    assert g.agreement(np.array([100.0, 10.0]), np.array([105.0, 20.0]), False, 0.1) == 0.5
    assert g.agreement(np.array([]), np.array([]), True, 0) == 1.0


def test_compare_predictions_gives_the_model_window():
    window = g.compare_predictions(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 1]), True, 0)
    assert window.rows == 4 and window.agreement == 0.75 and window.psi > 0


def test_psi_sees_a_shift_away_from_a_constant_reference():
    constant = np.full(500, 1.0)
    assert g.psi(constant, np.full(500, 1.0), categorical=False) == pytest.approx(0.0)
    assert g.psi(constant, np.full(500, 5.0), categorical=False) > 0.25
    assert g.psi(constant, np.full(500, -3.0), categorical=False) > 0.25


# --- shadow: the two logs paired by the router's trace id ----------------------------------

def _log(**columns) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    if "row" not in frame.columns:
        frame["row"] = 0
    return frame


def test_shadow_pairs_rows_by_trace_id_not_by_the_client_request_id():
    """Two clients sent the same X-Request-ID; the router's trace ids tell their rows apart."""
    served = _log(request_id=["dup", "dup", "x"], trace_id=["t1", "t2", "t3"], prediction=[0, 1, 1])
    shadowed = _log(request_id=["dup", "dup", "x"], trace_id=["t2", "t1", "t3"], prediction=[1, 0, 1])
    reference, candidate = g.shadow_pairs(served, shadowed)
    assert sorted(zip(reference.tolist(), candidate.tolist())) == [(0, 0), (1, 1), (1, 1)]
    assert g.compare_predictions(reference, candidate, True, 0).agreement == 1.0


def test_shadow_pairs_rows_of_one_request_by_row():
    served = _log(trace_id=["t1", "t1"], row=[0, 1], prediction=[0, 1])
    shadowed = _log(trace_id=["t1", "t1"], row=[1, 0], prediction=[1, 0])
    reference, candidate = g.shadow_pairs(served, shadowed)
    assert reference.tolist() == candidate.tolist() and len(reference) == 2


def test_shadow_never_pairs_an_ambiguous_or_missing_trace_id():
    served = _log(trace_id=["t1", "t1", None, "", "t4"], prediction=[0, 1, 0, 0, 1])
    shadowed = _log(trace_id=["t1", None, "", "t4"], prediction=[1, 0, 0, 1])
    reference, candidate = g.shadow_pairs(served, shadowed)
    assert reference.tolist() == [1] and candidate.tolist() == [1]  # only t4 pairs for certain


def test_shadow_logs_without_trace_ids_pair_nothing_and_fail_the_gates():
    """No fallback to the client's request id: without the router's id there is no comparison."""
    served = _log(request_id=["a", "b"], prediction=[0, 1])
    shadowed = _log(request_id=["a", "b"], prediction=[0, 1])
    reference, candidate = g.shadow_pairs(served, shadowed)
    assert len(reference) == len(candidate) == 0
    assert len(g.shadow_pairs(_log(trace_id=["t1"], prediction=[0]), pd.DataFrame())[0]) == 0


def test_canary_and_shadow_with_empty_prediction_logs_have_nothing_to_compare(tmp_path):
    """The strategies hand the gates no model window when the window's log is empty."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from deployments import strategies
    from modelyard.settings import Settings

    settings = Settings(state_dir=tmp_path)
    new, old = SimpleNamespace(version="2", url="http://unused"), SimpleNamespace(version="1", url="http://unused")
    since = datetime.now(UTC)
    assert strategies._compare_on_replay(settings, "m", new, old, since, True, GATES) is None
    assert strategies._compare_shadow(settings, "m", new, old, since, True, 0.1) is None
