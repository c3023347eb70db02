"""Data and prediction drift of a live window against the reference, with Evidently 0.7.

The verdict runs Evidently's own tests on every row; only the HTML/JSON report a person opens
may see a seeded sample of a large window. docs/monitoring-design.md says which tests Evidently
picks, why large windows are split so, and what the sampling bound means.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from modelyard.json_safe import json_safe

if TYPE_CHECKING:  # ``import evidently`` costs ~9 s of CPU (it loads its UI server and LLM tooling)
    from evidently.core.report import Snapshot
    from evidently.legacy.calculations.stattests.registry import StatTest

Kind = Literal["numerical", "categorical"]

#: Confidence of the stated sampling bounds (99%).
CONFIDENCE = 0.99

# Evidently tests whose score is a p-value (drift when the score is *below* the threshold);
# every other test is a distance (drift when the score is at or above the threshold).
P_VALUE_TESTS = frozenset({
    "ks", "chisquare", "z", "anderson", "cramer_von_mises", "es", "fisher_exact", "g_test",
    "mannw", "t_test", "TVD", "empirical_mmd",
})


@dataclass(frozen=True)
class FeatureDrift:
    """One column's drift: Evidently's test, its score on the whole window and the decision."""

    column: str
    kind: Kind
    method: str  # Evidently's test name: "wasserstein", "jensenshannon", "ks", "chisquare", "z"
    score: float  # on every row of the window
    threshold: float
    drifted: bool
    sample_score: float | None = None  # the score Evidently's report shows, when it saw a sample

    @property
    def p_value(self) -> bool:
        """Whether ``score`` is a p-value (lower means more drift) rather than a distance."""
        return self.method in P_VALUE_TESTS

    @property
    def severity(self) -> float:
        """How far past its threshold the column is (1.0 = exactly at it), comparable across tests.

        Distances are divided by the threshold; p-values compare on a log scale, so p = 1e-10
        against 0.05 ranks far above p = 0.04.
        """
        if self.p_value:
            if self.score <= 0.0:
                return math.inf
            return math.log(self.score) / math.log(self.threshold) if self.score < 1.0 else 0.0
        return self.score / self.threshold if self.threshold > 0 else math.inf


@dataclass
class DriftResult:
    """The drift verdict of one window, most drifted features first."""

    dataset_drift: bool  # Evidently's rule: share of drifted columns >= drift_share_threshold
    drift_share: float  # share of drifted columns
    drifted_columns: int
    n_columns: int
    features: list[FeatureDrift]  # most drifted first
    prediction: FeatureDrift | None  # the model output's drift, when a prediction column was given
    rows_reference: int
    rows_current: int
    rows_analysed: int  # window rows in the Evidently report (== rows_current unless sampled)
    sampled: bool  # the report saw a uniform sample; the verdict still saw every row
    error_bound: str  # what the sampling can and cannot have changed, in plain words
    seconds: float
    drift_share_threshold: float = 0.5

    def top(self, n: int = 5) -> list[FeatureDrift]:
        """The ``n`` most drifted features (drifted or not), for alerts and summaries."""
        return self.features[:n]

    @property
    def drifted_features(self) -> list[str]:
        return [f.column for f in self.features if f.drifted]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain floats, no NaN/inf) for Prefect event payloads and MLflow."""
        return json_safe(asdict(self))


# --- input checks ------------------------------------------------------------------------


def _check_inputs(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str],
                  categorical: Sequence[str], prediction_column: str | None, drift_share: float,
                  max_rows: int) -> None:
    if len(current) == 0:
        raise ValueError("the current window is empty: there is nothing to compare with the reference")
    if len(reference) == 0:
        raise ValueError("the reference is empty: drift needs reference data to compare against")
    if not columns:
        raise ValueError("no columns to analyse: pass the model's feature columns")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns are listed twice: {sorted({c for c in columns if list(columns).count(c) > 1})}")
    stray = [c for c in categorical if c not in columns and c != prediction_column]
    if stray:
        raise ValueError(f"categorical columns {stray} are not among the analysed columns {list(columns)}")
    if prediction_column is not None and prediction_column in columns:
        raise ValueError(f"prediction column {prediction_column!r} is also listed as a feature column")
    if not 0.0 < drift_share <= 1.0:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    wanted = list(columns) + ([prediction_column] if prediction_column else [])
    for name, frame in (("current window", current), ("reference", reference)):
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            hint = ""
            if prediction_column in missing and name == "reference":
                hint = (f"; score the reference once with the same model and add the column "
                        f"(reference.assign({prediction_column}=model.predict(reference[columns]))), "
                        f"or pass prediction_column=None")
            raise ValueError(f"columns missing from the {name}: {missing}{hint}")


