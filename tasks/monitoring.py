"""Monitoring stage logic: judge one window of a deployed model's traffic four ways — data
validity, drift, performance on delayed labels, service health — each a plain function, and
decide which alerts the window raises (docs/monitoring-design.md says why in this order). A
version whose metrics cannot be read is a service problem, never "insufficient data"."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deployments.gates import service_window
from deployments.server.prediction_log import inputs_frame, read_prediction_log
from modelyard.catalog import PREDICTION_ID_HEADER, Event
from modelyard.json_safe import json_safe
from modelyard.names import check_model_name
from modelyard.resources.inference import MetricsSnapshot
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

INSUFFICIENT_DATA = "insufficient data"
LABEL_KEY = "prediction_id"  # the server's id of a prediction, the one key labels join on


@dataclass
class Alert:
    event: Event
    reason: str
    numbers: dict[str, Any]


@dataclass
class PerformanceVerdict:
    rows: int
    metric: str
    value: float | None
    baseline: float | None
    drop: float | None
    degraded: bool


@dataclass
class ServiceVerdict:
    requests: int
    error_rate: float
    p99_ms: float | None
    degraded: bool
    unreachable: str | None = None  # why the version's metrics could not be read: a service problem
    rollout_in_progress: bool = False  # a rollout or a restore held the model while it was unreachable


@dataclass
class WindowVerdict:
    model: str
    version: str
    window_start: str | None
    window_end: str | None
    rows: int
    status: str  # "ok", "alert", INSUFFICIENT_DATA
    data_valid: bool | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None
    performance: PerformanceVerdict | None = None
    service: ServiceVerdict | None = None
    alerts: list[Alert] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def record_validation(self, validation: dict[str, Any]) -> None:
        """The live-data suite's outcome; the rest of the window is judged only on valid data."""
        self.validation, self.data_valid = validation, bool(validation["success"])

    def conclude(self, alerts: list[Alert]) -> None:
        self.alerts = alerts
        if alerts:
            self.status = "alert"


# --- the window -------------------------------------------------------------------------

def open_verdict(model: str, version: str, window: pd.DataFrame, service: ServiceVerdict | None,
                 min_rows: int) -> WindowVerdict:
    """A window's verdict before it is judged: its bounds and size, and whether it has enough rows."""
    start = window["time"].min().isoformat() if not window.empty else None
    end = window["time"].max().isoformat() if not window.empty else None
    status = INSUFFICIENT_DATA if len(window) < min_rows else "ok"
    return WindowVerdict(model, version, start, end, len(window), status, service=service)


def is_fresh(deployed_at: float | None, fresh_deploy_s: float, now: float | None = None) -> bool:
    """Whether the serving version went live less than ``fresh_deploy_s`` ago (its service alerts
    then roll it back)."""
    now = time.time() if now is None else now
    return deployed_at is not None and now - deployed_at < fresh_deploy_s

def monitor_state_path(settings: Settings, model: str) -> Path:
    return settings.state_dir / "monitor" / f"{check_model_name(model)}.json"


def load_monitor_state(settings: Settings, model: str) -> dict[str, Any]:
    try:
        return json.loads(monitor_state_path(settings, model).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_monitor_state(settings: Settings, model: str, state: dict[str, Any]) -> None:
    path = monitor_state_path(settings, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, default=str))


def next_monitor_state(previous: dict[str, Any], verdict: WindowVerdict, metrics_now: dict | None) -> dict[str, Any]:
    """What the next run of this version starts from: its window begins after this one's end
    (unless this one had too few rows to judge: they are judged again with the next ones), and
    service rates are the difference from these metrics."""
    state = previous | {"version": verdict.version, "judged_at": datetime.now(UTC).isoformat()}
    if verdict.window_end is not None and verdict.status != INSUFFICIENT_DATA:
        state["window_end"] = verdict.window_end
    if metrics_now is not None:
        state["metrics"] = metrics_now
    return state


def read_window(settings: Settings, model: str, version: str, since: datetime | None,
                window_s: int, now: datetime | None = None) -> pd.DataFrame:
    """The version's logged rows after ``since`` (exclusive), at most ``window_s`` back."""
    now = now or datetime.now(UTC)
    earliest = now - timedelta(seconds=window_s)
    start = max(since, earliest) if since is not None else earliest
    log = read_prediction_log(settings.prediction_log_dir, model, version, since=start)
    if since is not None and not log.empty:
        log = log[log["time"] > pd.Timestamp(since)]
    return log.reset_index(drop=True)


# --- labels and performance ---------------------------------------------------------------

def labels_location(settings: Settings, spec: ModelSpec) -> Path:
    if spec.monitoring.labels:
        path = Path(spec.monitoring.labels)
        return path if path.is_absolute() else spec.base_dir / path
    return settings.state_dir / "labels" / spec.name


