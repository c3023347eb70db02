"""The monitor flow's steps: the I/O around tasks/monitoring.py (registry, servers, MLflow,
Prefect events), each a thin Prefect task."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from modelyard.audit import append_audit_record
from modelyard.catalog import ALERT_ACTIONS, model_resource_id
from modelyard.incidents import alert_kind, emit_incident_event, open_incident
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, artifact_url, version_spec
from modelyard.spec import ModelSpec
from tasks import monitoring as m
from tasks.reporting import monitor_artifact, publish


@dataclass
class MonitorPlan:
    model: str
    version: str
    spec: ModelSpec
    run_id: str
    server_urls: list[str]  # the version's ready replicas
    deployed_at: float | None
    previous: dict[str, Any]  # what the last run of this version left: where its window ended, metrics
    unreachable: str | None = None  # why no replica of the version can be read: a service problem
    rollout_in_progress: bool = False

    @property
    def server_url(self) -> str | None:
        return self.server_urls[0] if self.server_urls else None


@task(name="monitor-plan", **INFRA_RETRIES)
def plan_monitoring(model: str) -> MonitorPlan | None:
    """What serves now, the spec it was built with, and its ready replicas; a version with none
    (or whose target cannot be asked) is planned as unreachable, with the reason."""
    from deployments.targets.factory import make_target

    resources = get_resources()
    version = resources.serving.active_version(model)
    if version is None:
        return None
    spec = version_spec(resources.registry, model, version)
    if spec is None:
        return None
    run_id = resources.registry.get_model_version(model, version).run_id
    unreachable = None
    try:
        endpoint = make_target(resources.settings, spec.serving.target).endpoint(model, version)
        if endpoint is None:
            unreachable = f"no replica of v{version} answers its readiness check ({spec.serving.target} target)"
    except Exception as error:  # noqa: BLE001 - the target's own errors: a service problem, said as such
        endpoint, unreachable = None, f"the {spec.serving.target} target could not be asked: {error}"
    state = m.load_monitor_state(resources.settings, model)
    previous = state if state.get("version") == version else {}
    return MonitorPlan(model, version, spec, run_id, endpoint.urls if endpoint else [],
                       resources.serving.served_since(model, version), previous, unreachable,
                       unreachable is not None and resources.serving.rollout_in_progress(model))


@task(name="read-window", cache_policy=NO_CACHE)
def read_window_task(plan: MonitorPlan) -> pd.DataFrame:
    since = plan.previous.get("window_end")
    since_dt = datetime.fromisoformat(since) if since else None
    if since_dt is None and plan.deployed_at:
        since_dt = datetime.fromtimestamp(plan.deployed_at, UTC)
    return m.read_window(get_resources().settings, plan.model, plan.version, since_dt, plan.spec.monitoring.window_s)


@task(name="recent-traffic", cache_policy=NO_CACHE)
def recent_traffic_task(plan: MonitorPlan) -> pd.DataFrame:
    """Everything the version answered within the window horizon (for late-labelled performance)."""
    since = datetime.fromtimestamp(plan.deployed_at, UTC) if plan.deployed_at else None
    return m.read_window(get_resources().settings, plan.model, plan.version, since, plan.spec.monitoring.window_s)


@task(name="reference-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def reference_task(plan: MonitorPlan) -> pd.DataFrame:
    """The training snapshot logged with the version, with the version's own predictions on it
    (cached per version): the baseline for input and prediction drift."""
    import mlflow

    resources = get_resources()
    settings = resources.settings
    cache = settings.state_dir / "monitor" / f"{plan.model}-v{plan.version}-reference.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=plan.run_id, artifact_path="reference/reference.parquet",
                                                   dst_path=tmp, tracking_uri=settings.mlflow_url)
        reference = pd.read_parquet(path)
    if plan.server_url:
        reference["prediction"] = resources.inference.replay(reference, plan.server_url)
    cache.parent.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(cache, index=False)
    return reference


@task(name="validate-live-data", **INFRA_RETRIES)
def validate_live_task(plan: MonitorPlan, inputs: pd.DataFrame) -> dict[str, Any]:
    """The version's own GX suite (as recorded at registration) on the live inputs."""
    import json

    from modelyard.spec import ExpectationSpec
    from tasks.model_pipeline import EXPECTATIONS_ARTIFACT
    from tasks.validation import build_suite, validate_frame

    client = get_resources().registry
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(plan.run_id, EXPECTATIONS_ARTIFACT, tmp)
        recorded = [ExpectationSpec.model_validate(item) for item in json.loads(Path(path).read_text())]
    live = live_expectations(recorded, plan.spec.data.target)
    report = validate_frame(inputs, build_suite(f"{plan.model}-live-data", live))
    return {"success": report.success, "evaluated": report.evaluated, "failed": len(report.failed),
            "failures": [{"expectation": f.expectation, "column": f.column, "unexpected": f.unexpected_count}
                         for f in report.failed]}


