"""The input contract: request bodies in the MLflow scoring and Open Inference Protocol v2
formats, turned into checked columns — or a 4xx error that names the field.

Client input never causes a 500: every malformed shape, type or value becomes a
``ContractError`` with a status and the field at fault. Every column must be given; a column
takes missing values (``null``, NaN, an empty CSV field) only where the training data had them
(``ColumnSpec.nullable``). Numbers must be finite and within ±(2**63 - 1), whether written as
integers or not; openapi.py states the same rules as JSON Schema.
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

# Symmetric, so that a float can state each bound exactly: no float lies strictly between
# 2**63 - 1 and 2**63, and JSON parsers round an integer just past a bound to ±2**63.
INT64_MIN, INT64_MAX = -(2**63 - 1), 2**63 - 1
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
V2_DATATYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                "FP16", "FP32", "FP64", "BF16", "BYTES"}
NUMERIC_V2_DATATYPES = V2_DATATYPES - {"BOOL", "BYTES"}


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


MODELS_PREFIX = "/v2/models/"


def unknown_model_route(path: str, model: str, version: str) -> ContractError:
    """The answer to a ``/v2/models/…`` path this server has no route for: 400 naming
    ``model_name`` or ``model_version`` when the path's name or version is not a valid one
    (``modelyard.names``: the pattern every entry point checks), else 404 for a valid name of
    a model or version this server does not serve."""
    from modelyard.names import InvalidName, check_model_name, check_version

    parts = path[len(MODELS_PREFIX):].split("/")
    try:
        check_model_name(parts[0], "model_name")
        if len(parts) >= 3 and parts[1] == "versions":
            check_version(parts[2], "model_version")
    except InvalidName as error:
        field = str(error).split(":", 1)[0]
        return ContractError(400, "INVALID_NAME", str(error)[:300], field)
    return ContractError(404, "MODEL_NOT_FOUND", f"this server serves model '{model}' version {version}", "model")


def parse_json(body: bytes) -> Any:
    """Parse JSON fast with orjson. What orjson refuses is parsed again by the standard library,
    which reads NaN/Infinity literals (so that the value check can name the column) and
    integers beyond 64 bits (refused by range, naming the column too)."""
    if not body.strip():
        raise bad("the request body is empty", "body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        reason = str(error).split(":", 1)[0]
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad(f"malformed JSON: {reason}"[:200], "body") from None
    _check_strings(payload)
    return payload


def _check_strings(payload: Any) -> None:
    """Refuse strings that are no Unicode text (lone surrogates), which orjson refuses too."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise bad("malformed JSON: a string holds a lone surrogate", "body") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


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
        unknown = [k for k in payload if k not in MLFLOW_FORMATS and k != "params"]
        if unknown:
            raise bad(f"unknown field '{unknown[0]}'; give one of {list(MLFLOW_FORMATS)} (and params)"[:300],
                      unknown[0][:100])
        if "params" in payload and not isinstance(payload["params"], dict):
            raise bad("params must be an object", "params")
        keys = [k for k in MLFLOW_FORMATS if k in payload]
        if len(keys) != 1:
            raise bad(f"give exactly one of dataframe_split, dataframe_records, instances, inputs (got {keys or 'none'})",
                      "body")
        key = keys[0]
        data = payload[key]
        if key == "dataframe_split":
            if not isinstance(data, dict) or "columns" not in data or "data" not in data:
                raise bad("dataframe_split needs 'columns' and 'data'", "dataframe_split")
            extra = [k for k in data if k not in ("columns", "data", "index")]
            if extra:
                raise bad(f"dataframe_split has an unknown field '{extra[0]}'"[:200], f"dataframe_split.{extra[0]}"[:100])
            if not isinstance(data.get("index", []), list):
                raise bad("dataframe_split.index must be a list", "dataframe_split.index")
            return self.from_split(data["columns"], data["data"], key)
        if isinstance(data, dict):  # inputs/instances as {column: [values]}
            return self.from_column_dict(data, key)
        if isinstance(data, list) and (not data or isinstance(data[0], dict)):
            return self.from_records(data, key)
        if isinstance(data, list) and isinstance(data[0], list):
            return self.from_split(self.names, data, key)
        raise bad(f"{key} must be a list of records, a list of rows or an object of columns", key)

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
        try:
            matrix = np.array(rows)
        except (ValueError, TypeError, OverflowError):  # ragged nesting, huge integers: the slow path names them
            return None
        if matrix.dtype.kind not in "fi" or matrix.ndim != 2:
            return None
        matrix = matrix.astype(np.float64, copy=False)
        # One check for NaN, infinity and the range (NaN compares false); values at a bound are
        # for the per-value path, which compares integers exactly.
        if matrix.size and not np.abs(matrix).max() < 2.0**63:
            return None
        if any(type(value) is bool for row in rows for value in row):
            return None
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
                self._check_column_names(list(record.keys()))
                raise bad(f"record {index} has different columns from record 0", f"{field}[{index}]")
            for name in names:
                values[name].append(record[name])
        return self._typed(values)

    def from_column_dict(self, data: dict, field: str) -> dict[str, np.ndarray]:
        self._check_column_names(list(data.keys()))
        for name, column in data.items():
            if not isinstance(column, list):
                raise bad(f"column '{name}' must be a list of values", name)
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise bad(f"columns have different lengths: {sorted(lengths)}"[:200], field)
        self._check_rows(lengths.pop() if lengths else 0, field)
        return self._typed({name: list(v) for name, v in data.items()})

    def from_csv(self, body: bytes) -> dict[str, np.ndarray]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("the CSV body is not UTF-8", "body") from None
        try:
            rows = [row for row in csv.reader(io.StringIO(text)) if row]
        except csv.Error as error:  # a field over the csv module's limit (128 KB), a NUL byte, ...
            raise bad(f"malformed CSV: {error}"[:200], "body") from None
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
            column = self.by_name[name]
            if column.numeric:
                values[name] = [_csv_number(v, column) for v in raw]
            else:
                values[name] = raw
        return self._typed(values)

    # -- Open Inference Protocol v2 ---------------------------------------------------------

    def from_v2(self, payload: Any) -> dict[str, np.ndarray]:
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise bad("the body must be an object with an 'inputs' list", "inputs")
        unknown = [k for k in payload if k not in ("id", "inputs", "outputs", "parameters")]
        if unknown:
            raise bad(f"unknown field '{unknown[0]}'"[:200], unknown[0][:100])
        if "id" in payload and not isinstance(payload["id"], str):
            raise bad("id must be a string", "id")
        if "parameters" in payload and not isinstance(payload["parameters"], dict):
            raise bad("parameters must be an object", "parameters")
        values: dict[str, list] = {}
        rows = None
        for index, tensor in enumerate(payload["inputs"]):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise bad(f"inputs[{index}] must be an object with a name", f"inputs[{index}]")
            name = tensor["name"]
            if name not in self.by_name:
                self._check_column_names([name])
            extra = [k for k in tensor if k not in ("name", "shape", "datatype", "data", "parameters")]
            if extra:
                raise bad(f"input '{name}' has an unknown field '{extra[0]}'"[:200], f"{name}.{extra[0]}"[:100])
            if "parameters" in tensor and not isinstance(tensor["parameters"], dict):
                raise bad(f"input '{name}': parameters must be an object", f"{name}.parameters")
            datatype = tensor.get("datatype")
            allowed = NUMERIC_V2_DATATYPES if self.by_name[name].numeric else {"BYTES"}
            if not isinstance(datatype, str) or datatype not in allowed:
                raise bad(f"input '{name}': datatype must be one of {sorted(allowed)}", f"{name}.datatype")
            shape, data = tensor.get("shape"), tensor.get("data")
            if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
                raise bad(f"input '{name}': shape must be a list of non-negative integers", f"{name}.shape")
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise bad(f"input '{name}': shape must be [rows] or [rows, 1], got {shape}"[:200], f"{name}.shape")
            if not isinstance(data, list):
                raise bad(f"input '{name}': data must be a list", f"{name}.data")
            flat = _flatten(data) if len(shape) == 2 else data
            if flat is None:
                raise bad(f"input '{name}': shape {shape} needs data as a list of one-value rows", f"{name}.data")
            if len(flat) != shape[0]:
                raise bad(f"input '{name}': shape {shape} says {shape[0]} values, data has {len(flat)}", f"{name}.data")
            if rows is not None and rows != shape[0]:
                raise bad(f"input '{name}' has {shape[0]} rows, other inputs {rows}", f"{name}.shape")
            rows = shape[0]
            if name in values:
                raise bad(f"input '{name}' is given twice", name)
            values[name] = flat
        self._check_column_names(list(values))
        self._check_rows(rows or 0, "inputs")
        return self._typed(values)

    def requested_outputs(self, payload: dict, available: Sequence[str]) -> list[str] | None:
        """The output names a v2 request asks for (None: all), checked before the model runs."""
        if "outputs" not in payload:
            return None
        outputs = payload["outputs"]
        if not isinstance(outputs, list):
            raise bad("outputs must be a list of objects with a name", "outputs")
        names = []
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise bad(f"outputs[{index}] must be an object with a name", f"outputs[{index}]")
            extra = [k for k in output if k not in ("name", "parameters")]
            if extra:
                raise bad(f"outputs[{index}] has an unknown field '{extra[0]}'"[:200], f"outputs[{index}]")
            if "parameters" in output and not isinstance(output["parameters"], dict):
                raise bad(f"outputs[{index}]: parameters must be an object", f"outputs[{index}].parameters")
            if output["name"] not in available:
                raise bad(f"unknown output {output['name']!r}; the model gives {list(available)}"[:200], "outputs")
            names.append(output["name"])
        return names or None

    # -- shared checks ----------------------------------------------------------------------

    def _check_rows(self, rows: int, field: str) -> None:
        if rows == 0:
            raise bad("the batch is empty: send at least one row", field)
        if rows > self.max_rows:
            raise ContractError(400, "TOO_MANY_ROWS", f"{rows} rows exceed the limit of {self.max_rows}", field)

    def _check_column_names(self, names: list[str]) -> None:
        if names == self.names:
            return
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise bad(f"column '{duplicate}' is given twice"[:200], duplicate[:100])
        extra = [n for n in names if n not in self.by_name]
        if extra:
            raise bad(f"unknown column '{extra[0]}'; the model takes {self.names}"[:300], extra[0][:100])
        missing = [name for name in self.names if name not in names]
        if missing:
            raise bad(f"missing column '{missing[0]}'", missing[0])

    def _typed(self, values: dict[str, list]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for column in self.columns:
            raw = values[column.name]
            if column.numeric:
                if column.nullable:
                    raw = [math.nan if value is None else value for value in raw]
                for value in raw:
                    _check_number(value, column)
                out[column.name] = np.array(raw, dtype=np.float64)
            else:
                for value in raw:
                    if not isinstance(value, str) and not (value is None and column.nullable):
                        raise bad(f"column '{column.name}': expected a string, got {_describe(value)}", column.name)
                out[column.name] = np.asarray(raw, dtype=object)
        return out


def _check_number(value: Any, column: ColumnSpec) -> None:
    kind = type(value)
    if kind is float:
        if math.isnan(value):
            if not column.nullable:
                raise bad(f"column '{column.name}': missing values (null, NaN) are not allowed: the model "
                          "never saw any here", column.name)
        elif not -(2.0**63) < value < 2.0**63:
            raise bad(f"column '{column.name}': {value!r} is infinite or outside ±(2**63 - 1)", column.name)
    elif kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise bad(f"column '{column.name}': an integer of {len(str(abs(value)))} digits is outside ±(2**63 - 1)",
                      column.name)
    elif value is None:
        raise bad(f"column '{column.name}': missing values (null, NaN) are not allowed: the model never saw any "
                  "here", column.name)
    else:
        raise bad(f"column '{column.name}': expected a number, got {_describe(value)}", column.name)


def _csv_number(text: str, column: ColumnSpec) -> float | None:
    if text == "" and column.nullable:
        return None
    try:
        return float(text)
    except ValueError:
        raise bad(f"column '{column.name}': {text[:40]!r} is not a number", column.name) from None


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _flatten(data: list) -> list | None:
    """Rows of a [rows, 1] tensor as one list (None when a row is no one-value list); a flat
    list is taken as it is (the protocol allows both)."""
    if not data or not isinstance(data[0], list):
        return data
    flat = []
    for row in data:
        if not isinstance(row, list) or len(row) != 1:
            return None
        flat.append(row[0])
    return flat
