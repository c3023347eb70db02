"""Drift analysis on real data (scikit-learn's bundled diabetes and breast-cancer sets).

Each test states a behaviour of ``tasks.drift``: a random split of real data does not drift,
realistic shifts (scaled measurements, a sub-population) do and rank first, predictions that
move are caught, the large-window path gives a full Evidently run's verdict, and bad input
gets a clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import DriftedColumnsCount, ValueDrift
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression

from tasks.drift import (
    DriftResult,
    analyse_drift,
    dkw_epsilon,
    drift_report_files,
)

DIABETES_NUMERIC = ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DIABETES_COLUMNS = DIABETES_NUMERIC + ["sex"]


def _report_values(snapshot) -> tuple[dict[str, float], dict]:
    """ValueDrift scores by column and the DriftedColumnsCount value, read from Evidently's snapshot."""
    scores, count = {}, {}
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":ValueDrift"):
            scores[metric["config"]["column"]] = float(metric["value"])
        elif kind.endswith(":DriftedColumnsCount"):
            count = metric["value"]
    return scores, count


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    """442 patients, unscaled; ``sex`` as the categorical column it is, and a model's predictions."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "F", 2.0: "M"})
    model = LinearRegression().fit(frame[DIABETES_NUMERIC], frame["target"])
    frame["prediction"] = model.predict(frame[DIABETES_NUMERIC])
    return frame


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame.drop(columns="target")


def split(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    return frame.iloc[order[:half]].reset_index(drop=True), frame.iloc[order[half:]].reset_index(drop=True)


def test_random_split_of_real_data_does_not_drift(cancer):
    reference, current = split(cancer)
    result, snapshot = analyse_drift(reference, current, list(cancer.columns), [])
    assert not result.dataset_drift
    assert result.drift_share < 0.2
    assert result.n_columns == 30 and result.rows_reference == len(reference) and result.rows_current == len(current)
    assert not result.sampled and result.rows_analysed == len(current)
    # fewer than 1,000 reference rows: Evidently tests with K-S p-values
    assert {f.method for f in result.features} == {"ks"}
    # the verdict's scores are Evidently's own: the report on the same rows shows the same numbers
    scores, count = _report_values(snapshot)
    assert {f.column: f.score for f in result.features} == pytest.approx(scores, rel=1e-12, abs=1e-15)
    assert count["count"] == result.drifted_columns


def test_large_reference_uses_distances_and_still_sees_no_drift(cancer):
    """Above 1,000 reference rows Evidently switches to normed Wasserstein (threshold 0.1)."""
    # Both frames are drawn from all 569 patients (with 2% jitter): one population, two samples.
    # (Two halves of 285 patients would not do: at that size the halves themselves differ by
    # normed Wasserstein distances close to Evidently's 0.1.)
    rng = np.random.default_rng(1)
    noise = cancer.std().to_numpy() * 0.02
    reference = cancer.iloc[rng.integers(0, len(cancer), 5_000)] + rng.normal(0, noise, (5_000, 30))
    current = cancer.iloc[rng.integers(0, len(cancer), 5_000)] + rng.normal(0, noise, (5_000, 30))
    result, _ = analyse_drift(reference, current, list(cancer.columns), [], with_report=False)
    assert {f.method for f in result.features} == {"wasserstein"}
    assert {f.threshold for f in result.features} == {0.1}
    assert not result.dataset_drift and result.drifted_columns == 0


def test_scaled_measurements_drift_and_rank_first(cancer):
    """A recalibrated instrument: six size measurements read 25% high in the current window."""
    reference, current = split(cancer)
    shifted = ["mean radius", "mean perimeter", "mean area", "worst radius", "worst perimeter", "worst area"]
    current = current.copy()
    current[shifted] *= 1.25
    result, _ = analyse_drift(reference, current, list(cancer.columns), [], with_report=False)
    assert {f.column for f in result.top(6)} == set(shifted)
    assert all(f.drifted for f in result.top(6))
    assert result.drifted_columns >= 6 and result.drift_share < 0.5
    assert not result.dataset_drift  # 6 of 30 is under Evidently's default share of 0.5
    stricter, _ = analyse_drift(reference, current, list(cancer.columns), [], drift_share=0.2, with_report=False)
    assert stricter.dataset_drift and stricter.drift_share_threshold == 0.2


def test_subpopulation_drifts_on_its_defining_feature_and_moves_predictions(diabetes):
    """The window holds only high-BMI patients (a new clinic): bmi drifts first, predictions rise."""
    reference, rest = split(diabetes)
    current = rest[rest["bmi"] > rest["bmi"].quantile(0.6)]
    result, snapshot = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], prediction_column="prediction")
    assert result.features[0].column == "bmi" and result.features[0].drifted
    assert result.prediction is not None and result.prediction.drifted
    assert result.prediction.column == "prediction" and result.prediction.kind == "numerical"
    assert "prediction" not in {f.column for f in result.features}  # not counted as a feature
    scores, _ = _report_values(snapshot)
    assert scores["prediction"] == pytest.approx(result.prediction.score, rel=1e-12)


def test_random_split_predictions_do_not_drift(diabetes):
    reference, current = split(diabetes, seed=3)
    result, _ = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], prediction_column="prediction",
                              with_report=False)
    assert not result.dataset_drift
    assert result.prediction is not None and not result.prediction.drifted
    assert next(f for f in result.features if f.column == "sex").kind == "categorical"


def test_sampled_window_gets_the_full_evidently_verdict(diabetes):
    """200,000 rows resampled from real patients, two features shifted: the sampled path's verdict,
    drifted columns and scores are those of a full Evidently run on every row."""
    rng = np.random.default_rng(7)
    reference, pool = split(diabetes, seed=7)
    current = pool.iloc[rng.integers(0, len(pool), 200_000)].reset_index(drop=True)
    for column in DIABETES_NUMERIC:
        current[column] = current[column] + rng.normal(0, 0.05 * diabetes[column].std(), len(current))
    current["bmi"] *= 1.1
    current["s5"] += 0.3 * diabetes["s5"].std()

    result, snapshot = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], max_rows=20_000, seed=5)
    assert result.sampled and result.rows_analysed == 20_000 and result.rows_current == 200_000
    assert f"±{dkw_epsilon(20_000):.4f}" in result.error_bound and "200,000" in result.error_bound
    report_scores, _ = _report_values(snapshot)
    assert all(f.sample_score == report_scores[f.column] for f in result.features)

    definition = DataDefinition(numerical_columns=DIABETES_NUMERIC, categorical_columns=["sex"])
    metrics = [DriftedColumnsCount(columns=DIABETES_COLUMNS)] + [ValueDrift(column=c) for c in DIABETES_COLUMNS]
    full = Report(metrics).run(
        Dataset.from_pandas(current[DIABETES_COLUMNS], data_definition=definition),
        Dataset.from_pandas(reference[DIABETES_COLUMNS], data_definition=definition),
    )
    full_scores, full_count = _report_values(full)
    assert {f.column: f.score for f in result.features} == pytest.approx(full_scores, rel=1e-9, abs=1e-300)
    assert result.drifted_columns == full_count["count"]
    assert result.drift_share == pytest.approx(full_count["share"])
    assert result.dataset_drift == (full_count["share"] >= 0.5)
    assert {"bmi", "s5"} <= set(result.drifted_features)

    unsampled, _ = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], max_rows=10**6, with_report=False)
    assert not unsampled.sampled and unsampled.error_bound.startswith("exact")
    assert unsampled.dataset_drift == result.dataset_drift
    assert unsampled.drifted_features == result.drifted_features


# Evidently's report still draws its histograms and correlations with the inf values in them.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_missing_values_and_unseen_categories_are_handled(diabetes):
    reference, current = split(diabetes, seed=2)
    current = current.copy()
    current.loc[current.index[:40], "bmi"] = np.nan
    current.loc[current.index[:5], "bp"] = np.inf
    current.loc[current.index[:120], "sex"] = "unknown"  # a category the reference never had
    result, snapshot = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"])
    sex = next(f for f in result.features if f.column == "sex")
    assert sex.kind == "categorical" and sex.drifted
    assert result.features[0].column == "sex"
    assert all(np.isfinite(f.score) for f in result.features)
    scores, _ = _report_values(snapshot)  # Evidently drops missing and infinite values the same way
    assert {f.column: f.score for f in result.features} == pytest.approx(scores, rel=1e-12, abs=1e-300)


def test_category_dtype_columns_are_compared_by_value(diabetes):
    reference, current = split(diabetes, seed=4)
    reference = reference.astype({"sex": "category"})
    current = current.astype({"sex": pd.CategoricalDtype(["M", "F", "other"])})
    as_category, _ = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], with_report=False)
    as_object, _ = analyse_drift(reference.astype({"sex": object}), current.astype({"sex": object}),
                                 DIABETES_COLUMNS, ["sex"], with_report=False)
    assert as_category.as_dict()["features"] == as_object.as_dict()["features"]


def test_empty_window_is_a_clear_error(diabetes):
    reference, current = split(diabetes)
    with pytest.raises(ValueError, match="current window is empty"):
        analyse_drift(reference, current.iloc[:0], DIABETES_COLUMNS, ["sex"])


def test_missing_columns_are_named(diabetes):
    reference, current = split(diabetes)
    with pytest.raises(ValueError, match=r"missing from the current window: \['bmi', 's5'\]"):
        analyse_drift(reference, current.drop(columns=["bmi", "s5"]), DIABETES_COLUMNS, ["sex"])
    with pytest.raises(ValueError, match=r"missing from the reference: \['prediction'\].*score the reference"):
        analyse_drift(reference.drop(columns="prediction"), current, DIABETES_COLUMNS, ["sex"],
                      prediction_column="prediction")


def test_column_with_no_values_is_a_clear_error(diabetes):
    reference, current = split(diabetes)
    current = current.assign(bmi=np.nan)
    with pytest.raises(ValueError, match=r"no non-missing values to compare in: bmi \(current window\)"):
        analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"])


def test_result_is_json_safe_and_report_files_are_evidentlys(diabetes, tmp_path):
    reference, current = split(diabetes)
    result, snapshot = analyse_drift(reference, current, DIABETES_COLUMNS, ["sex"], prediction_column="prediction")
    payload = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert payload["n_columns"] == 10 and payload["prediction"]["column"] == "prediction"
    assert [f["column"] for f in payload["features"]] == [f.column for f in result.features]
    assert isinstance(result, DriftResult) and len(result.top(3)) == 3

    html, report_json = drift_report_files(snapshot, tmp_path / "reports")
    page = html.read_text()
    assert page.lstrip().startswith("<!DOCTYPE html>") and "Count of Drifted Columns" in page and "bmi" in page
    metrics = json.loads(report_json.read_text())["metrics"]
    assert {m["config"]["column"] for m in metrics if m["config"]["type"].endswith(":ValueDrift")} == \
        set(DIABETES_COLUMNS) | {"prediction"}