def read_labels(location: Path, target: str) -> pd.DataFrame:
    """Delayed labels from a CSV/Parquet file or a folder of them: ``prediction_id`` (what the
    server answered in its ``PREDICTION_ID_HEADER``), the target, and ``row`` for requests of
    several rows; a later file corrects an earlier one. The client's ``request_id`` is no key:
    clients repeat their ids, and a repeated id would pair a label with another request's row."""
    files = sorted(location.glob("*.parquet")) + sorted(location.glob("*.csv")) if location.is_dir() else \
        ([location] if location.exists() else [])
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f, dtype={LABEL_KEY: str}) for f in files]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({LABEL_KEY: pd.Series(dtype=str), "row": pd.Series(dtype="Int64"),
                             target: pd.Series(dtype=object)})
    labels = pd.concat(frames, ignore_index=True)
    missing = {LABEL_KEY, target} - set(labels.columns)
    if missing:
        raise ValueError(f"labels at {location} lack columns {sorted(missing)}: labels are keyed by {LABEL_KEY}, "
                         f"the id each answer carries in its {PREDICTION_ID_HEADER} header (a client's request_id "
                         f"may repeat)")
    if "row" not in labels.columns:
        labels["row"] = pd.NA
    return labels[[LABEL_KEY, "row", target]].astype({LABEL_KEY: str, "row": "Int64"}) \
        .drop_duplicates([LABEL_KEY, "row"], keep="last")


def join_labels(log: pd.DataFrame, labels: pd.DataFrame, target: str) -> pd.DataFrame:
    """The logged rows that have a label, with its ``target``: joined on the server's prediction
    id and the row. A label without a row labels a single-row prediction only; keys logged twice,
    and logs without prediction ids, join nothing (no verdict rather than a wrong pairing)."""
    if log.empty or labels.empty or LABEL_KEY not in log.columns:
        return log.iloc[0:0]
    keys = pd.DataFrame({LABEL_KEY: log[LABEL_KEY].to_numpy(), "row": log["row"].to_numpy(),
                         "at": np.arange(len(log))}).dropna().astype({LABEL_KEY: str, "row": "int64"})
    keys = keys[~keys.duplicated([LABEL_KEY, "row"], keep=False)]
    single = keys.loc[keys[LABEL_KEY].map(keys[LABEL_KEY].value_counts()) == 1, LABEL_KEY]
    labelled = labels[labels["row"].notna() | labels[LABEL_KEY].isin(single)]
    labelled = labelled.assign(row=labelled["row"].fillna(0).astype("int64")) \
        .drop_duplicates([LABEL_KEY, "row"], keep="last")
    matched = keys.merge(labelled, on=[LABEL_KEY, "row"], how="inner")
    joined = log.iloc[matched["at"].to_numpy()].reset_index(drop=True)
    joined[target] = matched[target].to_numpy()
    return joined


def performance_verdict(window: pd.DataFrame, labels: pd.DataFrame, spec: ModelSpec,
                        baseline: dict[str, float]) -> PerformanceVerdict:
    """The primary metric on the window's labelled rows against the evaluation baseline."""
    from tasks.evaluation import classification_metrics, higher_is_better, regression_metrics

    metric = spec.metrics.primary
    target = spec.data.target
    joined = join_labels(window, labels, target)
    rows = len(joined)
    base = baseline.get(metric)
    if rows < spec.monitoring.min_labelled_rows:
        return PerformanceVerdict(rows, metric, None, base, None, False)
    y_true = joined[target].to_numpy()
    y_pred = joined["prediction"].to_numpy()
    if spec.is_classification:
        proba, classes = None, sorted(pd.unique(np.concatenate([y_true, y_pred])).tolist())
        if "probability" in joined.columns and joined["probability"].notna().all():
            proba = np.vstack(joined["probability"].to_numpy())
            if proba.shape[1] == len(classes):
                pass
            elif proba.shape[1] == 2:
                classes = [0, 1]
            else:
                proba = None
        try:
            values = classification_metrics(y_true, y_pred, proba, classes)
        except ValueError:  # one class only in the labelled rows: AUC undefined
            values = classification_metrics(y_true, y_pred, None, classes)
    else:
        values = regression_metrics(y_true, y_pred)
    value = values.get(metric)
    if value is None or base is None:
        return PerformanceVerdict(rows, metric, value, base, None, False)
    drop = (base - value) if higher_is_better(metric) else (value - base)
    return PerformanceVerdict(rows, metric, value, base, drop, drop > spec.monitoring.max_performance_drop)


# --- service health ---------------------------------------------------------------------

def unreachable_service(reason: str, rollout_in_progress: bool = False) -> ServiceVerdict:
    """The verdict on a version whose ``/metrics`` cannot be read (no replica ready, or none
    answering): degraded, with the reason — never "insufficient data"."""
    return ServiceVerdict(0, 0.0, None, True, unreachable=reason, rollout_in_progress=rollout_in_progress)


