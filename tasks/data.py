"""Loading a model's data, fingerprinting it, and splitting it — for any tabular dataset.

Nothing here knows a dataset or a column: the spec's ``DataSpec`` says where the data lives,
which column is the target and how to split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from modelyard.spec import DataSpec, ModelSpec


class DataError(ValueError):
    """The data cannot be loaded or does not have what the spec asks for."""


def load_sklearn_dataset(name: str) -> pd.DataFrame:
    """A dataset bundled with scikit-learn (no download), as one frame with a ``target`` column."""
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes,
               "iris": datasets.load_iris, "wine": datasets.load_wine}
    if name not in loaders:
        raise DataError(f"unknown sklearn dataset '{name}'; bundled: {sorted(loaders)}")
    bunch = loaders[name](as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def load_generated_dataset(name: str, params: dict) -> pd.DataFrame:
    """A frame from one of modelyard's seeded demo generators."""
    if name == "card_transactions":
        from tasks.demo_data import generate_transactions

        return generate_transactions(**params)
    raise DataError(f"unknown generator '{name}'; available: ['card_transactions']")


def load_source(data: DataSpec, base_dir: Path) -> pd.DataFrame:
    """Read ``data.source``: a CSV/Parquet path, ``sklearn:<name>`` or ``generator:<name>``."""
    source = data.source
    if source.startswith("sklearn:"):
        return load_sklearn_dataset(source.split(":", 1)[1])
    if source.startswith("generator:"):
        return load_generated_dataset(source.split(":", 1)[1], data.generator_params)
    path = Path(source) if Path(source).is_absolute() else base_dir / source
    if not path.exists():
        raise DataError(f"data source {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if suffix in {".csv", ".txt"} or path.name.endswith(".csv.gz"):
        return pd.read_csv(path)
    raise DataError(f"data source {path}: unsupported format '{suffix}' (use .csv or .parquet)")


def load_dataset(spec: ModelSpec, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The model's data: ``frame`` when given (the DataFrame loader), else the spec's source."""
    data = frame.copy() if frame is not None else load_source(spec.data, spec.base_dir)
    if spec.data.target not in data.columns:
        raise DataError(f"target column '{spec.data.target}' is not in the data (columns: {list(data.columns)})")
    return data


def feature_columns(spec: ModelSpec, data: pd.DataFrame) -> list[str]:
    """The spec's features, or every column but the target and the excluded ones."""
    if spec.data.features:
        missing = [c for c in spec.data.features if c not in data.columns]
        if missing:
            raise DataError(f"feature columns {missing} are not in the data")
        return list(spec.data.features)
    skip = {spec.data.target, *spec.data.exclude}
    return [c for c in data.columns if c not in skip]


def categorical_columns(spec: ModelSpec, data: pd.DataFrame, features: list[str]) -> list[str]:
    if spec.data.categorical is not None:
        return [c for c in spec.data.categorical if c in features]
    return [c for c in features if not pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_datetime64_any_dtype(data[c])]


def fingerprint(data: pd.DataFrame) -> str:
    """sha256 over a canonical serialisation: column names, dtypes and row hashes in order.

    Independent of the file format the data came from, sensitive to any changed value,
    column, dtype or row order.
    """
    digest = hashlib.sha256()
    for column in data.columns:
        digest.update(f"{column}\x1f{data[column].dtype}\x1e".encode())
    row_hashes = pd.util.hash_pandas_object(data, index=False).to_numpy(dtype=np.uint64)
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    holdout: pd.DataFrame


def split_dataset(spec: ModelSpec, data: pd.DataFrame) -> Split:
    """Random (stratified for classification) or time-ordered split, as the spec says."""
    split = spec.data.split
    if split.method == "time":
        if split.time_column not in data.columns:
            raise DataError(f"split.time_column '{split.time_column}' is not in the data")
        ordered = data.sort_values(split.time_column, kind="stable")
        cut = int(round(len(ordered) * (1 - split.test_size)))
        return Split(ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True))
    stratify = data[spec.data.target] if (spec.is_classification and split.stratify) else None
    train, holdout = train_test_split(data, test_size=split.test_size, random_state=split.seed, stratify=stratify)
    return Split(train.reset_index(drop=True), holdout.reset_index(drop=True))
