"""The pure parts of rollouts: slot layouts for weights, the router's configuration, the rollout
plan in the spec, and a Kubernetes rollout without a cluster — no servers needed (gate verdicts:
test_gates.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.traffic.nginx import SLOTS, render_model_conf, slot_counts, slot_layout
from modelyard.settings import Settings
from modelyard.spec import RolloutSpec, SpecError, load_spec, parse_spec


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


def test_rollout_steps_must_rise_to_100():
    assert RolloutSpec(steps=[5, 50, 100]).steps[-1] == 100
    base = {"name": "m", "team": "t", "task": "regression", "data": {"source": "x.csv", "target": "y"}, "metrics": {"primary": "rmse"}}
    with pytest.raises(SpecError, match="serving.rollout"):
        parse_spec({**base, "serving": {"rollout": {"steps": [50, 10]}}})


def test_a_kubernetes_rollout_without_a_cluster_fails_with_the_reason(tmp_path):
    """No cluster runs here: the real client finds no credentials, and the rollout says so
    instead of pretending (the rendered objects are schema-checked in test_kubernetes.py)."""
    from deployments.strategies import RolloutFailed, kubernetes_blue_green
    from deployments.targets.kubernetes import KubernetesTarget

    spec = load_spec(Path(__file__).resolve().parents[2] / "specs" / "fraud.yaml")
    settings = Settings(state_dir=tmp_path, kubernetes_context="no-such-context")
    target = KubernetesTarget(settings, lambda model: spec)
    with pytest.raises(RolloutFailed, match="no-such-context"):
        kubernetes_blue_green(settings, "fraud", "3", target)
