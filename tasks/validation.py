"""Data validation with Great Expectations: a suite from the spec's expectations plus ones
inferred from reference data, run on any frame (training data, a live window, a notebook's).
Plain functions with no Prefect in them; docs/monitoring-design.md lists the GX 1.x quirks
handled here."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from modelyard.json_safe import json_safe
from modelyard.spec import ExpectationSpec, ModelSpec, ValidationSpec

if TYPE_CHECKING:
    import great_expectations as gx


def _gx():
    """great_expectations, imported on first use: it takes seconds, and modules that only name
    these functions (flow definitions loaded by `prefect deploy`) should not pay for it."""
    import great_expectations

    return great_expectations

# --- type classes ------------------------------------------------------------------------
# Names GX 1.x resolves through ``np.dtype(name)``, ``getattr(pandas, name)`` or its own
# native-type map. A numeric column accepts every int and float dtype (numpy and pandas
# nullable), so an int column that comes back as float (a null in a Parquet round trip, a
# JSON payload) does not fail; "int"/"float" cover numbers in an object column. Note that
# the nullable dtypes must be named by their class ("Int64Dtype"), not their alias ("Int64").
NUMERIC_TYPES: tuple[str, ...] = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
    "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
    "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype",
    "Float32Dtype", "Float64Dtype",
    "int", "float",
)
BOOLEAN_TYPES: tuple[str, ...] = ("bool", "BooleanDtype")
# object columns are checked value by value (isinstance str); "StringDtype" matches
# pandas' ``string[python]`` dtype.
STRING_TYPES: tuple[str, ...] = ("str", "StringDtype")
DATETIME_TYPES: tuple[str, ...] = (
    "datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]", "datetime64",
)


# --- results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold, in the terms a person fixing the data needs."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    examples: list = field(default_factory=list)
    details: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation run; ``gx_result`` is GX's own result, JSON-serialisable."""

    success: bool
    evaluated: int
    failed: list[FailedExpectation]
    gx_result: dict


class ValidationFailed(Exception):
    """Raised by callers that refuse to go on with data that failed validation."""

    def __init__(self, report: ValidationReport, title: str = "data validation") -> None:
        self.report = report
        self.title = title
        super().__init__(self._summary())

    def _summary(self) -> str:
        report = self.report
        parts = []
        for failure in report.failed:
            where = f" on {failure.column!r}" if failure.column else ""
            count = f" ({failure.unexpected_count} unexpected)" if failure.unexpected_count else ""
            parts.append(f"{failure.expectation}{where}{count}")
        return (
            f"{self.title} failed: {len(report.failed)} of {report.evaluated} expectations "
            f"did not hold: " + "; ".join(parts)
        )


# --- inference ---------------------------------------------------------------------------
def _type_list(dtype: Any) -> list[str] | None:
    """The GX type list for a reference column's dtype, or None where GX cannot name it."""
    if pd.api.types.is_bool_dtype(dtype):
        return list(BOOLEAN_TYPES)
    if isinstance(dtype, pd.CategoricalDtype):
        return None  # GX's pandas type check cannot match a category dtype by any name
    if pd.api.types.is_numeric_dtype(dtype):
        return list(NUMERIC_TYPES)
    if pd.api.types.is_datetime64_dtype(dtype):  # naive only; tz-aware cannot be named
        return list(DATETIME_TYPES)
    if isinstance(dtype, pd.StringDtype):
        return list(STRING_TYPES) if dtype.storage == "python" else None
    if dtype == object:
        return list(STRING_TYPES)
    return None


def _numeric_range(series: pd.Series, tolerance: float) -> tuple[float, float] | None:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    pad = tolerance * (high - low)
    return low - pad, high + pad


def _value_set(series: pd.Series) -> list:
    values = [json_safe(v) for v in pd.unique(series.dropna())]
    try:
        return sorted(values)
    except TypeError:  # mixed types
        return values


