"""Data loading, fingerprints and splits: any tabular source, no dataset named in code."""

from __future__ import annotations

import pandas as pd
import pytest

from modelyard.spec import SpecError, parse_spec
from tasks.data import DataError, fingerprint, load_dataset, split_dataset
from tasks.demo_data import generate_transactions


def _spec(source: str, **data) -> object:
    return parse_spec({"name": "t", "team": "t", "task": "binary_classification", "metrics": {"primary": "roc_auc"},
                       "policy": {"allow_any": True}, "data": {"source": source, "target": "is_fraud", **data}})


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_transactions(n_rows=500, seed=5)


def test_csv_parquet_and_dataframe_give_the_same_data_and_fingerprint(tmp_path, frame):
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    from_parquet = load_dataset(_spec(str(tmp_path / "d.parquet")))
    from_frame = load_dataset(_spec("unused.csv"), frame=frame)
    assert fingerprint(from_parquet) == fingerprint(from_frame) == fingerprint(frame)
    from_csv = load_dataset(_spec(str(tmp_path / "d.csv")))
    assert len(from_csv) == len(frame) and list(from_csv.columns) == list(frame.columns)


def test_fingerprint_changes_with_one_value_or_the_row_order(frame):
    changed = frame.copy()
    changed.loc[3, "amount"] += 0.01
    assert fingerprint(changed) != fingerprint(frame)
    assert fingerprint(frame.iloc[::-1]) != fingerprint(frame)


def test_time_split_keeps_the_future_out_of_training(frame):
    spec = _spec("x.csv", split={"method": "time", "time_column": "timestamp", "test_size": 0.2})
    split = split_dataset(spec, frame.sample(frac=1, random_state=0))
    assert split.train["timestamp"].max() <= split.holdout["timestamp"].min()
    assert len(split.holdout) == 100


def test_missing_target_and_bad_sources_are_named(tmp_path, frame):
    with pytest.raises(DataError, match="target column 'is_fraud'"):
        load_dataset(_spec("x.csv"), frame=frame.drop(columns=["is_fraud"]))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(_spec(str(tmp_path / "nope.csv")))
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_dataset(_spec(str(tmp_path / "d.xlsx")))
    with pytest.raises(SpecError, match="split.method 'time' needs split.time_column"):
        _spec("x.csv", split={"method": "time"})
