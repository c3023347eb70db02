"""Who may retrain now, and on what data: the retrain claim (one at a time per model, at most
one per cooldown, a crashed claim expiring) on a real state directory, and the training frame
of source rows plus labelled traffic."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from modelyard.settings import Settings
from modelyard.spec import parse_spec
from tasks import retraining
from tasks.retraining import (
    STALE_CLAIM_S, claim_retrain, labelled_traffic, release_retrain, retrain_outcome, training_frame,
)

T0 = 1_800_000_000.0


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path)


def test_first_claim_is_granted(settings: Settings):
    claim = claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-1", now=T0)
    assert claim.granted and claim.reason == "claimed"


def test_claim_while_a_retrain_runs_is_refused_naming_that_run(settings: Settings):
    claim_retrain(settings, "fraud", cooldown_s=0, run_id="run-1", now=T0)
    refused = claim_retrain(settings, "fraud", cooldown_s=0, run_id="run-2", now=T0 + 10)
    assert not refused.granted
    assert refused.reason == "a retrain of fraud is already running (run run-1)"


def test_claim_within_the_cooldown_is_refused_after_the_retrain_finished(settings: Settings):
    claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-1", now=T0)
    release_retrain(settings, "fraud", "promoted")
    refused = claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-2", now=T0 + 100)
    assert not refused.granted and refused.reason == "fraud was retrained 100 s ago; cooldown is 600 s"


def test_claim_after_the_cooldown_is_granted(settings: Settings):
    claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-1", now=T0)
    release_retrain(settings, "fraud", "kept champion")
    assert claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-2", now=T0 + 601).granted


def test_claim_of_a_crashed_retrain_stops_blocking_once_stale(settings: Settings):
    claim_retrain(settings, "fraud", cooldown_s=600, run_id="crashed", now=T0)  # never released
    assert not claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-2", now=T0 + STALE_CLAIM_S - 1).granted
    assert claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-3", now=T0 + STALE_CLAIM_S + 1).granted


def test_claims_are_per_model(settings: Settings):
    assert claim_retrain(settings, "fraud", cooldown_s=600, run_id="run-1", now=T0).granted
    assert claim_retrain(settings, "churn", cooldown_s=600, run_id="run-2", now=T0).granted


def test_claims_are_kept_in_the_state_dir(tmp_path):
    claim_retrain(Settings(state_dir=tmp_path / "a"), "fraud", cooldown_s=600, run_id="run-1", now=T0)
    assert claim_retrain(Settings(state_dir=tmp_path / "b"), "fraud", cooldown_s=600, run_id="run-2", now=T0).granted
    assert not claim_retrain(Settings(state_dir=tmp_path / "a"), "fraud", cooldown_s=600, run_id="run-3", now=T0).granted


def test_racing_claims_grant_exactly_one(settings: Settings):
    start = threading.Barrier(8)
    granted: list[bool] = []

    def claim(n: int) -> None:
        start.wait()
        granted.append(claim_retrain(settings, "fraud", cooldown_s=600, run_id=f"run-{n}", now=T0).granted)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(granted) == [False] * 7 + [True]


# --- the training frame -----------------------------------------------------------------

SPEC = parse_spec({"name": "fraud", "team": "t", "task": "binary_classification", "metrics": {"primary": "roc_auc"},
                   "policy": {"allow_any": True},
                   "data": {"source": "x.csv", "target": "is_fraud", "exclude": ["transaction_id", "timestamp"],
                            "split": {"method": "time", "time_column": "timestamp"}}})
SOURCE = pd.DataFrame({
    "transaction_id": ["tx-1", "tx-2"],
    "timestamp": pd.to_datetime(["2026-01-01 10:00", "2026-01-02 11:00"]),
    "amount": [12.5, 80.0],
    "channel": ["pos", "online"],
    "is_fraud": [0, 1],
})


def test_without_labelled_traffic_the_source_is_the_training_data():
    pd.testing.assert_frame_equal(training_frame(SPEC, SOURCE.iloc[::-1], pd.DataFrame()), SOURCE.iloc[::-1].reset_index(drop=True))


def test_labelled_traffic_joins_the_source_in_its_columns():
    traffic = pd.DataFrame({"amount": ["300.0"], "channel": ["online"], "request_id": ["req-9"],
                            "__time": pd.to_datetime(["2026-02-01 03:00"]), "is_fraud": [1]})
    frame = training_frame(SPEC, SOURCE, traffic)
    assert list(frame.columns) == list(SOURCE.columns) and len(frame) == 3
    added = frame.iloc[2]
    assert added["transaction_id"] == "req-9"  # a column the server never sees: the request id
    assert added["timestamp"] == pd.Timestamp("2026-02-01 03:00")  # the split's time column: the request time
    assert added["amount"] == 300.0 and frame["amount"].dtype == "float64"  # in the source's dtype
    assert (added["channel"], added["is_fraud"]) == ("online", 1)
    pd.testing.assert_frame_equal(frame.iloc[:2], SOURCE)


def test_labelled_traffic_pairs_labels_by_prediction_id_even_when_client_ids_repeat(settings: Settings, monkeypatch):
    """The demo's clients once reused transaction ids: each label must still reach its own row."""
    log = pd.DataFrame({
        "request_id": ["tx-1", "tx-1", "tx-2"], "prediction_id": ["p-a", "p-b", "p-c"], "row": [0, 0, 0],
        "time": pd.to_datetime(["2026-02-01 10:00", "2026-02-15 10:00", "2026-02-15 11:00"], utc=True),
        "prediction": [0, 1, 0], "input.amount": [10.0, 900.0, 20.0], "input.channel": ["pos", "online", "pos"],
    })
    monkeypatch.setattr(retraining, "read_prediction_log", lambda root, model: log)
    labels = pd.DataFrame({"prediction_id": ["p-b", "p-a"], "row": pd.array([pd.NA, pd.NA], dtype="Int64"),
                           "is_fraud": [1, 0]})
    traffic = labelled_traffic(settings, SPEC, labels)
    assert sorted(zip(traffic["amount"], traffic["is_fraud"])) == [(10.0, 0), (900.0, 1)]
    assert set(traffic.columns) == {"amount", "channel", "request_id", "__time", "is_fraud"}
    no_ids = log.drop(columns="prediction_id")
    monkeypatch.setattr(retraining, "read_prediction_log", lambda root, model: no_ids)
    assert labelled_traffic(settings, SPEC, labels).empty  # no pairing by the client's id


def test_retrain_promotes_only_a_passing_version_that_became_champion():
    assert retrain_outcome({"passed": True, "version": "4", "champion": "4"}) == "promoted"
    assert retrain_outcome({"passed": False, "version": "4", "champion": "3"}) == "kept champion"
    assert retrain_outcome({"passed": True, "version": "4", "champion": "3"}) == "kept champion"  # not promoted
