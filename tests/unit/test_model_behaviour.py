"""Behavioural tests of the demo fraud model (Made-With-ML's tests/model): the model the
pipeline trains from specs/fraud.yaml, trained once here from the generator — no stack — and
checked for what the generator guarantees (tasks/demo_data.py): fraud risk rises with night
hours, a foreign country, online/web payments, a high amount against the customer's 30-day
average, a young account, many transactions in a day and risky merchants, and depends on
nothing else (not the day of the week, not which home country, not the spending level itself).

- invariance: a change the generator's risk ignores leaves the predictions as they were;
- directional: a change that raises the generator's risk raises the fraud probability;
- minimum functionality: obvious cases are classified right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from modelyard.spec import ModelSpec, load_spec
from tasks import data as data_ops
from tasks.training import FeatureSet, model_inputs, train_model

SPECS = Path(__file__).resolve().parents[2] / "specs"
# As many fraud cases as the demo's 20,000 rows hold, in 8,000: the same model in a third of the time.
SMALL = {"n_rows": 8000, "seed": 42, "fraud_rate": 0.04}
HOME_COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA")


@dataclass(frozen=True)
class Trained:
    spec: ModelSpec
    features: FeatureSet
    pipeline: Pipeline
    holdout: pd.DataFrame

    def fraud_probability(self, rows: pd.DataFrame) -> np.ndarray:
        return self.pipeline.predict_proba(model_inputs(rows, self.features))[:, 1]


@pytest.fixture(scope="module")
def fraud() -> Trained:
    """The demo model, trained as the pipeline trains it: load, feature columns, split, fit."""
    spec = load_spec(SPECS / "fraud.yaml")
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"generator_params": SMALL})})
    data = data_ops.load_dataset(spec)
    columns = data_ops.feature_columns(spec, data)
    features = FeatureSet(columns, data_ops.categorical_columns(spec, data, columns))
    split = data_ops.split_dataset(spec, data)
    return Trained(spec, features, train_model(spec, split.train, features), split.holdout)


def _changed(fraud: Trained, change: Callable[[pd.DataFrame], pd.DataFrame],
             rows: Callable[[pd.DataFrame], pd.Series] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fraud probabilities of holdout rows (those ``rows`` selects) before and after ``change``."""
    holdout = fraud.holdout if rows is None else fraud.holdout[rows(fraud.holdout)]
    return fraud.fraud_probability(holdout), fraud.fraud_probability(change(holdout.copy()))


# --- invariance -----------------------------------------------------------------------------

def test_ids_and_timestamps_do_not_change_a_prediction(fraud: Trained):
    before, after = _changed(fraud, lambda rows: rows.assign(transaction_id="tx-other",
                                                             timestamp=pd.Timestamp("2031-06-01 12:00")))
    np.testing.assert_array_equal(after, before)


def test_a_rows_prediction_does_not_depend_on_the_rest_of_the_batch(fraud: Trained):
    rows = fraud.holdout.sample(frac=1.0, random_state=3)
    one_by_one = np.array([fraud.fraud_probability(rows.iloc[[i]])[0] for i in range(50)])
    np.testing.assert_allclose(fraud.fraud_probability(rows)[:50], one_by_one)


@pytest.mark.parametrize("day", [0, 3, 6])
def test_the_day_of_the_week_does_not_flip_predictions(fraud: Trained, day: int):
    before, after = _changed(fraud, lambda rows: rows.assign(day_of_week=day))
    assert np.mean((after > 0.5) != (before > 0.5)) <= 0.01
    assert np.mean(np.abs(after - before)) <= 0.01


