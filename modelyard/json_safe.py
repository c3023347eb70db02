"""The one converter from what numpy, pandas and dataclasses hand us to what JSON can hold:
ledger records, Prefect event payloads, MLflow dicts and expectation kwargs all go through it."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with string keys, plain Python numbers (NaN and ±inf as None), lists for tuples
    and ISO strings for timestamps; anything else unchanged."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str):
        return str(value)  # a StrEnum member (an Action, an Event) as its plain value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
