"""The evaluation stage's metric functions and promotion policy, called with plain arrays and
numbers: the verdict on a challenger and the reasons it gives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from modelyard.spec import PolicySpec
from tasks.evaluation import classification_metrics, decide, higher_is_better, regression_metrics, slice_metrics

POLICY = PolicySpec(min_metrics={"roc_auc": 0.8}, max_regression={"roc_auc": 0.02}, max_p95_latency_ms=50)


# --- the promotion policy -----------------------------------------------------------------

def test_challenger_meeting_every_threshold_is_promoted_with_no_reasons():
    decision = decide(POLICY, {"roc_auc": 0.91}, {"roc_auc": 0.90}, p95_ms=12.0, champion_version="3")
    assert decision.passed and decision.reasons == []
    assert [c.name for c in decision.checks] == ["min:roc_auc", "regression:roc_auc", "latency:p95"]
    assert decision.as_dict()["champion_version"] == "3"


def test_worse_challenger_keeps_champion():
    decision = decide(POLICY, {"roc_auc": 0.85}, {"roc_auc": 0.90}, p95_ms=12.0, champion_version="3")
    assert not decision.passed
    assert decision.reasons == ["roc_auc 0.8500 vs champion 0.9000: regression +0.0500, allowed 0.02"]


def test_slightly_worse_challenger_within_the_allowed_regression_passes():
    assert decide(POLICY, {"roc_auc": 0.89}, {"roc_auc": 0.90}, p95_ms=12.0).passed


def test_challenger_below_a_minimum_is_rejected_naming_the_metric():
    decision = decide(POLICY, {"roc_auc": 0.75}, None, p95_ms=12.0)
    assert not decision.passed and decision.reasons == ["roc_auc 0.7500 must be at least 0.8"]


def test_first_version_is_judged_on_absolute_thresholds_only():
    decision = decide(POLICY, {"roc_auc": 0.81}, None, p95_ms=12.0)
    assert decision.passed and "regression:roc_auc" not in [c.name for c in decision.checks]
    assert decision.champion_version is None


def test_error_metrics_must_stay_below_their_limit_and_must_not_rise():
    policy = PolicySpec(min_metrics={"rmse": 50}, max_regression={"rmse": 2})
    assert decide(policy, {"rmse": 45}, {"rmse": 44}, None).passed
    too_high = decide(policy, {"rmse": 60}, None, None)
    assert too_high.reasons == ["rmse 60.0000 must be at most 50.0"]
    risen = decide(policy, {"rmse": 48}, {"rmse": 44}, None)
    assert risen.reasons == ["rmse 48.0000 vs champion 44.0000: regression +4.0000, allowed 2.0"]


def test_a_metric_that_was_not_computed_fails_its_check():
    policy = PolicySpec(min_metrics={"recall": 0.5}, max_regression={"roc_auc": 0.02})
    decision = decide(policy, {"roc_auc": 0.9}, {"accuracy": 0.9}, None)
    assert not decision.passed
    assert decision.reasons == ["recall was not computed", "roc_auc missing for comparison"]


def test_slow_challenger_is_rejected_on_p95_latency():
    slow = decide(POLICY, {"roc_auc": 0.9}, None, p95_ms=80.0)
    assert not slow.passed and slow.reasons == ["p95 single-row latency 80.00 ms, limit 50.0 ms"]
    unmeasured = decide(POLICY, {"roc_auc": 0.9}, None, p95_ms=None)
    assert not unmeasured.passed and unmeasured.reasons == ["p95 latency was not measured"]


def test_policy_without_rules_passes_anything():
    assert decide(PolicySpec(), {}, None, None).passed


@pytest.mark.parametrize(("metric", "higher"), [("roc_auc", True), ("accuracy", True), ("r2", True), ("f1", True),
                                                ("rmse", False), ("mae", False), ("log_loss", False), ("mape", False)])
def test_which_metrics_are_better_higher(metric: str, higher: bool):
    assert higher_is_better(metric) is higher


# --- metrics of two arrays ------------------------------------------------------------------

def test_binary_metrics_of_known_predictions():
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.1, 0.9]])
    metrics = classification_metrics(y_true, y_pred, proba, [0, 1])
    assert metrics["accuracy"] == 0.75 and metrics["recall"] == 1.0
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["f1"] == pytest.approx(0.8)
    assert metrics["roc_auc"] == 1.0  # every positive scored above every negative
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.9])))


def test_the_positive_class_is_the_second_of_the_classes():
    metrics = classification_metrics(["no", "yes", "yes"], ["no", "no", "yes"], None, ["no", "yes"])
    assert metrics["recall"] == 0.5 and metrics["precision"] == 1.0


def test_without_probabilities_there_is_no_ranking_metric():
    metrics = classification_metrics([0, 1], [0, 1], None, [0, 1])
    assert set(metrics) == {"accuracy", "f1", "precision", "recall"}


def test_one_class_in_the_labels_gives_no_auc_instead_of_an_error():
    metrics = classification_metrics([1, 1, 1], [1, 0, 1], np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]), [0, 1])
    assert "roc_auc" not in metrics and metrics["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_metrics_are_macro_averaged():
    y_true, y_pred = [0, 1, 2, 2], [0, 1, 2, 1]
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.5, 0.4]])
    metrics = classification_metrics(y_true, y_pred, proba, [0, 1, 2])
    assert metrics["accuracy"] == 0.75
    assert metrics["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert 0 < metrics["roc_auc"] <= 1 and "average_precision" not in metrics


def test_regression_metrics_of_known_predictions():
    metrics = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["r2"] == pytest.approx(-1.0)
    assert regression_metrics([1, 2, 3], [1, 2, 3]) == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}


# --- slices -------------------------------------------------------------------------------

class _Echo:
    """A "model" that answers what its inputs say: ``guess`` as the class, ``score`` as P(1)."""

    classes_ = [0, 1]

    def predict(self, inputs: pd.DataFrame) -> np.ndarray:
        return inputs["guess"].to_numpy()

    def predict_proba(self, inputs: pd.DataFrame) -> np.ndarray:
        return np.column_stack([1 - inputs["score"], inputs["score"]])


def _sliced(rows: dict[str, tuple[int, int, int]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per channel: (rows, rows answered right, label); the others answered wrong."""
    channel, guess, truth = [], [], []
    for value, (n, right, label) in rows.items():
        channel += [value] * n
        truth += [label] * n
        guess += [label] * right + [1 - label] * (n - right)
    frame = pd.DataFrame({"channel": channel, "amount": np.arange(len(channel), dtype=float)})
    inputs = pd.DataFrame({"guess": guess, "score": np.array(guess, dtype=float)})
    return frame, inputs, pd.Series(truth)