def test_which_home_country_does_not_flip_predictions(fraud: Trained):
    def next_country(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(country=rows["country"].map(lambda c: HOME_COUNTRIES[(HOME_COUNTRIES.index(c) + 1) % 8]))

    before, after = _changed(fraud, next_country, rows=lambda h: h["is_foreign"] == 0)
    assert np.mean((after > 0.5) != (before > 0.5)) <= 0.01
    assert np.mean(np.abs(after - before)) <= 0.01


def test_spending_more_in_proportion_to_the_usual_does_not_flip_predictions(fraud: Trained):
    """Amount and 30-day average 20% higher together: the ratio, and so the risk, is unchanged."""
    before, after = _changed(fraud, lambda rows: rows.assign(amount=rows["amount"] * 1.2,
                                                             customer_avg_amount_30d=rows["customer_avg_amount_30d"] * 1.2))
    assert np.mean((after > 0.5) != (before > 0.5)) <= 0.02
    assert np.mean(np.abs(after - before)) <= 0.02


# --- directional expectations ---------------------------------------------------------------

RISKIER = {
    "at night": (lambda r: r.assign(hour=3), lambda h: h["hour"].between(8, 20), 1.5),
    "abroad": (lambda r: r.assign(is_foreign=1, distance_from_home_km=900.0), lambda h: h["is_foreign"] == 0, 2.0),
    "from a young account": (lambda r: r.assign(customer_age_days=10), lambda h: h["customer_age_days"] >= 180, 2.0),
    "after many transactions today": (lambda r: r.assign(customer_tx_count_24h=8),
                                      lambda h: h["customer_tx_count_24h"] <= 2, 2.0),
    "eight times the usual amount": (lambda r: r.assign(amount=r["amount"] * 8, amount_to_avg_ratio=r["amount_to_avg_ratio"] * 8),
                                     lambda h: h["amount_to_avg_ratio"] < 1.5, 3.0),
    "online from the web": (lambda r: r.assign(channel="online", device="web"), lambda h: h["channel"] == "pos", 2.0),
    "at an electronics merchant": (lambda r: r.assign(merchant_category="electronics"),
                                   lambda h: h["merchant_category"] == "grocery", 1.2),
}


@pytest.mark.parametrize("change", sorted(RISKIER))
def test_a_riskier_transaction_gets_a_higher_fraud_probability(fraud: Trained, change: str):
    make_riskier, rows, least_factor = RISKIER[change]
    before, after = _changed(fraud, make_riskier, rows)
    assert len(before) >= 300
    assert np.mean(after > before) >= 0.95, f"{change}: higher for {np.mean(after > before):.1%} of rows"
    assert after.mean() >= least_factor * before.mean(), f"{change}: {after.mean():.4f} vs {before.mean():.4f}"


# --- minimum functionality ------------------------------------------------------------------

def _transaction(**values) -> pd.DataFrame:
    row = {"transaction_id": "tx-test", "timestamp": pd.Timestamp("2026-01-20 12:00"), "day_of_week": 1,
           "customer_avg_amount_30d": 60.0, **values}
    row["amount_to_avg_ratio"] = row["amount"] / row["customer_avg_amount_30d"]
    return pd.DataFrame([row])


def test_an_obvious_fraud_is_flagged(fraud: Trained):
    obvious = _transaction(amount=480.0, merchant_category="electronics", hour=3, country="GB", channel="online",
                           device="web", is_foreign=1, customer_age_days=10, customer_tx_count_24h=8,
                           distance_from_home_km=2000.0)
    assert fraud.fraud_probability(obvious)[0] > 0.5
    assert fraud.pipeline.predict(model_inputs(obvious, fraud.features))[0] == 1


def test_an_everyday_purchase_is_not_flagged(fraud: Trained):
    everyday = _transaction(amount=45.0, merchant_category="grocery", hour=12, country="US", channel="pos",
                            device="chip", is_foreign=0, customer_age_days=2000, customer_tx_count_24h=0,
                            distance_from_home_km=3.0)
    assert fraud.fraud_probability(everyday)[0] < SMALL["fraud_rate"] / 2
    assert fraud.pipeline.predict(model_inputs(everyday, fraud.features))[0] == 0


def test_fraud_in_the_holdout_is_ranked_above_legitimate_transactions(fraud: Trained):
    scores = fraud.fraud_probability(fraud.holdout)
    assert roc_auc_score(fraud.holdout[fraud.spec.data.target], scores) >= 0.85