def replica_window(before: dict | None, after: dict[str, dict]) -> tuple[dict, dict]:
    """Two scrapes of a version's replicas (replica URL → metrics, as ``snapshot_dict`` keeps
    them) added up into one before/after pair over the replicas scraped now. A replica new since
    the last scrape, or whose counters went back (it restarted), counts from zero; one gone since
    counts no more."""
    before = before if isinstance(before, dict) and "by_status" not in before else {}  # an older, merged scrape

    def counters(raw: dict) -> dict[str, float]:
        return {f"s{k}": v for k, v in raw["by_status"].items()} | {f"b{k}": v for k, v in raw["latency_buckets"].items()}

    merged_before: dict = {"by_status": {}, "latency_buckets": {}}
    merged_after: dict = {"by_status": {}, "latency_buckets": {}}
    for url, now in after.items():
        then = before.get(url)
        if then is not None and any(value < counters(then).get(key, 0) for key, value in counters(now).items()):
            then = None  # restarted: its counters began again
        for merged, raw in ((merged_before, then), (merged_after, now)):
            for section in ("by_status", "latency_buckets"):
                for key, value in (raw or {}).get(section, {}).items():
                    merged[section][key] = merged[section].get(key, 0) + value
    return merged_before, merged_after


def service_verdict(before: dict | None, after: dict, spec: ModelSpec) -> ServiceVerdict:
    """Error rate and p99 between two scrapes of the serving version's /metrics."""
    def snapshot(raw: dict | None) -> MetricsSnapshot:
        raw = raw or {"by_status": {}, "latency_buckets": {}}
        return MetricsSnapshot({int(k): v for k, v in raw["by_status"].items()},
                               {float(k): v for k, v in raw["latency_buckets"].items()})

    window = service_window(snapshot(before), snapshot(after))
    degraded = window.requests > 0 and (window.error_rate > spec.monitoring.max_error_rate
                                        or (window.p99_ms is not None and window.p99_ms > spec.monitoring.max_p99_ms))
    return ServiceVerdict(window.requests, window.error_rate, window.p99_ms, degraded)


def snapshot_dict(snapshot) -> dict:
    return {"by_status": {str(k): v for k, v in snapshot.by_status.items()},
            "latency_buckets": {str(k): v for k, v in snapshot.latency_buckets.items()}}


# --- alerts -------------------------------------------------------------------------------

def decide_alerts(verdict: WindowVerdict, spec: ModelSpec, fresh_version: bool) -> list[Alert]:
    """Which events this window raises. Invalid data raises only ``data.invalid``."""
    alerts: list[Alert] = []
    base = {"model": verdict.model, "version": verdict.version, "rows": verdict.rows,
            "window_start": verdict.window_start, "window_end": verdict.window_end}
    if verdict.data_valid is False:
        alerts.append(Alert(Event.DATA_INVALID, f"{verdict.validation.get('failed', '?')} expectations failed on live data",
                            base | {"failed": verdict.validation.get("failed"),
                                    "failures": verdict.validation.get("failures", [])[:5]}))
    elif verdict.drift is not None and (verdict.drift.get("dataset_drift") or
                                        (verdict.drift.get("prediction") or {}).get("drifted")):
        drift = verdict.drift
        alerts.append(Alert(Event.DRIFT_DETECTED, f"{drift['drifted_columns']} of {drift['n_columns']} features drifted "
                                   f"(share {drift['drift_share']:.2f})",
                            base | {"drift_share": drift["drift_share"], "drifted_columns": drift["drifted_columns"],
                                    "top_features": [f["column"] for f in drift["features"][:5] if f["drifted"]],
                                    "prediction_drift": (drift.get("prediction") or {}).get("drifted", False)}))
    perf = verdict.performance
    if perf is not None and perf.degraded and verdict.data_valid is not False:
        alerts.append(Alert(Event.PERFORMANCE_DEGRADED, f"{perf.metric} {perf.value:.4f} vs {perf.baseline:.4f} at evaluation",
                            base | {"metric": perf.metric, "value": perf.value, "baseline": perf.baseline,
                                    "drop": perf.drop, "labelled_rows": perf.rows}))
    service = verdict.service
    if service is not None and service.unreachable is not None:
        # A fresh version that cannot serve is rolled back, unless a rollout or restore holds it.
        alerts.append(Alert(Event.SERVICE_DEGRADED, f"service unreachable: {service.unreachable}",
                            base | {"unreachable": service.unreachable, "requests": 0,
                                    "rollout_in_progress": service.rollout_in_progress,
                                    "fresh_version": fresh_version and not service.rollout_in_progress}))
    elif service is not None and service.degraded:
        alerts.append(Alert(Event.SERVICE_DEGRADED, f"error rate {service.error_rate:.3f}, p99 {service.p99_ms or 0:.1f} ms",
                            base | {"error_rate": service.error_rate, "p99_ms": service.p99_ms,
                                    "requests": service.requests, "fresh_version": fresh_version}))
    return alerts


def window_inputs(window: pd.DataFrame) -> pd.DataFrame:
    return inputs_frame(window)
