"""Metrics, slice metrics, latency and the promotion policy: plain functions of arrays.

A test can call any of these with two arrays; the evaluate flow only loads, calls, records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from modelyard.spec import PolicySpec

LOWER_IS_BETTER = {"rmse", "mae", "log_loss", "mape"}


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def classification_metrics(y_true, y_pred, proba: np.ndarray | None, classes) -> dict[str, float]:
    """Accuracy, F1, precision, recall, ROC AUC and log loss (binary or macro-averaged)."""
    y_true = np.asarray(y_true)
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    pos_label = classes[1] if binary else 1
    kwargs = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = pos_label
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "f1": skm.f1_score(y_true, y_pred, **kwargs),
        "precision": skm.precision_score(y_true, y_pred, **kwargs),
        "recall": skm.recall_score(y_true, y_pred, **kwargs),
    }
    if proba is not None and len(np.unique(y_true)) > 1:
        if binary:
            out["roc_auc"] = skm.roc_auc_score(y_true == pos_label, proba[:, 1])
            out["average_precision"] = skm.average_precision_score(y_true == pos_label, proba[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=list(classes))
        out["log_loss"] = skm.log_loss(y_true, proba, labels=list(classes))
    return {key: float(value) for key, value in out.items()}


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def model_metrics(model, inputs: pd.DataFrame, y_true, is_classifier: bool) -> dict[str, float]:
    """The metrics of a fitted sklearn model on ``inputs``."""
    predictions = model.predict(inputs)
    if not is_classifier:
        return regression_metrics(y_true, predictions)
    proba = model.predict_proba(inputs) if hasattr(model, "predict_proba") else None
    return classification_metrics(y_true, predictions, proba, list(model.classes_))


def slice_metrics(
    frame: pd.DataFrame, inputs: pd.DataFrame, y_true: pd.Series, model, is_classifier: bool,
    slices: list[str], primary: str, max_values: int = 8, min_rows: int = 20,
) -> list[dict]:
    """The primary metric on each value of each slice column (the most frequent values)."""
    rows = []
    for column in slices:
        if column not in frame.columns:
            continue
        for value, count in frame[column].astype(str).value_counts().head(max_values).items():
            mask = (frame[column].astype(str) == value).to_numpy()
            if mask.sum() < min_rows:
                continue
            try:
                values = model_metrics(model, inputs[mask], y_true[mask], is_classifier)
            except ValueError:
                continue
            rows.append({"slice": column, "value": value, "rows": int(count), primary: values.get(primary)})
    return rows


def p95_latency_ms(predict_one: Callable[[int], object], rows: int, repeats: int = 200) -> float:
    """p95 wall time of single-row predictions, cycling over ``rows`` rows, after a warm-up."""
    for i in range(min(20, rows)):
        predict_one(i)
    timings = []
    for i in range(repeats):
        start = time.perf_counter()
        predict_one(i % rows)
        timings.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(timings, 95))


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    """The policy's verdict on a challenger, with every check and why."""

    passed: bool
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "champion_version": self.champion_version,
                "checks": [asdict(c) for c in self.checks], "reasons": self.reasons}


def decide(
    policy: PolicySpec,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    p95_ms: float | None,
    champion_version: str | None = None,
) -> Decision:
    """Apply minimum metrics, maximum regression against the champion and maximum p95 latency."""
    checks: list[Check] = []
    for metric, threshold in policy.min_metrics.items():
        value = challenger.get(metric)
        if value is None:
            checks.append(Check(f"min:{metric}", False, f"{metric} was not computed"))
            continue
        ok = value >= threshold if higher_is_better(metric) else value <= threshold
        word = "at least" if higher_is_better(metric) else "at most"
        checks.append(Check(f"min:{metric}", ok, f"{metric} {value:.4f} must be {word} {threshold}"))
    if champion is not None:
        for metric, allowed in policy.max_regression.items():
            new, old = challenger.get(metric), champion.get(metric)
            if new is None or old is None:
                checks.append(Check(f"regression:{metric}", False, f"{metric} missing for comparison"))
                continue
            drop = (old - new) if higher_is_better(metric) else (new - old)
            ok = drop <= allowed
            checks.append(
                Check(f"regression:{metric}", ok,
                      f"{metric} {new:.4f} vs champion {old:.4f}: regression {drop:+.4f}, allowed {allowed}")
            )
    if policy.max_p95_latency_ms is not None:
        if p95_ms is None:
            checks.append(Check("latency:p95", False, "p95 latency was not measured"))
        else:
            ok = p95_ms <= policy.max_p95_latency_ms
            checks.append(Check("latency:p95", ok, f"p95 single-row latency {p95_ms:.2f} ms, limit {policy.max_p95_latency_ms} ms"))
    return Decision(all(c.passed for c in checks), checks, champion_version)
