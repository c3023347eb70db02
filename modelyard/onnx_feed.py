"""The ONNX input feed: how a batch's columns become an exported graph's inputs.

One function for the parity check at export (tasks/onnx_export.py) and for the server
(deployments/server/model_runtime.py), so the feed that was proven is the feed that serves.
It needs numpy alone: the server starts without scikit-learn.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

MATRIX = "matrix"
COLUMNS = "columns"


def input_layout(categorical: Collection[str]) -> str:
    """``matrix``: one float tensor [rows, features] (all-numeric models; far less per-call
    overhead in ONNX Runtime). ``columns``: one [rows, 1] tensor per column (mixed types)."""
    return COLUMNS if categorical else MATRIX


def onnx_feed(columns: Mapping[str, np.ndarray], layout: str, feature_order: Sequence[str],
              categorical: Collection[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """ONNX inputs in the graph's ``layout``: one float32 matrix, or one [rows, 1] tensor per
    column (float32 numbers, string categories).

    ``columns`` maps each feature to a 1-D array of the rows' values; a batch that already holds
    them as one matrix in ``feature_order`` (``names`` and ``matrix``, as the server's numeric
    batches do) is not stacked again. ``input_names`` are the graph's inputs, which skl2onnx may
    have sanitised from the column names; they follow ``feature_order`` by position.
    """
    if layout == MATRIX:
        if getattr(columns, "names", None) == list(feature_order):
            matrix = columns.matrix
        else:
            matrix = np.column_stack([columns[c] for c in feature_order])
        return {input_names[0]: matrix.astype(np.float32, copy=False)}
    feed = {}
    for column, name in zip(feature_order, input_names, strict=True):
        values = np.asarray(columns[column])
        if column in categorical:
            feed[name] = values.astype(str).astype(object).reshape(-1, 1)
        else:
            feed[name] = values.astype(np.float32).reshape(-1, 1)
    return feed