def live_expectations(recorded: list, target: str) -> list:
    """The training suite as it applies to live inputs: nothing about the target (live rows
    carry no labels), the table's column set without it."""
    live = []
    for expectation in recorded:
        if expectation.column == target:
            continue
        kwargs = dict(expectation.kwargs)
        for key in ("column_set", "column_list"):
            if isinstance(kwargs.get(key), list) and target in kwargs[key]:
                kwargs[key] = [c for c in kwargs[key] if c != target]
        live.append(expectation.model_copy(update={"kwargs": kwargs}))
    return live


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(plan: MonitorPlan, reference: pd.DataFrame, window: pd.DataFrame, report_dir: str) -> dict[str, Any]:
    """Evidently drift of inputs and predictions; its HTML and JSON written to ``report_dir``."""
    from tasks.drift import analyse_drift, drift_report_files

    inputs = m.window_inputs(window)
    columns = [c for c in inputs.columns if c in reference.columns]
    categorical = [c for c in columns if c in set(plan.spec.data.categorical or [])
                   or not pd.api.types.is_numeric_dtype(reference[c])]
    current = inputs[columns].copy()
    prediction_column = None
    if "prediction" in reference.columns:
        current["prediction"] = window["prediction"].to_numpy()
        prediction_column = "prediction"
        if plan.spec.is_classification:  # class labels drift as categories
            categorical = [*categorical, "prediction"]
    result, snapshot = analyse_drift(reference, current, columns, categorical, prediction_column=prediction_column,
                                     drift_share=plan.spec.monitoring.drift_share,
                                     max_rows=plan.spec.monitoring.max_rows)
    if snapshot is not None:
        drift_report_files(snapshot, Path(report_dir))
    return result.as_dict()


@task(name="performance", **INFRA_RETRIES)
def performance_task(plan: MonitorPlan, window: pd.DataFrame) -> m.PerformanceVerdict:
    resources = get_resources()
    labels = m.read_labels(m.labels_location(resources.settings, plan.spec), plan.spec.data.target)
    run = resources.registry.get_run(plan.run_id)
    baseline = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
    return m.performance_verdict(window, labels, plan.spec, baseline)


@task(name="service-health", cache_policy=NO_CACHE)
def service_task(plan: MonitorPlan) -> tuple[m.ServiceVerdict, dict | None]:
    """Error rate and p99 over every ready replica's ``/metrics`` since the last run (by
    replica, so that a restarted one counts from zero); unreachable metrics are a service
    problem: no ready replica, or none whose ``/metrics`` answers."""
    if plan.unreachable is not None:
        return m.unreachable_service(plan.unreachable, plan.rollout_in_progress), None
    inference = get_resources().inference
    scraped, failed = {}, {}
    for url in plan.server_urls:
        try:
            scraped[url] = m.snapshot_dict(inference.scrape(url))
        except httpx.HTTPError as error:
            failed[url] = f"{type(error).__name__}: {error}"
    if not scraped:
        return m.unreachable_service(f"/metrics of v{plan.version} did not answer on any ready replica: "
                                     + "; ".join(f"{url} {why}" for url, why in failed.items())), None
    previous = plan.previous.get("metrics")
    before, after = m.replica_window(previous, scraped)
    kept = {url: previous[url] for url in failed if isinstance(previous, dict) and url in previous}
    return m.service_verdict(before, after, plan.spec), kept | scraped  # a replica not read now: judged next time