def _kind(frame: pd.DataFrame, column: str, categorical: Sequence[str]) -> Kind:
    if column in categorical:
        return "categorical"
    dtype = frame[column].dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "categorical"
    return "numerical"


def _clean(series: pd.Series) -> pd.Series:
    """What Evidently's ``get_one_column_drift`` does before a test: drop NaN and +-inf.

    A column with nothing to drop is returned as is: copying a million-row column 30 times
    per window costs seconds and buys nothing.
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        # a category dtype keeps unused categories in value_counts and cannot be compared
        # across frames with different category lists; plain values behave as Evidently expects
        series = series.astype(object)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy()
        if values.dtype.kind in "iu":
            return series
        if values.dtype.kind == "f" and np.isfinite(values).all():
            return series
        return series.replace([-np.inf, np.inf], np.nan).dropna()
    return series.dropna() if series.hasnans else series


# --- the verdict: Evidently's tests on every row ---------------------------------------------


def _select_test(kind: Kind, reference: pd.Series, current: pd.Series) -> StatTest:
    """The test Evidently's ``ValueDrift`` would pick for this column, without its full cost.

    Evidently picks from the reference's length and from the number of distinct values in
    reference and window together, and only asks whether that number is <= 2 or <= 5. The
    union has at least as many distinct values as the reference, so when the reference alone
    has more than 5 the window cannot change the choice and a one-row probe of it stands in
    for the million-row concatenation Evidently would count.
    """
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical
    probe = current if reference.nunique() <= 5 else current.iloc[:1]
    return get_stattest(reference, probe, column_type, None)


def _score(column: str, kind: Kind, stattest: StatTest, reference: pd.Series, current: pd.Series) -> FeatureDrift:
    """One column's drift: Evidently's own test function on every row of both frames."""
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical
    if kind == "numerical" and current.dtype.kind in "fiu" and reference.dtype.kind in "fiu":
        # Every numerical test here is a function of the values' distribution, not their order;
        # scipy's Wasserstein argsorts both inputs and merges them, which is about twice as
        # fast on sorted input (same value up to rounding in the last bits).
        reference = pd.Series(np.sort(reference.to_numpy()), name=reference.name)
        current = pd.Series(np.sort(current.to_numpy()), name=current.name)
    result = stattest(reference, current, column_type, None)
    return FeatureDrift(
        column=column, kind=kind, method=stattest.name, score=float(result.drift_score),
        threshold=float(result.actual_threshold), drifted=bool(result.drifted),
    )


def _prepare(reference: pd.DataFrame, current: pd.DataFrame,
             kinds: dict[str, Kind]) -> dict[str, tuple[StatTest, pd.Series, pd.Series]]:
    """Cleaned columns and their tests, with clear errors for columns that cannot be tested."""
    cleaned = {c: (_clean(reference[c]), _clean(current[c])) for c in kinds}
    empty = [f"{c} ({where})" for c, (ref, cur) in cleaned.items()
             for where, s in (("reference", ref), ("current window", cur)) if s.empty]
    if empty:
        raise ValueError(f"no non-missing values to compare in: {', '.join(empty)}; "
                         f"data validation should stop such a window before drift")
    not_numeric = [c for c, k in kinds.items() if k == "numerical" and not all(
        pd.api.types.is_numeric_dtype(s.dtype) for s in cleaned[c])]
    if not_numeric:
        raise ValueError(f"numerical columns with non-numeric values: {not_numeric}; "
                         f"list them in `categorical` or fix their type")
    return {c: (_select_test(kinds[c], *cleaned[c]), *cleaned[c]) for c in kinds}


# --- the report: Evidently on (a sample of) the window ---------------------------------------


def _workers() -> int:
    """Threads for the per-column tests: the cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A uniform sample without replacement, seeded, in the window's original row order."""
    if len(frame) <= max_rows:
        return frame
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[rows]