def infer_expectations(
    reference: pd.DataFrame,
    columns: list[str],
    categorical: list[str],
    validation: ValidationSpec,
) -> list[ExpectationSpec]:
    """Expectations that the reference frame meets, over ``columns``.

    A table-level check that all the columns are present (extra columns allowed), then for each
    column: it exists; its type class (numeric, boolean, string or datetime; int and float are
    one class); no nulls if the reference has none; numeric columns within the reference range
    widened by ``range_tolerance`` of its span; ``categorical`` columns within the reference's
    set of values. Value checks hold for at least ``validation.mostly`` of the rows; numeric
    ranges for ``validation.range_mostly`` when set (heavy tails: a fresh sample always has a few
    values beyond the reference's range, while an unseen category or a null is a real break).
    """
    missing = [c for c in columns if c not in reference.columns]
    if missing:
        raise ValueError(f"reference data has no column(s) {missing}; it has {list(reference.columns)}")
    categorical_set = set(categorical)
    mostly = validation.mostly
    expectations = [
        ExpectationSpec(
            type="expect_table_columns_to_match_set",
            kwargs={"column_set": list(columns), "exact_match": False},
        )
    ]
    for column in columns:
        series = reference[column]
        expectations.append(ExpectationSpec(type="expect_column_to_exist", column=column))
        types = _type_list(series.dtype)
        if types is not None:
            expectations.append(
                ExpectationSpec(
                    type="expect_column_values_to_be_in_type_list",
                    column=column,
                    kwargs={"type_list": types},
                )
            )
        if not series.isna().any():
            expectations.append(
                ExpectationSpec(
                    type="expect_column_values_to_not_be_null", column=column, kwargs={"mostly": mostly}
                )
            )
        if column in categorical_set:
            expectations.append(
                ExpectationSpec(
                    type="expect_column_values_to_be_in_set",
                    column=column,
                    kwargs={"value_set": _value_set(series), "mostly": mostly},
                )
            )
        elif pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
            bounds = _numeric_range(series, validation.range_tolerance)
            if bounds is not None:
                expectations.append(
                    ExpectationSpec(
                        type="expect_column_values_to_be_between",
                        column=column,
                        kwargs={"min_value": bounds[0], "max_value": bounds[1],
                                "mostly": validation.range_mostly or mostly},
                    )
                )
    return expectations


# --- suites ------------------------------------------------------------------------------
_EXPECTATION_CLASSES: dict[str, type] | None = None


def _expectation_classes() -> dict[str, type]:
    """GX's expectation classes by their snake-case type (ExpectColumnKLDivergence... included)."""
    global _EXPECTATION_CLASSES
    if _EXPECTATION_CLASSES is None:
        classes: dict[str, type] = {}
        gx = _gx()
        for name in dir(gx.expectations):
            cls = getattr(gx.expectations, name)
            if (
                isinstance(cls, type)
                and issubclass(cls, gx.expectations.Expectation)
                and name.startswith("Expect")
            ):
                snake = getattr(cls, "expectation_type", "") or ""
                classes[snake or _snake(name)] = cls
        _EXPECTATION_CLASSES = classes
    return _EXPECTATION_CLASSES