@task(name="save-monitor-state", cache_policy=NO_CACHE)
def save_state_task(plan: MonitorPlan, verdict: m.WindowVerdict, metrics_now: dict | None) -> None:
    m.save_monitor_state(get_resources().settings, plan.model, m.next_monitor_state(plan.previous, verdict, metrics_now))


@task(name="log-monitoring", **INFRA_RETRIES)
def log_monitoring_task(plan: MonitorPlan, verdict: m.WindowVerdict, report_dir: str) -> str | None:
    """An MLflow run in ``<model>-monitoring`` with the numbers and Evidently's HTML and JSON;
    returns the URL of the HTML report."""
    resources = get_resources()
    client = resources.registry
    name = f"{plan.model}-monitoring"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=f"v{plan.version} {verdict.window_end}",
                            tags={"modelyard.model": plan.model, "modelyard.version": plan.version,
                                  "modelyard.status": verdict.status})
    metrics = {"rows": verdict.rows}
    if verdict.drift:
        metrics |= {"drift_share": verdict.drift["drift_share"], "drifted_columns": verdict.drift["drifted_columns"]}
    if verdict.performance and verdict.performance.value is not None:
        metrics[f"live_{verdict.performance.metric}"] = verdict.performance.value
    if verdict.service:
        metrics["error_rate"] = verdict.service.error_rate
        if verdict.service.p99_ms is not None:
            metrics["p99_ms"] = verdict.service.p99_ms
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, float(value))
    client.log_dict(run.info.run_id, verdict.as_dict(), "verdict.json")
    html = None
    for path in sorted(Path(report_dir).glob("*")):
        client.log_artifact(run.info.run_id, str(path), "evidently")
        if path.suffix == ".html":
            html = artifact_url(resources.settings.mlflow_url, run.info.run_id, f"evidently/{path.name}")
    client.set_terminated(run.info.run_id)
    return html


@task(name="publish-verdict", cache_policy=NO_CACHE)
def publish_verdict_task(verdict: m.WindowVerdict, report_url: str | None) -> None:
    """The verdict as the model's ``monitor`` artifact, linking Evidently's report."""
    publish(monitor_artifact(verdict, report_url))


@task(name="raise-alerts", cache_policy=NO_CACHE)
def raise_alerts_task(plan: MonitorPlan, alerts: list[m.Alert]) -> list[str]:
    """One Prefect event per alert, with the numbers; the same in the audit ledger; and an
    incident opened for it (none while one of its kind is open on the model), whose first bad
    signal is the start of the window that showed it."""
    from prefect.events import emit_event

    emitted = []
    records = get_resources().ledger.records() if alerts else []  # one window's alerts: one of each kind
    for alert in alerts:
        emit_event(event=str(alert.event),
                   resource={"prefect.resource.id": model_resource_id(plan.model),
                             "prefect.resource.name": plan.model, "modelyard.model": plan.model,
                             "modelyard.version": plan.version,
                             "modelyard.fresh": str(bool(alert.numbers.get("fresh_version"))).lower()},
                   payload={"reason": alert.reason, **alert.numbers})
        action = ALERT_ACTIONS[alert.event]
        append_audit_record(action, f"{plan.model}/{plan.version}", {"reason": alert.reason, **alert.numbers})
        open_incident(append_audit_record, records, model=plan.model, version=plan.version,
                      kind=alert_kind(action), alert_action=action, first_signal_at=alert.numbers.get("window_start"), summary=alert.reason,
                      details={k: v for k, v in alert.numbers.items() if k not in ("model", "version")},
                      emit=emit_incident_event)
        emitted.append(alert.event)
    return emitted
