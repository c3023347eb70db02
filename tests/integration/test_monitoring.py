"""The monitoring loop on a real stack: windows of real traffic judged by the monitor flow
(GX, Evidently, late labels), alerts as Prefect events and notifications, and the retrain
they start — one per burst."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from deployments.server.prediction_log import read_prediction_log
from modelyard.catalog import PREDICTION_ID_HEADER, RETRAIN_DEPLOYMENT, Action, Event, model_resource_id
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from tests.support.waits import RUN_DEPLOYMENT, SEND_NOTIFICATION, actions_on, prefect_events, related_ids, wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
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
    active = ServingState(stack.settings.state_dir).wait_active(model, version, timeout_s)
    if active is None:
        raise AssertionError(f"{model} v{version} did not become active; ledger tail: "
                             f"{ledger_from_settings(stack.settings).records()[-3:]}")
    return active["endpoint"]


def _frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def _send(stack: Stack, url: str, rows: pd.DataFrame, request_id: str | None = None) -> list[str]:
    """One request per row, each with its own request id unless ``request_id`` is given; returns
    the prediction ids the server answered with (what labels are keyed by) once the prediction
    log holds them all."""
    ids = []
    features = rows.drop(columns=["target"])
    with httpx.Client(timeout=10) as client:
        for values in features.values.tolist():
            body = {"dataframe_split": {"columns": list(features.columns), "data": [values]}}
            response = client.post(f"{url}/invocations", json=body,
                                   headers={"X-Request-ID": request_id or uuid.uuid4().hex})
            assert response.status_code == 200
            ids.append(response.headers[PREDICTION_ID_HEADER])

    def logged() -> bool:
        log = read_prediction_log(stack.settings.prediction_log_dir, MODEL)
        return "prediction_id" in log.columns and set(ids) <= set(log["prediction_id"])

    wait_until(logged, 60, "every prediction in the prediction log")
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
    serving = ServingState(stack.settings.state_dir).active_version(MODEL)
    return [r for r in ledger_from_settings(stack.settings).records(subject=f"{MODEL}/{serving}") if r["action"] == action]


def _retrain_runs(since: datetime) -> list:
    """Flow runs of the retrain deployment created since ``since``."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     flow_run_filter=FlowRunFilter())
    return [r for r in runs if r.created is not None and r.created >= since]


