"""The input contract: request bodies in the MLflow scoring and Open Inference Protocol v2
formats, turned into checked columns — or a 4xx error that names the field.

Client input never causes a 500: every malformed shape, type or value becomes a
``ContractError`` with a status and the field at fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from deployments.server.model_runtime import ColumnSpec


class ContractError(Exception):
    """A request the server refuses: HTTP ``status`` with a message naming ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def body(self) -> bytes:
        payload = {"error_code": self.code, "message": self.message}
        if self.field is not None:
            payload["field"] = self.field
        return orjson.dumps(payload)


def bad(message: str, field: str | None = None) -> ContractError:
    return ContractError(400, "BAD_REQUEST", message, field)


def parse_json(body: bytes) -> Any:
    """Parse JSON fast; accept NaN/Infinity literals so that the value check can name the column."""
    if not body.strip():
        raise bad("the request body is empty", "body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise bad(f"malformed JSON: {error}", "body") from None


class MatrixBatch(dict):
    """Columns of an all-numeric batch, also kept as one float64 matrix in model column order,
    so that batching, ONNX and the prediction log can skip per-column work."""

    __slots__ = ("matrix", "_names")

    def __init__(self, names: list[str], matrix: np.ndarray) -> None:
        super().__init__()
        self.matrix = matrix
        self._names = names

    def __missing__(self, name: str) -> np.ndarray:
        value = self.matrix[:, self._names.index(name)]
        self[name] = value
        return value

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        return self._names

    def keys(self):
        return list(self._names)

    def values(self):
        return [self[name] for name in self._names]

    def items(self):
        return [(name, self[name]) for name in self._names]


class InputContract:
    """Checks rows against the model signature's columns."""

    def __init__(self, columns: Sequence[ColumnSpec], max_rows: int) -> None:
        self.columns = list(columns)
        self.by_name = {c.name: c for c in self.columns}
        self.max_rows = max_rows
        self.all_numeric = all(c.numeric for c in self.columns)
        self.names = [c.name for c in self.columns]

    # -- MLflow scoring protocol -----------------------------------------------------------

    def from_mlflow_json(self, payload: Any) -> dict[str, np.ndarray]:
        if not isinstance(payload, dict):
            raise bad("the body must be a JSON object with one of dataframe_split, dataframe_records, "
                      "instances or inputs", "body")
        keys = [k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in payload]
        if len(keys) != 1:
            raise bad("give exactly one of dataframe_split, dataframe_records, instances, inputs "
                      f"(got {sorted(k for k in payload if k != 'params') or 'none'})", "body")
        key = keys[0]
        data = payload[key]
        if key == "dataframe_split":
            if not isinstance(data, dict) or "columns" not in data or "data" not in data:
                raise bad("dataframe_split needs 'columns' and 'data'", "dataframe_split")
            return self.from_split(data["columns"], data["data"], key)
        if isinstance(data, dict):  # inputs/instances as {column: [values]}
            return self.from_column_dict(data, key)
        if isinstance(data, list) and (not data or isinstance(data[0], dict)):
            return self.from_records(data, key)
        if isinstance(data, list) and isinstance(data[0], list):
            return self.from_split([c.name for c in self.columns], data, key)
        raise bad(f"{key} must be a list of records or an object of columns", key)

    def from_split(self, columns: Any, rows: Any, field: str) -> dict[str, np.ndarray]:
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise bad("columns must be a list of column names", f"{field}.columns")
        if not isinstance(rows, list):
            raise bad("data must be a list of rows", f"{field}.data")
        self._check_rows(len(rows), field)
        width = len(columns)
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                raise bad(f"row {index} must be a list of {width} values", f"{field}.data[{index}]")
        self._check_column_names(columns)
        fast = self._fast_numeric(columns, rows)
        if fast is not None:
            return fast
        values = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
        return self._typed(values)

    def _fast_numeric(self, names: list[str], rows: list[list]) -> dict[str, np.ndarray] | None:
        """All-numeric models: one numpy conversion for the whole batch. None sends the batch
        down the per-value path, which names the column of any bad value."""
        if not self.all_numeric:
            return None
        matrix = np.array(rows)
        if matrix.dtype.kind not in "fi" or matrix.ndim != 2 or not np.isfinite(matrix).all():
            return None
        if any(type(value) is bool for row in rows for value in row):
            return None
        matrix = matrix.astype(np.float64, copy=False)
        if names != self.names:
            matrix = matrix[:, [names.index(name) for name in self.names]]
        return MatrixBatch(self.names, matrix)

    def from_records(self, records: list, field: str) -> dict[str, np.ndarray]:
        self._check_rows(len(records), field)
        names = list(records[0].keys())
        self._check_column_names(names)
        values: dict[str, list] = {name: [] for name in names}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise bad(f"record {index} must be an object", f"{field}[{index}]")
            if record.keys() != values.keys():
                missing = sorted(set(names) - set(record))
                extra = sorted(set(record) - set(names))
                self._check_column_names(list(record.keys()))
                raise bad(f"record {index} has different columns (missing {missing}, extra {extra})",
                          f"{field}[{index}]")
            for name in names:
                values[name].append(record[name])
        return self._typed(values)

    def from_column_dict(self, data: dict, field: str) -> dict[str, np.ndarray]:
        self._check_column_names(list(data.keys()))
        lengths = {name: len(v) if isinstance(v, list) else -1 for name, v in data.items()}
        for name, length in lengths.items():
            if length < 0:
                raise bad(f"column '{name}' must be a list of values", name)
        if len(set(lengths.values())) > 1:
            raise bad(f"columns have different lengths: {lengths}", field)
        self._check_rows(next(iter(lengths.values()), 0), field)
        return self._typed({name: list(v) for name, v in data.items()})

    def from_csv(self, body: bytes) -> dict[str, np.ndarray]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("the CSV body is not UTF-8", "body") from None
        reader = csv.reader(io.StringIO(text))
        rows = [row for row in reader if row]
        if not rows:
            raise bad("the CSV body is empty", "body")
        header, data = rows[0], rows[1:]
        self._check_rows(len(data), "body")
        for index, row in enumerate(data):
            if len(row) != len(header):
                raise bad(f"CSV row {index + 1} has {len(row)} values, the header {len(header)}", f"row {index + 1}")
        self._check_column_names(header)
        values: dict[str, list] = {}
        for i, name in enumerate(header):
            raw = [row[i] for row in data]
            if self.by_name[name].numeric:
                try:
                    values[name] = [float(v) for v in raw]
                except ValueError:
                    bad_value = next(v for v in raw if not _is_float(v))
                    raise bad(f"column '{name}': '{bad_value}' is not a number", name) from None
            else:
                values[name] = raw
        return self._typed(values)

    # -- Open Inference Protocol v2 ---------------------------------------------------------

    def from_v2(self, payload: Any) -> dict[str, np.ndarray]:
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise bad("the body must be an object with an 'inputs' list", "inputs")
        values: dict[str, list] = {}
        rows = None
        for index, tensor in enumerate(payload["inputs"]):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise bad(f"inputs[{index}] must be an object with a name", f"inputs[{index}]")
            name = tensor["name"]
            shape, data = tensor.get("shape"), tensor.get("data")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
                raise bad(f"input '{name}': shape must be a list of non-negative integers", f"{name}.shape")
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise bad(f"input '{name}': shape must be [rows] or [rows, 1], got {shape}", f"{name}.shape")
            if not isinstance(data, list):
                raise bad(f"input '{name}': data must be a list", f"{name}.data")
            flat = _flatten(data)
            if len(flat) != shape[0]:
                raise bad(f"input '{name}': shape {shape} says {shape[0]} values, data has {len(flat)}", f"{name}.data")
            if rows is not None and rows != shape[0]:
                raise bad(f"input '{name}' has {shape[0]} rows, other inputs {rows}", f"{name}.shape")
            rows = shape[0]
            values[name] = flat
        self._check_column_names(list(values))
        self._check_rows(rows or 0, "inputs")
        return self._typed(values)

    # -- shared checks ----------------------------------------------------------------------

    def _check_rows(self, rows: int, field: str) -> None:
        if rows == 0:
            raise bad("the batch is empty: send at least one row", field)
        if rows > self.max_rows:
            raise ContractError(413, "TOO_MANY_ROWS", f"{rows} rows exceed the limit of {self.max_rows}", field)

    def _check_column_names(self, names: list[str]) -> None:
        if names == self.names:
            return
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise bad(f"column '{duplicate}' is given twice", duplicate)
        extra = [n for n in names if n not in self.by_name]
        if extra:
            raise bad(f"unknown column '{extra[0]}'; the model takes {[c.name for c in self.columns]}", extra[0])
        missing = [c.name for c in self.columns if c.required and c.name not in names]
        if missing:
            raise bad(f"missing column '{missing[0]}'", missing[0])

    def _typed(self, values: dict[str, list]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for column in self.columns:
            raw = values[column.name]
            if column.numeric:
                for value in raw:
                    kind = type(value)
                    if kind is float:
                        if not math.isfinite(value):
                            raise bad(f"column '{column.name}': NaN and infinity are not allowed", column.name)
                    elif kind is not int:
                        raise bad(f"column '{column.name}': expected a number, got {kind.__name__} {value!r}"[:200],
                                  column.name)
                out[column.name] = np.array(raw, dtype=np.float64)
            else:
                for value in raw:
                    if not isinstance(value, str):
                        raise bad(f"column '{column.name}': expected a string, got {type(value).__name__} {value!r}"[:200],
                                  column.name)
                out[column.name] = np.asarray(raw, dtype=object)
        return out


def _flatten(data: list) -> list:
    if data and isinstance(data[0], list):
        return [item for row in data for item in (row if isinstance(row, list) else [row])]
    return data


def _is_float(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False
