"""Export a trained pipeline to ONNX and prove it predicts what the pipeline predicts.

ONNX is data, not code: a version that converts with proven parity is served by ONNX
Runtime, fast and without unpickling anything. One that does not stays pyfunc-only, and
the reason is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from modelyard import onnx_feed as feed
from tasks.training import FeatureSet, model_inputs

PROBABILITY_TOLERANCE = 1e-5


@dataclass
class OnnxResult:
    ok: bool
    reason: str
    model_bytes: bytes | None = None
    parity: dict = field(default_factory=dict)
    layout: str = feed.COLUMNS


def onnx_feed(frame: pd.DataFrame, features: FeatureSet, input_names: list[str]) -> dict[str, np.ndarray]:
    """The ONNX inputs of ``frame`` in the layout the export chooses, fed as the server feeds them."""
    inputs = model_inputs(frame, features)
    return feed.onnx_feed({c: inputs[c].to_numpy() for c in features.columns}, feed.input_layout(features.categorical),
                          features.columns, features.categorical, input_names)


def convert(pipeline: Pipeline, features: FeatureSet, is_classifier: bool) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    initial_types = [
        (c, StringTensorType([None, 1]) if c in features.categorical else FloatTensorType([None, 1]))
        for c in features.columns
    ]
    if feed.input_layout(features.categorical) == feed.MATRIX:
        pipeline = _numeric_only(pipeline)
        initial_types = [("features", FloatTensorType([None, len(features.columns)]))]
    options = {id(pipeline): {"zipmap": False}} if is_classifier else None
    if is_classifier and isinstance(pipeline, Pipeline):
        options = {id(pipeline.steps[-1][1]): {"zipmap": False}}
    model = convert_sklearn(pipeline, initial_types=initial_types, options=options, target_opset=17)
    return model.SerializeToString()


def _numeric_only(pipeline: Pipeline):
    """The same model without the column selection: the numeric transformer (when it is not a
    passthrough) and the estimator, taking the feature matrix in ``features.columns`` order."""
    from sklearn.pipeline import Pipeline as SkPipeline

    preprocess, estimator = pipeline.named_steps["preprocess"], pipeline.named_steps["model"]
    transformer = preprocess.named_transformers_["numeric"]
    if transformer == "passthrough":
        return estimator
    return SkPipeline([("numeric", transformer), ("model", estimator)])


def export_with_parity(
    pipeline: Pipeline, features: FeatureSet, holdout: pd.DataFrame, is_classifier: bool
) -> OnnxResult:
    """Convert, then compare on the holdout: classes exactly, probabilities within 1e-5
    (absolute), regression values within 1e-5 relative to their magnitude."""
    try:
        model_bytes = convert(pipeline, features, is_classifier)
    except Exception as error:  # skl2onnx raises many kinds for unsupported models
        return OnnxResult(False, f"conversion failed: {type(error).__name__}: {error}"[:500])
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        input_names = [i.name for i in session.get_inputs()]
        outputs = session.run(None, onnx_feed(holdout, features, input_names))
    except Exception as error:
        return OnnxResult(False, f"ONNX Runtime could not run the model: {type(error).__name__}: {error}"[:500])
    reference_inputs = model_inputs(holdout, features)
    if is_classifier:
        onnx_labels, onnx_proba = outputs[0].reshape(-1), np.asarray(outputs[1])
        sk_labels = pipeline.predict(reference_inputs)
        sk_proba = pipeline.predict_proba(reference_inputs)
        disagreements = int(np.sum(onnx_labels.astype(str) != sk_labels.astype(str)))
        max_diff = float(np.max(np.abs(onnx_proba - sk_proba))) if len(sk_proba) else 0.0
        parity = {"rows": len(holdout), "class_disagreements": disagreements, "max_abs_probability_diff": max_diff}
        if disagreements:
            return OnnxResult(False, f"parity failed: {disagreements} of {len(holdout)} classes differ", None, parity)
    else:
        onnx_values = np.asarray(outputs[0]).reshape(-1)
        sk_values = pipeline.predict(reference_inputs).reshape(-1)
        # Values are compared relative to their size: float32 carries ~7 significant digits.
        scale = np.maximum(1.0, np.abs(sk_values))
        max_diff = float(np.max(np.abs(onnx_values - sk_values) / scale)) if len(sk_values) else 0.0
        parity = {"rows": len(holdout), "max_rel_value_diff": max_diff}
    if max_diff > PROBABILITY_TOLERANCE:
        return OnnxResult(False, f"parity failed: max difference {max_diff:.3g} > {PROBABILITY_TOLERANCE}", None, parity)
    parity["input_names"] = input_names
    return OnnxResult(True, "parity verified on the holdout", model_bytes, parity, feed.input_layout(features.categorical))
