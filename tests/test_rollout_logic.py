"""The pure parts of rollouts: slot layouts for weights, metric parsing, quantiles, PSI,
agreement and gate verdicts — no servers needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deployments import gates as g
from deployments.traffic.nginx import SLOTS, render_model_conf, slot_counts, slot_layout
from modelyard.spec import GateSpec, RolloutSpec, SpecError, parse_spec


@pytest.mark.parametrize("canary", [5, 10, 25, 50, 90])
def test_slot_layout_matches_weights_and_spreads_the_minority(canary: int):
    layout = slot_layout({"1": 100 - canary, "2": canary})
    assert len(layout) == SLOTS
    assert layout.count("2") == round(canary * SLOTS / 100)
    if canary <= 50:  # the minority is never in two neighbouring slots
        positions = [i for i, v in enumerate(layout) if v == "2"]
        assert all(b - a > 1 for a, b in zip(positions, positions[1:], strict=False))


def test_slot_counts_give_every_positive_backend_a_slot_and_refuse_bad_weights():
    assert slot_counts({"1": 99, "2": 1}) == {"1": SLOTS - 1, "2": 1}
    assert slot_counts({"1": 100, "2": 0}) == {"1": SLOTS}
    for bad in ({"1": 50}, {"1": 120, "2": -20}, {}):
        with pytest.raises(ValueError, match="summing to 100"):
            slot_counts(bad)


def test_model_conf_routes_through_slots_and_mirrors_to_the_shadow_slot(tmp_path):
    conf = render_model_conf("fraud", "127.0.0.1", 8100, tmp_path)
    assert conf.count("server unix:") == SLOTS + 1
    assert "mirror /_modelyard_shadow;" in conf and "listen 127.0.0.1:8100;" in conf
    assert "non_idempotent" in conf and "X-Request-ID $modelyard_request_id" in conf


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


def test_metrics_window_counts_inference_only_and_estimates_p99():
    before = g.MetricsSnapshot({}, {})
    after = g.parse_metrics(METRICS)
    assert after.by_status == {200: 90, 500: 10}
    window = g.service_window(before, after)
    assert window.requests == 100 and window.error_rate == pytest.approx(0.1)
    assert window.p99_ms == pytest.approx(10.0)  # the 99th of 100 is the top of the 10 ms bucket
    assert g.histogram_quantile(0.5, {0.001: 50, 0.01: 99, math.inf: 100}) == pytest.approx(0.001)
    assert g.histogram_quantile(0.99, {math.inf: 0}) is None


def _window(fast: int, slow: int, fast_s: float, slow_s: float) -> g.ServiceWindow:
    """``fast`` requests under ``fast_s`` and ``slow`` under ``slow_s``, as a scraped histogram."""
    bounds = sorted({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf})
    cumulative = {b: (fast if b >= fast_s else 0) + (slow if b >= slow_s else 0) for b in bounds}
    return g.service_window(g.MetricsSnapshot({}, {}), g.MetricsSnapshot({200: fast + slow}, cumulative))


def test_latency_is_compared_at_the_tail_the_window_can_estimate():
    spec = GateSpec(min_requests=20, max_p99_ratio=3.0)
    assert g.supported_quantile(40) == 0.75 and g.supported_quantile(1000) == 0.99 and g.supported_quantile(5) == 0.5
    serving = _window(400, 0, 0.0025, 1.0)
    # 41 requests, one of them cold (25 ms) among 2.5 ms ones: its "p99" is that one request.
    cold_start = _window(40, 1, 0.0025, 0.025)
    assert cold_start.p99_ms > 3 * serving.p99_ms
    gate = next(r for r in g.judge(spec, cold_start, serving, None) if r.gate == "p99_ratio")
    assert gate.ok and "at p76: 41 requests" in gate.describe()
    # A version slower on every request is still refused at that quantile.
    slow = next(r for r in g.judge(spec, _window(0, 41, 0.0025, 0.025), serving, None) if r.gate == "p99_ratio")
    assert not slow.ok and slow.value >= 3
    # With enough requests, it is the p99 itself: 2% slow requests fail it.
    tail = next(r for r in g.judge(spec, _window(1960, 40, 0.0025, 0.025), _window(2000, 0, 0.0025, 1.0), None)
                if r.gate == "p99_ratio")
    assert tail.note == "" and not tail.ok


def test_psi_and_agreement_see_a_shift_and_ignore_noise():
    rng = np.random.default_rng(0)
    same = rng.normal(size=5000)
    assert g.psi(same, rng.normal(size=5000), categorical=False) < 0.05
    assert g.psi(same, rng.normal(1.0, size=5000), categorical=False) > 0.25
    assert g.psi(np.array([0] * 95 + [1] * 5), np.array([0] * 50 + [1] * 50), categorical=True) > 0.25
    assert g.agreement(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), True, 0) == 0.75
    assert g.agreement(np.array([100.0, 10.0]), np.array([105.0, 20.0]), False, 0.1) == 0.5


def test_judge_names_each_failed_gate():
    spec = GateSpec(min_requests=20, max_error_rate=0.01, max_p99_ratio=3.0, min_agreement=0.9)
    healthy = g.ServiceWindow(200, 0, 2.0)
    assert all(r.ok for r in g.judge(spec, healthy, g.ServiceWindow(800, 0, 1.5), g.ModelWindow(200, 1.0, 0.0)))
    failing = g.judge(spec, g.ServiceWindow(200, 40, 60.0), g.ServiceWindow(800, 0, 2.0), g.ModelWindow(200, 0.5, 1.0))
    assert {r.gate for r in failing if not r.ok} == {"error_rate", "p99_ratio", "agreement", "prediction_psi"}
    assert "error_rate 0.2 (limit 0.01) FAILED" in g.failures(failing)
    too_few = g.judge(spec, g.ServiceWindow(3, 0, 1.0), None, None)
    assert [r.gate for r in too_few if not r.ok] == ["requests"]


def test_rollout_steps_must_rise_to_100():
    assert RolloutSpec(steps=[5, 50, 100]).steps[-1] == 100
    base = {"name": "m", "task": "regression", "data": {"source": "x.csv", "target": "y"}, "metrics": {"primary": "rmse"}}
    with pytest.raises(SpecError, match="serving.rollout"):
        parse_spec({**base, "serving": {"rollout": {"steps": [50, 10]}}})


def test_reconciler_emits_only_what_the_deploy_path_never_handled():
    from deployments.reconcile import alias_event, missed_deploys

    champions = {"a": "3", "b": "2", "c": "5", "d": "1", "e": "4"}
    serving = {"a": "2", "b": "2", "c": "4", "d": None, "e": "3"}
    handled = {"a": {"2"}, "b": {"2"}, "c": {"4", "5"}, "e": {"3"}}  # c v5 was refused
    missed = missed_deploys(champions, serving, handled, busy={"e"})
    assert [(m.model, m.version, m.serving) for m in missed] == [("a", "3", "2"), ("d", "1", None)]
    event = alias_event("a", "3")
    assert event["event"] == "modelyard.registry.model_version_alias.created"
    assert event["resource"]["mlflow.alias"] == "champion" and event["resource"]["prefect.resource.id"] == "mlflow.model.a.version.3"


def test_reconciler_leaves_versions_whose_event_is_on_its_way():
    from datetime import UTC, datetime, timedelta

    from deployments.reconcile import recently_in_flight

    now = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        {"action": "registry.event.emitted", "subject": "mlflow.model.fraud.v2.version.7", "time": (now - timedelta(seconds=30)).isoformat()},
        {"action": "deploy.started", "subject": "bc/3", "time": (now - timedelta(seconds=90)).isoformat()},
        {"action": "deploy.started", "subject": "bc/2", "time": (now - timedelta(hours=2)).isoformat()},
        {"action": "data.validated", "subject": "bc/4", "time": now.isoformat()},
    ]
    assert recently_in_flight(records, now, grace_s=600) == {"fraud.v2": {"7"}, "bc": {"3"}}


def test_a_kubernetes_rollout_without_a_cluster_fails_with_the_reason(tmp_path):
    """No cluster runs here: the real client finds no credentials, and the rollout says so
    instead of pretending (the rendered objects are schema-checked in test_kubernetes.py)."""
    from deployments.strategies import RolloutFailed, kubernetes_blue_green
    from deployments.targets.kubernetes import KubernetesTarget
    from modelyard.settings import Settings

    from pathlib import Path

    from modelyard.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "specs" / "fraud.yaml")
    settings = Settings(state_dir=tmp_path, kubernetes_context="no-such-context")
    target = KubernetesTarget(settings, lambda model: spec)
    with pytest.raises(RolloutFailed, match="no-such-context"):
        kubernetes_blue_green(settings, "fraud", "3", target)


def test_kpis_follow_the_ledger_alert_to_recovery():
    from tasks.kpis import delivery_kpis, recovery_for

    def rec(t: int, action: str, subject: str, **details) -> dict:
        return {"time": f"2026-01-01T00:{t // 60:02d}:{t % 60:02d}+00:00", "action": action, "subject": subject, "details": details}

    records = [
        rec(0, "deploy.started", "m/1"), rec(5, "deploy.succeeded", "m/1", timeline=[{"step": "switched"}]),
        rec(100, "monitor.drift.detected", "m/1", window_start="2026-01-01T00:01:00+00:00"),
        rec(102, "retrain.started", "m"), rec(160, "retrain.finished", "m/2", outcome="promoted"),
        rec(162, "deploy.started", "m/2"),
        rec(200, "deploy.rolled_back", "m/3", reason="error_rate"),
    ]
    recovery = recovery_for(records, "m", "2", serving_at=records[5]["time"] and 1767225790.0)
    assert recovery["alert"] == "monitor.drift.detected" and recovery["mttd_s"] == 40
    assert recovery["retrain_s"] == 58
    records.append(rec(190, "kpi.recovered", "m/2", **recovery))
    records.append(rec(191, "deploy.succeeded", "m/2", timeline=[{"step": "switched"}]))
    numbers = delivery_kpis(records, "m")
    assert numbers["deployments"] == 2 and numbers["rollbacks"] == 1 and numbers["automatic_rollbacks"] == 1
    assert numbers["success_rate"] == 2 / 3 and numbers["recoveries"] == 1 and numbers["mttd_s"] == 40
