"""Data validation with real Great Expectations runs: suites inferred from reference data catch
nulls, out-of-range values, missing columns and unseen categories, name the column and show the
bad values, and one suite validates training data and later live windows alike."""

from __future__ import annotations

import gc
import json
import time
import weakref

import numpy as np
import pandas as pd
import pytest

from modelyard.spec import ExpectationSpec, ModelSpec, ValidationSpec, parse_spec
from tasks.reporting import report_markdown
from tasks.validation import (
    FailedExpectation,
    ValidationFailed,
    ValidationReport,
    build_suite,
    infer_expectations,
    suite_for_model,
    validate_frame,
)

N = 200


def _reference() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "amount": np.round(rng.uniform(1.0, 99.0, N), 2),  # float
            "count": rng.integers(0, 21, N),  # int64
            "color": rng.choice(["red", "green", "blue"], N),  # object -> categorical
            "label": rng.integers(0, 2, N),  # target
        }
    ).astype({"color": object})


def _spec(**validation) -> ModelSpec:
    return parse_spec(
        {
            "name": "demo", "team": "t",
            "task": "binary_classification",
            "data": {"source": "demo.csv", "target": "label"},
            "metrics": {"primary": "roc_auc"},
            "policy": {"allow_any": True},
            "validation": {
                "expectations": [
                    {
                        "type": "expect_column_values_to_be_between",
                        "column": "amount",
                        "kwargs": {"min_value": 0, "max_value": 100},
                    }
                ],
                **validation,
            },
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return _reference()


@pytest.fixture(scope="module")
def training_suite(reference):
    suite, expectations = suite_for_model(_spec(), reference)
    return suite, expectations


def _failures(report: ValidationReport, expectation: str, column: str | None = None) -> list[FailedExpectation]:
    return [
        f for f in report.failed
        if f.expectation == expectation and (column is None or f.column == column)
    ]


def test_inferred_expectations_cover_every_column(reference):
    specs = infer_expectations(
        reference, ["amount", "count", "color"], ["color"], ValidationSpec(range_tolerance=0.1)
    )
    by = {(s.type, s.column): s for s in specs}
    table = by[("expect_table_columns_to_match_set", None)]
    assert table.kwargs == {"column_set": ["amount", "count", "color"], "exact_match": False}
    for column in ("amount", "count", "color"):
        assert ("expect_column_to_exist", column) in by
        assert ("expect_column_values_to_not_be_null", column) in by
        assert ("expect_column_values_to_be_in_type_list", column) in by
    # int and float are one type class
    assert "float64" in by[("expect_column_values_to_be_in_type_list", "count")].kwargs["type_list"]
    assert "int64" in by[("expect_column_values_to_be_in_type_list", "amount")].kwargs["type_list"]
    # range widened by 10% of the span on each side
    low, high = reference["amount"].min(), reference["amount"].max()
    between = by[("expect_column_values_to_be_between", "amount")].kwargs
    assert between["min_value"] == pytest.approx(low - 0.1 * (high - low))
    assert between["max_value"] == pytest.approx(high + 0.1 * (high - low))
    assert between["mostly"] == 1.0
    assert by[("expect_column_values_to_be_in_set", "color")].kwargs["value_set"] == ["blue", "green", "red"]
    assert ("expect_column_values_to_be_between", "color") not in by
    # a column with nulls in the reference gets no not-null expectation
    with_nulls = reference.assign(amount=reference["amount"].mask(reference.index == 0))
    specs = infer_expectations(with_nulls, ["amount"], [], ValidationSpec())
    assert ("expect_column_values_to_not_be_null") not in {s.type for s in specs}
    with pytest.raises(ValueError, match="nope"):
        infer_expectations(reference, ["amount", "nope"], [], ValidationSpec())


def test_clean_data_passes(reference, training_suite):
    suite, expectations = training_suite
    report = validate_frame(reference, suite)
    assert report.success, report.failed
    assert report.failed == []
    assert report.evaluated == len(expectations) == len(suite.expectations)
    json.dumps(report.gx_result)  # JSON-serialisable as it is
    # the label is checked on training data: the classifier's labels are a category set
    assert any(e.column == "label" and e.type == "expect_column_values_to_be_in_set" for e in expectations)


def test_int_column_arriving_as_float_still_passes(reference, training_suite):
    suite, _ = training_suite
    frame = reference.astype({"count": "float64", "label": "float64"})
    report = validate_frame(frame, suite)
    assert report.success, report.failed
    # pandas nullable ints (a Parquet round trip with pyarrow dtypes) pass too
    report = validate_frame(reference.astype({"count": "Int64"}), suite)
    assert report.success, report.failed


def test_nulls_fail_naming_column_count_and_rows(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[[3, 7], "amount"] = np.nan
    report = validate_frame(frame, suite)
    assert not report.success
    [failure] = _failures(report, "expect_column_values_to_not_be_null")
    assert failure.column == "amount"
    assert failure.unexpected_count == 2
    assert failure.unexpected_percent == pytest.approx(1.0)
    assert failure.examples == [3, 7]  # the rows holding the nulls
    assert "3" in failure.details and "7" in failure.details


def test_out_of_range_values_fail_with_count_and_examples(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[5, "count"] = 1000
    frame.loc[9, "count"] = -50
    report = validate_frame(frame, suite)
    assert not report.success
    [failure] = _failures(report, "expect_column_values_to_be_between", "count")
    assert failure.unexpected_count == 2
    assert sorted(failure.examples) == [-50, 1000]
    assert [f.column for f in report.failed] == ["count"]


def test_missing_column_fails_naming_it(reference, training_suite):
    suite, _ = training_suite
    report = validate_frame(reference.drop(columns=["color"]), suite)
    assert not report.success
    assert _failures(report, "expect_column_to_exist", "color")
    [table] = _failures(report, "expect_table_columns_to_match_set")
    assert "color" in table.details and table.examples == ["color"]
    # expectations on the absent column fail too, each naming it, none crashing the run
    for failure in report.failed:
        assert failure.column == "color"
        assert "color" in failure.details
    assert "color" in str(ValidationFailed(report))


def test_unseen_category_fails_showing_the_value(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[4, "color"] = "purple"
    report = validate_frame(frame, suite)
    [failure] = report.failed
    assert failure.expectation == "expect_column_values_to_be_in_set"
    assert failure.column == "color"
    assert failure.unexpected_count == 1
    assert failure.examples == ["purple"]


def test_unseen_label_fails_on_training_data(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[0, "label"] = 2
    report = validate_frame(frame, suite)
    [failure] = report.failed
    assert (failure.expectation, failure.column, failure.examples) == (
        "expect_column_values_to_be_in_set", "label", [2]
    )


def test_explicit_spec_expectation_is_enforced(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[11, "amount"] = 105.0  # inside the inferred (widened) range, outside the spec's 0..100
    report = validate_frame(frame, suite)
    [failure] = report.failed
    assert (failure.expectation, failure.column) == ("expect_column_values_to_be_between", "amount")
    assert failure.examples == [105.0]
    [gx_failure] = [r for r in report.gx_result["results"] if not r["success"]]
    assert gx_failure["expectation_config"]["kwargs"]["max_value"] == 100

    # with inference off, only the explicit expectation is in the suite
    suite, expectations = suite_for_model(_spec(infer_from_reference=False), reference)
    assert [(e.type, e.column) for e in expectations] == [("expect_column_values_to_be_between", "amount")]
    assert not validate_frame(frame, suite).success


def test_unknown_expectation_type_raises_naming_it(reference):
    with pytest.raises(ValueError, match="expect_column_values_to_be_purple"):
        build_suite("x", [ExpectationSpec(type="expect_column_values_to_be_purple", column="a")])
    spec = _spec(expectations=[{"type": "expect_colum_to_exist", "column": "amount"}])
    with pytest.raises(ValueError, match="expect_colum_to_exist.*expect_column_to_exist"):
        suite_for_model(spec, reference)
    with pytest.raises(ValueError, match="expect_column_values_to_be_between.*amount"):
        build_suite("x", [ExpectationSpec(type="expect_column_values_to_be_between", column="amount",
                                          kwargs={"min_value": "low"})])


def test_build_suite_maps_snake_case_to_gx_classes():
    import great_expectations as gx

    suite = build_suite(
        "s",
        [
            ExpectationSpec(type="expect_column_values_to_be_between", column="a", kwargs={"min_value": 0}),
            ExpectationSpec(type="expect_table_row_count_to_be_between", kwargs={"min_value": 1}),
            ExpectationSpec(type="expect_column_kl_divergence_to_be_less_than", column="a",
                            kwargs={"partition_object": None, "threshold": 0.1}),
        ],
    )
    assert isinstance(suite, gx.ExpectationSuite) and suite.name == "s"
    assert isinstance(suite.expectations[0], gx.expectations.ExpectColumnValuesToBeBetween)
    assert suite.expectations[0].column == "a" and suite.expectations[0].min_value == 0
    assert isinstance(suite.expectations[1], gx.expectations.ExpectTableRowCountToBeBetween)
    assert isinstance(suite.expectations[2], gx.expectations.ExpectColumnKLDivergenceToBeLessThan)


def test_live_window_without_target_passes_with_include_target_false(reference):
    spec = _spec(expectations=[
        {"type": "expect_column_values_to_be_between", "column": "amount",
         "kwargs": {"min_value": 0, "max_value": 100}},
        {"type": "expect_column_values_to_be_in_set", "column": "label", "kwargs": {"value_set": [0, 1]}},
    ])
    live_suite, expectations = suite_for_model(spec, reference, include_target=False)
    assert all(e.column != "label" for e in expectations)
    assert all("label" not in e.kwargs.get("column_set", []) for e in expectations)
    window = reference.drop(columns=["label"]).iloc[50:120]
    report = validate_frame(window, live_suite)
    assert report.success, report.failed
    # the training suite would (rightly) reject a frame without labels
    training_suite, _ = suite_for_model(spec, reference, include_target=True)
    report = validate_frame(window, training_suite)
    assert not report.success and {f.column for f in report.failed} == {"label"}


def test_explicit_columns_and_features(reference):
    spec = parse_spec(
        {
            "name": "demo", "team": "t", "task": "regression",
            "data": {"source": "demo.csv", "target": "amount", "features": ["count", "color"],
                     "categorical": []},
            "metrics": {"primary": "rmse"},
            "policy": {"allow_any": True},
        }
    )
    _, expectations = suite_for_model(spec, reference)
    assert {e.column for e in expectations} == {None, "count", "color", "amount"}
    # categorical: [] means no category sets; the regression target gets a range
    types = {(e.type, e.column) for e in expectations}
    assert ("expect_column_values_to_be_in_set", "color") not in types
    assert ("expect_column_values_to_be_between", "amount") in types
    _, expectations = suite_for_model(spec, reference, columns=["count"], include_target=False)
    assert {e.column for e in expectations} == {None, "count"}


def test_markdown_names_failing_expectation_column_and_values(reference, training_suite):
    suite, _ = training_suite
    frame = reference.copy()
    frame.loc[4, "color"] = "purple"
    frame.loc[[3, 7], "amount"] = np.nan
    report = validate_frame(frame, suite)
    markdown = report_markdown(report, "Training data: demo")
    print("\n" + markdown)
    assert markdown.startswith("# Training data: demo")
    assert "FAILED" in markdown
    assert "expect_column_values_to_be_in_set" in markdown and "| color |" in markdown
    assert "'purple'" in markdown
    assert "expect_column_values_to_not_be_null" in markdown and "| amount |" in markdown
    clean = report_markdown(validate_frame(reference, suite), "Training data: demo")
    assert "PASSED" in clean and "Every expectation held" in clean

    error = ValidationFailed(report, "training data")
    assert error.report is report
    message = str(error)
    assert message.startswith("training data failed")
    assert "expect_column_values_to_be_in_set on 'color'" in message
    assert "expect_column_values_to_not_be_null on 'amount' (2 unexpected)" in message


def test_one_suite_validates_frames_in_sequence(reference, training_suite):
    suite, _ = training_suite
    before = json.dumps(suite.to_json_dict(), sort_keys=True)
    bad = reference.copy()
    bad.loc[0, "count"] = 999
    window = reference.iloc[:30]
    results = [validate_frame(frame, suite) for frame in (window, bad, window, bad)]
    assert [r.success for r in results] == [True, False, True, False]
    assert results[1].failed == results[3].failed
    assert results[1].failed[0].examples == [999]
    assert json.dumps(suite.to_json_dict(), sort_keys=True) == before  # the suite is untouched


def test_validation_keeps_no_frame_or_context_alive(reference, training_suite):
    import great_expectations as gx
    from great_expectations.data_context.data_context.context_factory import project_manager

    suite, _ = training_suite
    own = gx.get_context(mode="ephemeral")
    frame = reference.copy()
    ref = weakref.ref(frame)
    validate_frame(frame, suite)
    del frame
    gc.collect()
    assert ref() is None
    assert project_manager.get_current_project() is own  # the caller's current context is restored


def test_time_100k_rows_by_10_columns():
    rng = np.random.default_rng(0)
    rows = 100_000
    reference = pd.DataFrame(
        {
            **{f"x{i}": rng.normal(size=rows) for i in range(6)},
            "n1": rng.integers(0, 100, rows),
            "n2": rng.integers(0, 5, rows),
            "cat": rng.choice(["a", "b", "c", "d"], rows).astype(object),
            "label": rng.integers(0, 2, rows),
        }
    )
    spec = parse_spec(
        {"name": "big", "team": "t", "task": "binary_classification",
         "data": {"source": "big.parquet", "target": "label"}, "metrics": {"primary": "roc_auc"},
         "policy": {"allow_any": True}}
    )
    started = time.perf_counter()
    suite, expectations = suite_for_model(spec, reference)
    built = time.perf_counter() - started
    started = time.perf_counter()
    report = validate_frame(reference, suite)
    took = time.perf_counter() - started
    assert report.success, report.failed
    print(
        f"\n100k rows x 10 columns: {len(expectations)} expectations, suite built in {built:.2f}s, "
        f"validated in {took:.2f}s"
    )