def _evidently_frame(frame: pd.DataFrame, kinds: dict[str, Kind]) -> pd.DataFrame:
    out = frame[list(kinds)]
    categories = [c for c, k in kinds.items() if k == "categorical" and isinstance(out[c].dtype, pd.CategoricalDtype)]
    if categories:
        out = out.astype({c: object for c in categories})
    return out


def _run_report(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str],
                kinds: dict[str, Kind], methods: dict[str, str], prediction_column: str | None,
                drift_share: float, metadata: dict[str, Any]) -> Snapshot:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k == "numerical"],
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"],
    )
    # Per-column ValueDrift plus the dataset-level count, tests pinned to the verdict's; not
    # DataDriftPreset, which computes every test twice more to draw its summary table.
    metrics: list[Any] = [DriftedColumnsCount(columns=list(columns), drift_share=drift_share,
                                              per_column_method={c: methods[c] for c in columns})]
    metrics += [ValueDrift(column=c, method=methods[c]) for c in columns]
    if prediction_column is not None:
        metrics.append(ValueDrift(column=prediction_column, method=methods[prediction_column]))
    report = Report(metrics, metadata=metadata, tags=["modelyard", "drift"])
    return report.run(
        Dataset.from_pandas(_evidently_frame(current, kinds), data_definition=definition),
        Dataset.from_pandas(_evidently_frame(reference, kinds), data_definition=definition),
    )


def _report_scores(snapshot: Snapshot) -> dict[str, float]:
    """Each ValueDrift's score from the snapshot, by column."""
    scores: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return scores


# --- the sampling bound -------------------------------------------------------------------