def _snake(camel: str) -> str:
    out = []
    for i, ch in enumerate(camel):
        if ch.isupper() and i and not camel[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def expectation_class(type_name: str) -> type:
    """The GX class for a snake-case expectation type; ValueError naming an unknown one."""
    classes = _expectation_classes()
    cls = classes.get(type_name)
    if cls is None:
        camel = "".join(part.capitalize() for part in type_name.split("_"))
        gx = _gx()
        cls = getattr(gx.expectations, camel, None)
        if not (isinstance(cls, type) and issubclass(cls, gx.expectations.Expectation)):
            close = difflib.get_close_matches(type_name, list(classes), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown expectation type {type_name!r}{hint}")
    return cls


def build_suite(name: str, expectations: Sequence[ExpectationSpec]) -> gx.ExpectationSuite:
    """A GX suite of the given expectations; ValueError names an unknown type or bad kwargs."""
    built = []
    for spec in expectations:
        cls = expectation_class(spec.type)
        kwargs = dict(spec.kwargs)
        if spec.column is not None:
            kwargs["column"] = spec.column
        try:
            built.append(cls(**kwargs))
        except (ValueError, TypeError) as error:  # GX models are pydantic.v1: ValueError
            where = f" on column {spec.column!r}" if spec.column else ""
            raise ValueError(f"invalid expectation {spec.type}{where}: {error}") from error
    # Quirk: suite.add_expectation() needs an active Data Context; the constructor does not.
    return _gx().ExpectationSuite(name=name, expectations=built)


def _categorical_columns(spec: ModelSpec, reference: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    if spec.data.categorical is not None:
        chosen = list(spec.data.categorical)
    else:
        chosen = [
            c for c in columns
            if isinstance(reference[c].dtype, (pd.CategoricalDtype, pd.StringDtype))
            or reference[c].dtype == object
        ]
    target = spec.data.target
    # A classifier's labels are a category set whatever their dtype: an unseen label is wrong.
    if spec.is_classification and target in columns and target not in chosen:
        chosen.append(target)
    return chosen


def suite_for_model(
    spec: ModelSpec,
    reference: pd.DataFrame,
    columns: list[str] | None = None,
    include_target: bool = True,
) -> tuple[gx.ExpectationSuite, list[ExpectationSpec]]:
    """The suite a model's data must meet: the spec's explicit expectations plus inferred ones.

    Columns are ``columns``, else ``spec.data.features``, else every reference column except
    ``spec.data.exclude`` and the target. With ``include_target`` (training data) the target
    column is checked too when the reference has it; without it (live windows, which carry no
    labels) nothing about the target is expected, explicit expectations on it included.
    Returns the suite and the expectation specs it was built from.
    """
    target = spec.data.target
    if columns is None:
        columns = list(spec.data.features) if spec.data.features is not None else list(reference.columns)
    exclude = set(spec.data.exclude) | {target}
    chosen = [c for c in columns if c not in exclude]
    if include_target and target in reference.columns:
        chosen.append(target)

    explicit = [
        e for e in spec.validation.expectations if include_target or e.column != target
    ]
    inferred: list[ExpectationSpec] = []
    if spec.validation.infer_from_reference:
        inferred = infer_expectations(
            reference, chosen, _categorical_columns(spec, reference, chosen), spec.validation
        )
    expectations = explicit + inferred
    name = f"{spec.name}-{'training' if include_target else 'live'}-data"
    return build_suite(name, expectations), expectations


# --- running -----------------------------------------------------------------------------
def _current_context() -> Any:
    """The process-wide current GX context, or None (internal GX API, hence the guard)."""
    try:
        from great_expectations.data_context.data_context.context_factory import project_manager

        return project_manager.get_current_project()
    except Exception:  # noqa: BLE001 - none set, or GX moved it
        return None


def _restore_context(previous: Any) -> None:
    try:
        from great_expectations.data_context.data_context.context_factory import project_manager

        project_manager.set_project(previous)
    except Exception:  # noqa: BLE001 - GX moved it: leave GX's own choice in place
        pass


def _exception_message(info: Any) -> str | None:
    """The first exception message in a result's ``exception_info`` (flat or keyed by metric)."""
    if not isinstance(info, dict) or not info:
        return None
    if info.get("raised_exception") or info.get("exception_message"):
        return info.get("exception_message") or "exception raised"
    for value in info.values():
        if isinstance(value, dict) and value.get("exception_message"):
            return value["exception_message"]
    return None


def _column_of(kwargs: dict) -> str | None:
    if kwargs.get("column") is not None:
        return str(kwargs["column"])
    if kwargs.get("column_A") is not None:
        return f"{kwargs['column_A']}, {kwargs.get('column_B')}"
    if kwargs.get("column_list"):
        return ", ".join(map(str, kwargs["column_list"]))
    return None


def _distinct(values: Iterable[Any]) -> list:
    """Values in first-seen order without repeats (GX's partial list repeats a common bad value)."""
    seen: list = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _failure(result: dict, examples: int, present: set[str]) -> FailedExpectation:
    config = result.get("expectation_config") or {}
    expectation = config.get("type", "?")
    kwargs = config.get("kwargs") or {}
    column = _column_of(kwargs)
    outcome = result.get("result") or {}
    count = outcome.get("unexpected_count")
    percent = outcome.get("unexpected_percent")
    values = _distinct(outcome.get("partial_unexpected_list") or [])[:examples]
    rows = list(outcome.get("partial_unexpected_index_list") or [])[:examples]
    error = _exception_message(result.get("exception_info"))
    sample: list
    absent = kwargs.get("column") is not None and str(kwargs["column"]) not in present
    if absent or expectation == "expect_column_to_exist":
        # GX reports an expectation on a missing column as an exception (or, for the type
        # check, an IndexError): say what it means instead.
        details, sample = f"column {column!r} is missing", []
    elif error is not None:
        details, sample = f"GX raised: {error}", []
    elif expectation == "expect_column_values_to_not_be_null":
        # every bad value is None: the useful examples are the rows that hold them
        details, sample = f"null in rows {rows}", rows
    elif "details" in outcome and isinstance(outcome["details"], dict) and "mismatched" in outcome["details"]:
        mismatched = outcome["details"]["mismatched"] or {}
        missing = list(mismatched.get("missing") or [])
        details, sample = f"missing columns {missing}", missing[:examples]
        column = column or (", ".join(map(str, missing)) or None)
    elif count is not None:
        details = f"unexpected values {values}" + (f" in rows {rows}" if rows else "")
        sample = values
    else:
        observed = outcome.get("observed_value")
        wanted = {k: v for k, v in kwargs.items() if k not in ("column", "batch_id")}
        details, sample = f"observed {observed!r}; expected {wanted}", [observed] if observed is not None else []
    return FailedExpectation(
        expectation=expectation,
        column=column,
        unexpected_count=int(count) if count is not None else None,
        unexpected_percent=float(percent) if percent is not None else None,
        examples=sample,
        details=details,
    )


def validate_frame(df: pd.DataFrame, suite: gx.ExpectationSuite, examples: int = 5) -> ValidationReport:
    """Run ``suite`` on ``df`` with GX and say what failed, with up to ``examples`` bad values each.

    The suite is not changed, so one suite validates any number of frames. Each call builds a
    throwaway ephemeral context, pandas data source and whole-frame batch definition.
    """
    previous = _current_context()
    try:
        context = _gx().get_context(mode="ephemeral")
        # No tqdm "Calculating Metrics" bars on stderr in flow logs.
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas(name="modelyard")
        asset = source.add_dataframe_asset(name="frame")
        batch_definition = asset.add_batch_definition_whole_dataframe(name="whole-frame")
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(
            suite,
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": max(int(examples), 1),
                "include_unexpected_rows": False,
            },
        )
        gx_result = result.to_json_dict()
    finally:
        _restore_context(previous)

    present = {str(c) for c in df.columns}
    failed = [
        _failure(r, examples, present) for r in gx_result.get("results", []) if not r.get("success")
    ]
    # GX returns results grouped by its metric graph; report them in the suite's order.
    order: dict[tuple[str, str | None], int] = {}
    for position, expectation in enumerate(suite.expectations):
        column = getattr(expectation, "column", None)
        order.setdefault((expectation.expectation_type, None if column is None else str(column)), position)
    failed.sort(key=lambda f: order.get((f.expectation, f.column), order.get((f.expectation, None), len(order))))
    statistics = gx_result.get("statistics") or {}
    return ValidationReport(
        success=bool(gx_result.get("success")),
        evaluated=int(statistics.get("evaluated_expectations", len(gx_result.get("results", [])))),
        failed=failed,
        gx_result=gx_result,
    )
