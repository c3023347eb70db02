"""The demo transactions: seeded, well-formed, rare but learnable fraud, and drift scenarios
that really change what they say they change."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from tasks.demo_data import (
    CATEGORIES,
    CATEGORICAL_COLUMNS,
    CHANNELS,
    COLUMNS,
    COUNTRIES,
    DEVICES,
    SCENARIOS,
    UNSEEN_CATEGORY,
    apply_scenario,
    generate_transactions,
)

EXPECTED_DTYPES = {
    "transaction_id": "object",
    "timestamp": "datetime64[ns]",
    "amount": "float64",
    "merchant_category": "object",
    "hour": "int64",
    "day_of_week": "int64",
    "country": "object",
    "channel": "object",
    "device": "object",
    "is_foreign": "int64",
    "customer_age_days": "int64",
    "customer_avg_amount_30d": "float64",
    "customer_tx_count_24h": "int64",
    "distance_from_home_km": "float64",
    "amount_to_avg_ratio": "float64",
    "is_fraud": "int64",
}
SMALL = 4_000


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return generate_transactions()


@pytest.fixture(scope="module")
def fresh() -> pd.DataFrame:
    """A baseline from another seed: new rows from the same world."""
    return generate_transactions(seed=43)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_transactions(n_rows=SMALL, seed=7)


def _features(df: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    """Model inputs: no id, no label, time as its parts; categoricals with training's categories
    (an unseen value becomes missing, as a deployed model would see it)."""
    x = df.drop(columns=["transaction_id", "timestamp", "is_fraud"])
    for col in CATEGORICAL_COLUMNS:
        x[col] = pd.Categorical(x[col], categories=categories[col])
    return x


@pytest.fixture(scope="module")
def trained(baseline: pd.DataFrame) -> tuple[HistGradientBoostingClassifier, dict[str, list[str]], float]:
    """A gradient-boosted model on 75% of the baseline, and its ROC AUC on the other 25%."""
    train, test = train_test_split(baseline, test_size=0.25, random_state=0, stratify=baseline["is_fraud"])
    categories = {col: sorted(train[col].unique()) for col in CATEGORICAL_COLUMNS}
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(_features(train, categories), train["is_fraud"])
    auc = roc_auc_score(test["is_fraud"], model.predict_proba(_features(test, categories))[:, 1])
    return model, categories, float(auc)


def _auc(trained, df: pd.DataFrame) -> float:
    model, categories, _ = trained
    return float(roc_auc_score(df["is_fraud"], model.predict_proba(_features(df, categories))[:, 1]))


def _assert_well_formed(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(EXPECTED_DTYPES)
    assert {col: str(dtype) for col, dtype in df.dtypes.items()} == EXPECTED_DTYPES
    numeric = df.select_dtypes("number")
    assert not df.isna().any().any()
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    assert df["transaction_id"].is_unique
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique
    assert (df["amount"] > 0).all() and (df["customer_avg_amount_30d"] > 0).all()
    assert (df["amount"] == df["amount"].round(2)).all()
    assert np.allclose(df["amount_to_avg_ratio"], df["amount"] / df["customer_avg_amount_30d"])
    assert df["hour"].between(0, 23).all() and (df["hour"] == df["timestamp"].dt.hour).all()
    assert (df["day_of_week"] == df["timestamp"].dt.dayofweek).all()
    assert set(df["is_foreign"].unique()) <= {0, 1} and set(df["is_fraud"].unique()) <= {0, 1}
    assert (df["customer_tx_count_24h"] >= 0).all() and (df["distance_from_home_km"] >= 0).all()
    assert (df["customer_age_days"] >= 1).all()
    assert set(df["country"]) <= set(COUNTRIES)
    assert set(df["channel"]) <= set(CHANNELS) and set(df["device"]) <= set(DEVICES)


# --- the baseline ---------------------------------------------------------------------


def test_transaction_ids_never_repeat_across_populations(small):
    """The demo sends a calm and a drifted population with ids as request ids: a shared id would
    pair a label with another transaction."""
    frames = [small, generate_transactions(n_rows=SMALL, seed=8), generate_transactions(n_rows=SMALL, seed=7,
                                                                                       start="2026-02-15"),
              generate_transactions(n_rows=SMALL + 1, seed=7), apply_scenario(small, "channel_shift"),
              apply_scenario(small, "channel_shift", strength=0.5), apply_scenario(small, "amount_shift")]
    ids = pd.concat([f["transaction_id"] for f in frames])
    assert ids.is_unique, ids[ids.duplicated()].head().tolist()
    again = generate_transactions(n_rows=SMALL, seed=7)["transaction_id"]
    assert again.equals(small["transaction_id"])  # the same arguments, the same transactions


def test_same_seed_same_frame_other_seed_other_frame(small):
    pd.testing.assert_frame_equal(small, generate_transactions(n_rows=SMALL, seed=7))
    other = generate_transactions(n_rows=SMALL, seed=8)
    assert not small["amount"].equals(other["amount"])


def test_columns_dtypes_and_values(baseline):
    assert COLUMNS == EXPECTED_DTYPES
    assert len(baseline) == 20_000
    _assert_well_formed(baseline)
    assert set(baseline["merchant_category"]) == set(CATEGORIES)
    assert set(baseline["channel"]) == {"pos", "online", "contactless"}
    assert set(baseline["device"]) == {"chip", "swipe", "mobile_wallet", "web"}
    assert re.fullmatch(r"tx-[0-9a-f]{8}-000000001", baseline["transaction_id"].iloc[0])


def test_thirty_days_from_start_with_a_daily_rhythm(baseline):
    start = pd.Timestamp("2026-01-01")
    assert baseline["timestamp"].min() >= start
    assert baseline["timestamp"].max() < start + pd.Timedelta(days=30)
    assert baseline["timestamp"].dt.normalize().nunique() == 30
    by_hour = baseline["hour"].value_counts()
    assert by_hour.loc[[12, 13, 18, 19]].min() > 3 * by_hour.loc[[2, 3, 4]].max()
    assert set(baseline["day_of_week"]) == set(range(7))


def test_mostly_home_country_and_amounts_by_category(baseline):
    assert 0.03 < baseline["is_foreign"].mean() < 0.12
    foreign = baseline[baseline["is_foreign"] == 1]
    assert foreign["distance_from_home_km"].median() > 50 * baseline["distance_from_home_km"].median()
    medians = baseline.groupby("merchant_category")["amount"].median()
    assert medians["travel"] > medians["electronics"] > medians["grocery"] > medians["entertainment"]
    assert (baseline.loc[baseline["merchant_category"] == "online_retail", "channel"] == "online").all()


def test_fraud_rate_near_the_requested_rate(baseline):
    assert 0.01 <= baseline["is_fraud"].mean() <= 0.02
    assert 0.04 <= generate_transactions(n_rows=SMALL, seed=1, fraud_rate=0.05)["is_fraud"].mean() <= 0.06


def test_fraud_follows_the_risk_factors(baseline):
    rate = baseline.groupby("is_fraud").mean(numeric_only=True)
    assert rate.loc[1, "is_foreign"] > 3 * rate.loc[0, "is_foreign"]
    assert rate.loc[1, "amount_to_avg_ratio"] > 2 * rate.loc[0, "amount_to_avg_ratio"]
    assert rate.loc[1, "customer_tx_count_24h"] > rate.loc[0, "customer_tx_count_24h"]

    def fraud_by(key) -> pd.Series:
        return baseline.groupby(key)["is_fraud"].mean()

    night, young = baseline["hour"] <= 5, baseline["customer_age_days"] < 60
    assert fraud_by(night)[True] > 1.5 * fraud_by(night)[False]
    assert fraud_by(young)[True] > 1.5 * fraud_by(young)[False]
    assert fraud_by("channel")["online"] > 3 * fraud_by("channel")["pos"]
    by_category = fraud_by("merchant_category")
    risky, safe = ["electronics", "travel", "online_retail"], ["grocery", "fuel", "health"]
    assert by_category[risky].min() > by_category[safe].max()


def test_fraud_is_learnable_but_not_trivial(trained, fresh):
    _, _, holdout_auc = trained
    assert 0.8 <= holdout_auc <= 0.99
    assert 0.8 <= _auc(trained, fresh) <= 0.99


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="fraud_rate"):
        generate_transactions(n_rows=100, fraud_rate=0.0)
    with pytest.raises(ValueError, match="n_rows"):
        generate_transactions(n_rows=0)


# --- drift scenarios ------------------------------------------------------------------


def test_scenarios_are_named_and_described():
    assert {"new_fraud_pattern", "amount_shift", "new_merchant_category", "channel_shift"} <= set(SCENARIOS)
    assert all(isinstance(text, str) and text and "\n" not in text for text in SCENARIOS.values())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_output_is_well_formed_and_input_untouched(small, name):
    before = small.copy(deep=True)
    drifted = apply_scenario(small, name)
    pd.testing.assert_frame_equal(small, before)
    assert drifted is not small
    _assert_well_formed(drifted)
    assert len(drifted) == len(small)
    suffix = drifted["transaction_id"].iloc[0][len(small["transaction_id"].iloc[0]):]
    assert suffix.startswith(f"-{name}-")  # a drifted row is another transaction
    assert set(drifted["transaction_id"]) == {i + suffix for i in small["transaction_id"]}
    pd.testing.assert_frame_equal(drifted, apply_scenario(small, name))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_generating_with_a_scenario_is_applying_it_after(name):
    generated = generate_transactions(n_rows=SMALL, seed=11, scenario=name, scenario_strength=0.8)
    applied = apply_scenario(generate_transactions(n_rows=SMALL, seed=11), name, strength=0.8, seed=11)
    pd.testing.assert_frame_equal(generated, applied)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_strength_zero_changes_nothing(small, name):
    pd.testing.assert_frame_equal(apply_scenario(small, name, strength=0.0), small)


def test_unknown_scenario_names_the_valid_ones(small):
    for call in (lambda: apply_scenario(small, "meteor_strike"), lambda: generate_transactions(100, scenario="x")):
        with pytest.raises(ValueError) as raised:
            call()
        for name in SCENARIOS:
            assert name in str(raised.value)


def test_amount_shift_multiplies_amounts_consistently(baseline):
    shifted = apply_scenario(baseline, "amount_shift")
    assert shifted["amount"].mean() / baseline["amount"].mean() >= 1.4
    assert shifted["customer_avg_amount_30d"].mean() / baseline["customer_avg_amount_30d"].mean() >= 1.4
    assert np.allclose(shifted["amount_to_avg_ratio"], baseline["amount_to_avg_ratio"], rtol=0.01)
    pd.testing.assert_series_equal(shifted["is_fraud"], baseline["is_fraud"])
    stronger = apply_scenario(baseline, "amount_shift", strength=1.5)
    assert stronger["amount"].mean() > shifted["amount"].mean()


def test_new_merchant_category_brings_an_unseen_riskier_category(baseline):
    drifted = apply_scenario(baseline, "new_merchant_category")
    assert UNSEEN_CATEGORY not in set(baseline["merchant_category"])
    unseen = drifted["merchant_category"] == UNSEEN_CATEGORY
    assert unseen.mean() > 0.05
    assert drifted.loc[unseen, "is_fraud"].mean() > 2 * baseline["is_fraud"].mean()
    assert drifted["is_fraud"].mean() > baseline["is_fraud"].mean()


def test_channel_shift_moves_transactions_online(baseline):
    drifted = apply_scenario(baseline, "channel_shift")
    online_before = (baseline["channel"] == "online").mean()
    online_after = (drifted["channel"] == "online").mean()
    assert online_after > online_before + 0.1
    assert (drifted["device"] == "mobile_wallet").mean() > (baseline["device"] == "mobile_wallet").mean()
    assert (drifted["channel"] == "pos").mean() < (baseline["channel"] == "pos").mean()
    assert drifted["is_fraud"].mean() >= baseline["is_fraud"].mean()


def test_new_fraud_pattern_fools_a_model_trained_before(trained, fresh):
    drifted = apply_scenario(fresh, "new_fraud_pattern", seed=43)
    assert drifted["is_fraud"].mean() > 2 * fresh["is_fraud"].mean()
    new_frauds = drifted[(drifted["is_fraud"] == 1) & (drifted["amount"] <= 5)]
    assert len(new_frauds) > 0.03 * len(drifted)
    assert (new_frauds["channel"] == "online").all() and (new_frauds["device"] == "web").all()
    assert new_frauds["customer_tx_count_24h"].mean() > 2 * fresh["customer_tx_count_24h"].mean()
    assert (new_frauds["hour"] <= 5).mean() > 5 * (fresh["hour"] <= 5).mean()
    auc_fresh, auc_drifted = _auc(trained, fresh), _auc(trained, drifted)
    assert auc_drifted < auc_fresh - 0.05, (auc_fresh, auc_drifted)