def test_slice_metrics_give_the_primary_metric_of_each_value():
    frame, inputs, y_true = _sliced({"pos": (40, 40, 0), "online": (30, 15, 1)})
    rows = slice_metrics(frame, inputs, y_true, _Echo(), True, ["channel"], "accuracy")
    assert rows == [{"slice": "channel", "value": "pos", "rows": 40, "accuracy": 1.0},
                    {"slice": "channel", "value": "online", "rows": 30, "accuracy": 0.5}]


def test_slices_too_small_to_judge_are_left_out():
    frame, inputs, y_true = _sliced({"pos": (40, 40, 0), "contactless": (19, 0, 1)})
    assert [r["value"] for r in slice_metrics(frame, inputs, y_true, _Echo(), True, ["channel"], "accuracy")] == ["pos"]


def test_only_the_most_frequent_values_are_sliced():
    frame, inputs, y_true = _sliced({"pos": (40, 40, 0), "online": (30, 15, 1), "contactless": (25, 25, 0)})
    rows = slice_metrics(frame, inputs, y_true, _Echo(), True, ["channel"], "accuracy", max_values=2)
    assert [r["value"] for r in rows] == ["pos", "online"]


def test_a_slice_column_missing_from_the_data_is_skipped():
    frame, inputs, y_true = _sliced({"pos": (40, 40, 0)})
    assert slice_metrics(frame, inputs, y_true, _Echo(), True, ["country"], "accuracy") == []