def test_same_population_is_not_drift_and_a_shifted_one_is(stack_env: Stack, served: dict, alert_receiver):
    from flows.monitor import monitor

    frame = _frame()
    _send(stack_env, served["url"], frame.sample(300, random_state=1))
    calm = monitor(MODEL)
    assert calm["status"] == "ok", calm
    assert calm["data_valid"] and calm["drift"]["dataset_drift"] is False and calm["alerts"] == []

    # A real shift: only the larger tumours arrive (a referral change upstream, say).
    shifted = frame[frame["mean_radius"] > frame["mean_radius"].quantile(0.6)]
    _send(stack_env, served["url"], shifted.sample(300, replace=True, random_state=2))
    drifted = monitor(MODEL)
    assert drifted["status"] == "alert" and drifted["drift"]["dataset_drift"] is True
    events = [a["event"] for a in drifted["alerts"]]
    assert events == [Event.DRIFT_DETECTED]
    top = [f["column"] for f in drifted["drift"]["features"][:8]]
    assert any("radius" in c or "perimeter" in c or "area" in c for c in top), top
    record = _alerts(stack_env, Action.MONITOR_DRIFT)[-1]
    assert record["details"]["drift_share"] >= 0.5 and record["details"]["top_features"]
    # The Evidently report is in MLflow, and the notification reached the receiver.
    client = registry_client(stack_env.settings)
    runs = client.search_runs([client.get_experiment_by_name(f"{MODEL}-monitoring").experiment_id],
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert any(a.path.endswith(".html") for a in client.list_artifacts(runs[0].info.run_id, "evidently"))
    wait_until(lambda: any(Event.DRIFT_DETECTED in json.dumps(r) and MODEL in json.dumps(r)
                           for r in alert_receiver.received), 60, "the drift notification at the receiver")


def test_labels_arriving_late_update_the_performance_verdict(stack_env: Stack, served: dict):
    from flows.monitor import monitor

    frame = _frame().sample(200, random_state=3)
    # One client id for every request: labels pair with predictions by the server's id alone.
    ids = _send(stack_env, served["url"], frame, request_id="the-same-client-id")
    assert len(set(ids)) == len(ids)
    before = monitor(MODEL)
    assert before["performance"]["value"] is None  # no labels yet

    labels_dir = stack_env.settings.state_dir / "labels" / MODEL
    labels_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prediction_id": ids, "target": frame["target"].to_numpy()}).to_parquet(labels_dir / "a-true.parquet")
    good = monitor(MODEL)
    assert good["performance"]["rows"] >= 200 and good["performance"]["value"] > 0.9
    assert good["performance"]["degraded"] is False

    # Later labels correct the earlier ones (a chargeback file): the model was wrong after all.
    pd.DataFrame({"prediction_id": ids, "target": 1 - frame["target"].to_numpy()}).to_parquet(
        labels_dir / "b-corrected.parquet")
    bad = monitor(MODEL)
    assert bad["performance"]["degraded"] is True
    assert Event.PERFORMANCE_DEGRADED in [a["event"] for a in bad["alerts"]]
    (labels_dir / "b-corrected.parquet").unlink()


def test_invalid_live_data_raises_data_invalid_and_never_retrains(stack_env: Stack, served: dict):
    from prefect.events import emit_event

    from flows.monitor import monitor

    settings = stack_env.settings
    broken = _frame().sample(100, random_state=4)
    broken["mean_radius"] = 500.0  # a unit change upstream: the server accepts numbers, GX does not
    _send(stack_env, served["url"], broken)
    started = datetime.now(UTC)
    verdict = monitor(MODEL)
    assert [a["event"] for a in verdict["alerts"]] == [Event.DATA_INVALID]
    assert verdict["data_valid"] is False and verdict["drift"] is None
    failures = verdict["validation"]["failures"]
    assert any(f["column"] == "mean_radius" for f in failures)

    # The automations acted on this alert (its notification went out) ...
    invalid = wait_until(lambda: prefect_events(settings, event={"name": [Event.DATA_INVALID]},
                                                resource={"id": [model_resource_id(MODEL)]},
                                                occurred={"since": started.isoformat()}),
                         60, "the data.invalid event in Prefect")
    assert len(invalid) == 1
    wait_until(lambda: actions_on(settings, invalid[0]["id"], SEND_NOTIFICATION), 60,
               "the notification of the data.invalid event")
    # ... and the retrain trigger has acted on a drift event emitted after it: had the invalid
    # alert matched the trigger, its run would exist by now.
    marker = emit_event(event=Event.DRIFT_DETECTED, payload={"reason": "marker after the invalid-data alert"},
                        resource={"prefect.resource.id": model_resource_id(MODEL), "modelyard.model": MODEL,
                                  "modelyard.version": served["version"], "modelyard.fresh": "false"})
    marked = wait_until(lambda: actions_on(settings, str(marker.id), RUN_DEPLOYMENT), 120,
                        "the retrain trigger acting on the later drift event")
    assert {a["payload"]["action_type"] for a in actions_on(settings, invalid[0]["id"])} == {SEND_NOTIFICATION}
    runs = _retrain_runs(started)
    assert set(related_ids(marked[0], "prefect.flow-run")) <= {str(r.id) for r in runs}
    assert [r for r in runs if r.parameters.get("model") == MODEL and r.parameters.get("reason") == Event.DATA_INVALID] == []
    assert not [r for r in ledger_from_settings(settings).records()
                if r["subject"] == MODEL and r["action"].startswith("retrain")
                and r["details"].get("reason") == Event.DATA_INVALID]


def test_a_burst_of_drift_events_starts_exactly_one_retrain(stack_env: Stack, tmp_path: Path):
    from prefect import get_client
    from prefect.events import emit_event

    from flows.pipeline import model_pipeline

    settings = stack_env.settings
    model = "burst-bc"
    first = model_pipeline(str(_spec(tmp_path, model, monitoring={"interval_s": 3600},
                                     retrain={"automatic": True, "cooldown_s": 3600, "include_traffic": False})))
    burst = [emit_event(event=Event.DRIFT_DETECTED,
                        resource={"prefect.resource.id": model_resource_id(model), "modelyard.model": model,
                                  "modelyard.version": first["version"], "modelyard.fresh": "false"},
                        payload={"reason": f"burst {n}", "drift_share": 0.8})
             for n in range(20)]

    def runs_of_the_burst() -> list[str] | None:
        """One retrain flow run per event, once the trigger has acted on all of them."""
        runs = []
        for event in burst:
            started = actions_on(settings, str(event.id), RUN_DEPLOYMENT)
            if not started:
                return None
            runs += related_ids(started[0], "prefect.flow-run")
        return runs

    run_ids = wait_until(runs_of_the_burst, 120, "the retrain trigger acting on every drift event", poll_s=2)
    assert len(set(run_ids)) == len(burst)

    def final_states() -> list[str] | None:
        with get_client(sync_client=True) as client:
            states = [client.read_flow_run(run_id).state for run_id in run_ids]
        return [s.type.value for s in states] if all(s is not None and s.is_final() for s in states) else None

    states = wait_until(final_states, 480, "every run of the burst in a final state", poll_s=2)
    ledger = ledger_from_settings(settings)
    started = [r for r in ledger.records(subject=model) if r["action"] == Action.RETRAIN_STARTED]
    assert len(started) == 1
    assert started[0]["details"]["reason"] == Event.DRIFT_DETECTED
    finished = [r for r in ledger.records() if r["action"] == Action.RETRAIN_FINISHED and r["subject"].startswith(f"{model}/")]
    assert len(finished) == 1 and finished[0]["details"]["outcome"] in ("promoted", "kept champion")
    # Every other run was cancelled (one retrain at a time) or ran and said why it skipped.
    skipped = [r for r in ledger.records(subject=model) if r["action"] == Action.RETRAIN_SKIPPED]
    assert states.count("COMPLETED") + states.count("CANCELLED") == len(run_ids), states
    assert len(skipped) == states.count("COMPLETED") - 1
    assert all(r["details"]["why"] for r in skipped)
