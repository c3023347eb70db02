"""The monitoring loop on a real stack: windows of real traffic judged by the monitor flow
(GX, Evidently, late labels), alerts as Prefect events and notifications, and the retrain
they start — one per burst."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from deployments.strategies import active_version, wait_active
from modelyard.ledger import ledger_from_settings
from modelyard.cli.stack import Stack

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parent.parent / "specs"
MODEL = "mon-bc"


def _spec(tmp: Path, name: str, **sections) -> Path:
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = name
    spec["serving"] = {"strategy": "blue_green"}
    # Live rows come from the whole dataset, holdout included: inferred ranges get some slack.
    spec["validation"] = {"mostly": 0.98, "range_tolerance": 0.25}
    spec.update(sections)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait_active(stack: Stack, model: str, version: str, timeout_s: float = 240) -> str:
    active = wait_active(stack.settings, model, version, timeout_s)
    if active is None:
        raise AssertionError(f"{model} v{version} did not become active; ledger tail: "
                             f"{ledger_from_settings(stack.settings).records()[-3:]}")
    return active["endpoint"]


def _frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def _send(url: str, rows: pd.DataFrame) -> list[str]:
    """One request per row, each with its own request id (what labels are joined on later)."""
    ids = []
    features = rows.drop(columns=["target"])
    with httpx.Client(timeout=10) as client:
        for values in features.values.tolist():
            request_id = uuid.uuid4().hex
            body = {"dataframe_split": {"columns": list(features.columns), "data": [values]}}
            assert client.post(f"{url}/invocations", json=body, headers={"X-Request-ID": request_id}).status_code == 200
            ids.append(request_id)
    time.sleep(2)  # the prediction log writes its batch
    return ids


@pytest.fixture(scope="module")
def served(stack_env: Stack, tmp_path_factory) -> dict:
    from flows.pipeline import model_pipeline

    path = _spec(tmp_path_factory.mktemp("mon"), MODEL,
                 monitoring={"min_rows": 50, "min_labelled_rows": 50, "interval_s": 3600, "max_performance_drop": 0.05},
                 retrain={"automatic": False})
    result = model_pipeline(str(path))
    return {"url": _wait_active(stack_env, MODEL, result["version"]), "version": result["version"]}


def _alerts(stack: Stack, action: str) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records(subject=f"{MODEL}/{active_version(stack.settings, MODEL)}")
            if r["action"] == action]


def test_same_population_is_not_drift_and_a_shifted_one_is(stack_env: Stack, served: dict, alert_receiver):
    from flows.monitor import monitor

    frame = _frame()
    _send(served["url"], frame.sample(300, random_state=1))
    calm = monitor(MODEL)
    assert calm["status"] == "ok", calm
    assert calm["data_valid"] and calm["drift"]["dataset_drift"] is False and calm["alerts"] == []

    # A real shift: only the larger tumours arrive (a referral change upstream, say).
    shifted = frame[frame["mean_radius"] > frame["mean_radius"].quantile(0.6)]
    _send(served["url"], shifted.sample(300, replace=True, random_state=2))
    drifted = monitor(MODEL)
    assert drifted["status"] == "alert" and drifted["drift"]["dataset_drift"] is True
    events = [a["event"] for a in drifted["alerts"]]
    assert events == ["modelyard.drift.detected"]
    top = [f["column"] for f in drifted["drift"]["features"][:8]]
    assert any("radius" in c or "perimeter" in c or "area" in c for c in top), top
    record = _alerts(stack_env, "monitor.drift.detected")[-1]
    assert record["details"]["drift_share"] >= 0.5 and record["details"]["top_features"]
    # The Evidently report is in MLflow, and the notification reached the receiver.
    from mlflow import MlflowClient

    client = MlflowClient(stack_env.settings.mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name(f"{MODEL}-monitoring").experiment_id],
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert any(a.path.endswith(".html") for a in client.list_artifacts(runs[0].info.run_id, "evidently"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("drift.detected" in json.dumps(r) for r in alert_receiver.received):
        time.sleep(1)
    assert any("drift.detected" in json.dumps(r) and MODEL in json.dumps(r) for r in alert_receiver.received)


def test_labels_arriving_late_update_the_performance_verdict(stack_env: Stack, served: dict):
    from flows.monitor import monitor

    frame = _frame().sample(200, random_state=3)
    ids = _send(served["url"], frame)
    before = monitor(MODEL)
    assert before["performance"]["value"] is None  # no labels yet

    labels_dir = stack_env.settings.state_dir / "labels" / MODEL
    labels_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"request_id": ids, "target": frame["target"].to_numpy()}).to_parquet(labels_dir / "a-true.parquet")
    good = monitor(MODEL)
    assert good["performance"]["rows"] >= 200 and good["performance"]["value"] > 0.9
    assert good["performance"]["degraded"] is False

    # Later labels correct the earlier ones (a chargeback file): the model was wrong after all.
    pd.DataFrame({"request_id": ids, "target": 1 - frame["target"].to_numpy()}).to_parquet(labels_dir / "b-corrected.parquet")
    bad = monitor(MODEL)
    assert bad["performance"]["degraded"] is True
    assert "modelyard.performance.degraded" in [a["event"] for a in bad["alerts"]]
    (labels_dir / "b-corrected.parquet").unlink()


def test_invalid_live_data_raises_data_invalid_and_never_retrains(stack_env: Stack, served: dict):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    from flows.monitor import monitor

    broken = _frame().sample(100, random_state=4)
    broken["mean_radius"] = 500.0  # a unit change upstream: the server accepts numbers, GX does not
    _send(served["url"], broken)
    started = time.time()
    verdict = monitor(MODEL)
    assert [a["event"] for a in verdict["alerts"]] == ["modelyard.data.invalid"]
    assert verdict["data_valid"] is False and verdict["drift"] is None
    failures = verdict["validation"]["failures"]
    assert any(f["column"] == "mean_radius" for f in failures)
    time.sleep(10)  # an automation would have created its flow run by now
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain-on-alert"])),
                                     flow_run_filter=FlowRunFilter())
    # Runs the earlier tests' drift and performance alerts started may still be arriving; none
    # may come from this alert.
    from_invalid = [r for r in runs if r.parameters.get("model") == MODEL
                    and r.parameters.get("reason") == "modelyard.data.invalid"]
    assert from_invalid == []
    assert not [r for r in ledger_from_settings(stack_env.settings).records()
                if r["subject"] == MODEL and r["action"].startswith("retrain")
                and r["details"].get("reason") == "modelyard.data.invalid"]
    assert started > 0


def test_a_burst_of_drift_events_starts_exactly_one_retrain(stack_env: Stack, tmp_path: Path):
    from prefect.events import emit_event

    from flows.pipeline import model_pipeline

    model = "burst-bc"
    first = model_pipeline(str(_spec(tmp_path, model, monitoring={"interval_s": 3600},
                                     retrain={"automatic": True, "cooldown_s": 3600, "include_traffic": False})))
    for n in range(20):
        emit_event(event="modelyard.drift.detected",
                   resource={"prefect.resource.id": f"modelyard.model.{model}", "modelyard.model": model,
                             "modelyard.version": first["version"], "modelyard.fresh": "false"},
                   payload={"reason": f"burst {n}", "drift_share": 0.8})
    ledger = ledger_from_settings(stack_env.settings)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        finished = [r for r in ledger.records() if r["action"] == "retrain.finished" and r["subject"].startswith(f"{model}/")]
        if finished:
            break
        time.sleep(2)
    assert finished, "the drift events started no retrain"
    time.sleep(15)  # late runs of the burst settle (skipped or cancelled)
    started = [r for r in ledger.records(subject=model) if r["action"] == "retrain.started"]
    assert len(started) == 1
    assert started[0]["details"]["reason"] == "modelyard.drift.detected"
    assert finished[0]["details"]["outcome"] in ("promoted", "kept champion")
    assert np.all([r["details"]["why"] for r in ledger.records(subject=model) if r["action"] == "retrain.skipped"])