def dkw_epsilon(n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Dvoretzky-Kiefer-Wolfowitz band: sup|F_sample - F_window| <= eps.

    P(sup_x |F_n(x) - F(x)| > eps) <= 2 exp(-2 n eps^2) (Massart's constant), so
    eps = sqrt(ln(2 / alpha) / (2 n)). For n = 50,000 at 99%: 0.0073.
    """
    return math.sqrt(math.log(2.0 / (1.0 - confidence)) / (2.0 * n))


def category_epsilon(n: int, categories: int, confidence: float = CONFIDENCE) -> float:
    """Bound on every category share at once: Hoeffding per category, union over ``categories``."""
    return math.sqrt(math.log(2.0 * max(categories, 1) / (1.0 - confidence)) / (2.0 * n))


def _error_bound(rows_current: int, rows_analysed: int, sampled: bool, features: Sequence[FeatureDrift],
                 max_categories: int) -> str:
    if not sampled:
        return (f"exact: Evidently's tests ran on all {rows_current:,} rows of the window "
                f"(no sampling)")
    eps = dkw_epsilon(rows_analysed)
    text = (f"verdict exact: every score and the dataset verdict come from Evidently's own tests on "
            f"all {rows_current:,} rows. The Evidently report shows a seeded uniform sample of "
            f"n={rows_analysed:,}: each numerical column's distribution (empirical CDF, hence any "
            f"K-S statistic) is within ±{eps:.4f} of the full window's with {CONFIDENCE:.0%} confidence "
            f"(DKW)")
    if max_categories:
        text += (f", each category share within ±{category_epsilon(rows_analysed, max_categories):.4f} "
                 f"(Hoeffding, union over up to {max_categories} categories)")
    gaps = [abs(f.sample_score - f.score) for f in features if f.sample_score is not None]
    if gaps:
        flipped = [f.column for f in features if f.sample_score is not None and
                   (f.sample_score < f.threshold if f.p_value else f.sample_score >= f.threshold) != f.drifted]
        text += f"; report scores differ from the exact ones by at most {max(gaps):.4f}"
        text += (f", and the report would judge {flipped} differently" if flipped
                 else ", and the report judges every column as the verdict does")
    return text


# --- the public functions ------------------------------------------------------------------


def analyse_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    categorical: list[str],
    prediction_column: str | None = None,
    drift_share: float = 0.5,
    max_rows: int = 50_000,
    seed: int = 0,
    with_report: bool = True,
) -> tuple[DriftResult, Snapshot | None]:
    """Drift of ``current`` against ``reference``: per feature, dataset-level and prediction drift.

    ``columns`` are the model's features; those in ``categorical`` (and non-numeric ones) are
    tested as categories, the rest as numbers. ``prediction_column`` names the model's output
    in both frames: the reference needs the model's predictions on the reference rows (score
    it once with the served version and add the column; if you cannot, pass ``None``). A class
    label prediction should be listed in ``categorical``. Prediction drift is reported on its
    own and does not count towards the dataset-level share.

    Windows longer than ``max_rows`` rows are judged on every row; only the Evidently report is
    built from a seeded sample (see docs/monitoring-design.md and ``DriftResult.error_bound``).
    ``with_report=False`` skips the report (the verdict only) and returns ``None`` for it.

    Raises ``ValueError`` for an empty window, columns missing from either frame, or a column
    with no non-missing value.
    """
    started = time.perf_counter()
    _check_inputs(reference, current, columns, categorical, prediction_column, drift_share, max_rows)
    analysed = list(columns) + ([prediction_column] if prediction_column else [])
    kinds = {c: _kind(reference, c, categorical) for c in analysed}

    prepared = _prepare(reference, current, kinds)
    methods = {c: test.name for c, (test, _, _) in prepared.items()}

    window = _sample(current, max_rows, seed)
    sampled = len(window) < len(current)
    snapshot: Snapshot | None = None
    # The tests are numpy sorts and counts that release the GIL; Evidently's report is mostly
    # Python (plotly). Running them side by side keeps both cores busy.
    with ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="drift") as pool:
        futures = {c: pool.submit(_score, c, kinds[c], *prepared[c]) for c in analysed}
        if with_report:
            snapshot = _run_report(
                _sample(reference, max_rows, seed + 1), window, columns, kinds, methods,
                prediction_column, drift_share,
                metadata={"rows_reference": len(reference), "rows_current": len(current),
                          "rows_analysed": len(window), "sampled": sampled, "seed": seed},
            )
        scored = {c: future.result() for c, future in futures.items()}
    if snapshot is not None and sampled:
        report_scores = _report_scores(snapshot)
        scored = {c: replace(f, sample_score=report_scores.get(c)) for c, f in scored.items()}

    features = sorted((scored[c] for c in columns), key=lambda f: (not f.drifted, -f.severity, f.column))
    drifted = sum(f.drifted for f in features)
    share = drifted / len(features)
    max_categories = max((int(current[c].nunique()) for c in columns if kinds[c] == "categorical"),
                         default=0) if sampled else 0
    prediction = scored[prediction_column] if prediction_column else None
    return DriftResult(
        dataset_drift=bool(share >= drift_share),
        drift_share=share,
        drifted_columns=drifted,
        n_columns=len(features),
        features=features,
        prediction=prediction,
        rows_reference=len(reference),
        rows_current=len(current),
        rows_analysed=len(window),
        sampled=sampled,
        error_bound=_error_bound(len(current), len(window), sampled,
                                 features + ([prediction] if prediction else []), max_categories),
        seconds=time.perf_counter() - started,
        drift_share_threshold=drift_share,
    ), snapshot


def drift_report_files(snapshot: Snapshot, directory: str | Path, name: str = "drift") -> tuple[Path, Path]:
    """Evidently's own HTML and JSON of ``snapshot`` in ``directory``, for MLflow artifacts.

    Paths are handed to Evidently as ``str``: its ``save_html``/``save_json`` silently write
    nothing when given a ``pathlib.Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    html_path, json_path = directory / f"{name}.html", directory / f"{name}.json"
    snapshot.save_html(str(html_path))
    snapshot.save_json(str(json_path))
    if not html_path.is_file() or not json_path.is_file():
        raise RuntimeError(f"Evidently did not write its report to {directory}")
    return html_path, json_path

