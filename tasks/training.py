"""Training a scikit-learn pipeline from the spec, for any tabular classification or regression."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier, GradientBoostingRegressor, HistGradientBoostingClassifier,
    HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from modelyard.spec import ModelSpec

_ESTIMATORS = {
    ("gradient_boosting", True): GradientBoostingClassifier,
    ("gradient_boosting", False): GradientBoostingRegressor,
    ("hist_gradient_boosting", True): HistGradientBoostingClassifier,
    ("hist_gradient_boosting", False): HistGradientBoostingRegressor,
    ("random_forest", True): RandomForestClassifier,
    ("random_forest", False): RandomForestRegressor,
    ("logistic_regression", True): LogisticRegression,
    ("linear_regression", False): LinearRegression,
    ("ridge", False): Ridge,
}

# The types skops must trust to load the pipelines we build (MLflow >= 3.17 saves with skops).
SKOPS_TRUSTED_TYPES = [
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn.utils._bunch.Bunch",
    "collections.OrderedDict",
    "numpy.dtype",
]


def build_estimator(spec: ModelSpec):
    key = (spec.estimator.kind, spec.is_classification)
    if key not in _ESTIMATORS:
        kind = "classification" if spec.is_classification else "regression"
        raise ValueError(f"estimator.kind '{spec.estimator.kind}' does not do {kind}")
    params = dict(spec.estimator.params)
    cls = _ESTIMATORS[key]
    if "random_state" in cls().get_params() and "random_state" not in params:
        params["random_state"] = spec.data.split.seed
    if cls is LogisticRegression:
        params.setdefault("max_iter", 2000)
    return cls(**params)


def build_pipeline(spec: ModelSpec, numeric: list[str], categorical: list[str]) -> Pipeline:
    """One-hot the categorical columns, scale the numeric ones, then the spec's estimator."""
    transformers = []
    if numeric:
        # Trees split on raw values (in float32, as ONNX does); only linear models need scaling.
        linear = spec.estimator.kind in {"logistic_regression", "linear_regression", "ridge"}
        transformers.append(("numeric", StandardScaler() if linear else "passthrough", numeric))
    if categorical:
        transformers.append(
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)
        )
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", preprocess), ("model", build_estimator(spec))])


@dataclass(frozen=True)
class FeatureSet:
    """The model's input columns, in the order the signature and the ONNX graph use."""

    columns: list[str]
    categorical: list[str]

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.columns if c not in self.categorical]


def model_inputs(frame: pd.DataFrame, features: FeatureSet) -> pd.DataFrame:
    """The feature columns with stable dtypes: float64 for numbers, str for categories."""
    out = pd.DataFrame(index=frame.index)
    for column in features.columns:
        if column in features.categorical:
            out[column] = frame[column].astype(str)
        else:
            out[column] = frame[column].astype(np.float64)
    return out


def train_model(spec: ModelSpec, train: pd.DataFrame, features: FeatureSet) -> Pipeline:
    pipeline = build_pipeline(spec, features.numeric, features.categorical)
    pipeline.fit(model_inputs(train, features), train[spec.data.target])
    return pipeline
