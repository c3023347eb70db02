"""The model spec refuses what would fail open later: a name outside modelyard's one pattern, a
primary metric or policy metric the task never computes, an empty promotion policy, a monitoring window shorter than its interval — each
naming its field — and a deploy refuses a version whose stored spec no longer validates."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelyard.resources import registry
from modelyard.spec import TASK_METRICS, SpecError, load_spec, parse_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _raw(task: str = "binary_classification", primary: str = "roc_auc", **sections) -> dict:
    return {"name": "m", "team": "t", "task": task, "data": {"source": "x.csv", "target": "y"}, "metrics": {"primary": primary},
            "policy": {"min_metrics": {primary: 0.5}}} | sections


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates(path: Path):
    assert load_spec(path).name


# --- metrics the task computes -------------------------------------------------------------

def test_the_metric_names_are_the_ones_the_evaluation_computes():
    from tasks.evaluation import classification_metrics, regression_metrics

    y, proba = np.array([0, 1, 0, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    assert set(classification_metrics(y, y, proba, [0, 1])) == set(TASK_METRICS["binary_classification"])
    y3 = np.array([0, 1, 2, 0, 1, 2])
    proba3 = np.eye(3)[y3] * 0.7 + 0.1
    assert set(classification_metrics(y3, y3, proba3, [0, 1, 2])) == set(TASK_METRICS["multiclass_classification"])
    assert set(regression_metrics([1.0, 2.0, 3.0], [1.1, 2.1, 2.9])) == set(TASK_METRICS["regression"])


@pytest.mark.parametrize(("task", "primary"), [("binary_classification", "rmse"), ("regression", "roc_auc"),
                                               ("multiclass_classification", "average_precision"),
                                               ("binary_classification", "auc")])
def test_a_primary_metric_the_task_does_not_compute_is_refused(task: str, primary: str):
    with pytest.raises(SpecError, match=rf"metrics.primary: '{primary}' is not computed for {task}"):
        parse_spec(_raw(task, primary, policy={"allow_any": True}))


def test_a_policy_metric_the_task_does_not_compute_is_refused():
    with pytest.raises(SpecError, match=r"policy.min_metrics.mape: 'mape' is not computed for regression"):
        parse_spec(_raw("regression", "rmse", policy={"min_metrics": {"mape": 0.1}}))
    with pytest.raises(SpecError, match=r"policy.max_regression.rmse: 'rmse' is not computed for binary"):
        parse_spec(_raw(policy={"max_regression": {"rmse": 0.1}}))


def test_a_metric_the_task_computes_is_accepted():
    assert parse_spec(_raw("regression", "r2")).metrics.primary == "r2"
    assert parse_spec(_raw("multiclass_classification", "f1")).policy.min_metrics == {"f1": 0.5}


# --- the model's name ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a;}", "a\nb", 'a"b', "", "a" * 65, "a..b", ".a", 7])
def test_a_name_outside_the_one_pattern_is_refused_naming_the_field(name):
    with pytest.raises(SpecError, match=r"spec is invalid: name: .* is not a valid model name"):
        parse_spec(_raw() | {"name": name})


def test_a_name_in_the_pattern_is_kept_as_written():
    assert parse_spec(_raw() | {"name": "Fraud_Detector.v2"}).name == "Fraud_Detector.v2"


# --- the promotion policy ------------------------------------------------------------------

@pytest.mark.parametrize("policy", [None, {}, {"min_metrics": {}, "max_regression": {}}])
def test_an_empty_promotion_policy_is_refused(policy: dict | None):
    raw = _raw()
    if policy is None:
        del raw["policy"]
    else:
        raw["policy"] = policy
    with pytest.raises(SpecError, match=r"policy is empty: .*policy.allow_any: true"):
        parse_spec(raw)


def test_a_policy_that_allows_any_version_says_so():
    assert parse_spec(_raw(policy={"allow_any": True})).policy.allow_any
    assert not parse_spec(_raw(policy={"max_p95_latency_ms": 50})).policy.is_empty


# --- monitoring window and interval --------------------------------------------------------

def test_a_monitoring_window_shorter_than_its_interval_is_refused():
    with pytest.raises(SpecError, match=r"monitoring: .*monitoring.window_s \(300\) is shorter than "
                                        r"monitoring.interval_s \(600\)"):
        parse_spec(_raw(monitoring={"interval_s": 600, "window_s": 300}))
    with pytest.raises(SpecError, match=r"monitoring.window_s \(3600\)"):  # the default window
        parse_spec(_raw(monitoring={"interval_s": 7200}))


def test_a_monitoring_window_as_long_as_its_interval_is_accepted():
    assert parse_spec(_raw(monitoring={"interval_s": 600, "window_s": 600})).monitoring.window_s == 600


# --- a stored spec that no longer validates --------------------------------------------------

class _Client:
    """The registry calls ``version_spec`` makes, for one version with (or without) a spec."""

    def __init__(self, has_spec: bool) -> None:
        self.has_spec = has_spec

    def get_model_version(self, model: str, version: str):
        return SimpleNamespace(run_id="run-1")

    def list_artifacts(self, run_id: str, path: str):
        return [SimpleNamespace(path=registry.SPEC_ARTIFACT)] if self.has_spec else []


@pytest.fixture
def stored(monkeypatch) -> dict:
    """The spec artifact ``mlflow.artifacts.load_dict`` returns: edit it per test."""
    spec = parse_spec(_raw()).model_dump(mode="json")
    monkeypatch.setattr(registry.mlflow.artifacts, "load_dict", lambda uri: spec)
    return spec


def test_a_valid_stored_spec_is_read(stored: dict):
    assert registry.version_spec(_Client(True), "m", "3", strict=True).name == "m"


def test_a_stored_spec_that_no_longer_validates_raises_when_strict(stored: dict):
    stored["policy"] = {}  # a spec registered before an empty policy was an error
    with pytest.raises(SpecError, match=r"m v3 spec/spec.json is invalid: policy is empty"):
        registry.version_spec(_Client(True), "m", "3", strict=True)
    assert registry.version_spec(_Client(True), "m", "3") is None  # the lenient reading: no spec


def test_a_version_registered_without_a_spec_has_none_even_when_strict(monkeypatch):
    def unreadable(uri):
        raise OSError("no such artifact")

    monkeypatch.setattr(registry.mlflow.artifacts, "load_dict", unreadable)
    assert registry.version_spec(_Client(False), "m", "3", strict=True) is None
    with pytest.raises(OSError):  # listed but unreadable: an infrastructure failure, not "no spec"
        registry.version_spec(_Client(True), "m", "3", strict=True)


def test_the_deploy_plan_refuses_a_version_whose_spec_no_longer_validates(stored: dict):
    from deployments.strategies import RolloutFailed
    from tasks.deploying import serving_plan

    stored["monitoring"] = {"interval_s": 600, "window_s": 60}
    with pytest.raises(RolloutFailed, match=r"m v3 is refused: .*monitoring.window_s \(60\)") as refused:
        serving_plan(_Client(True), "m", "3", strict=True)
    assert refused.value.timeline == []
    # Without a spec at all (registered by hand), today's default: blue/green.
    assert serving_plan(_Client(False), "m", "3", strict=True)[0].strategy == "blue_green"
