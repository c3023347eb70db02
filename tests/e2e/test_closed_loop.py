"""The closed loop, end to end on a real stack, with short intervals: a champion deployed by the
registry event alone serves live traffic that drifts; the monitor (a run of its Prefect
deployment, as its schedule starts it) detects the drift; the event starts a retrain; the
retrained version beats the champion's policy, is promoted, and the alias event rolls it out by
canary under the same live traffic — without a failed request, with MTTD and MTTR recorded."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.server.prediction_log import read_prediction_log
from modelyard.catalog import MONITOR_DEPLOYMENT, Action, Event
from modelyard.cli.demo_traffic import TrafficGenerator
from modelyard.cli.runs import run_deployment_and_wait
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.serving_state import ServingState
from tests.support.waits import wait_until

# Two pipeline runs, a monitor run and two rollouts: longer than the suite's 600 s default may allow.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1200)]

SPECS = Path(__file__).resolve().parents[2] / "specs"
MODEL = "loop-bc"


def _spec(folder: Path) -> Path:
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = MODEL
    # Live rows come from the whole dataset, holdout included: inferred ranges get some slack.
    spec["validation"] = {"mostly": 0.98, "range_tolerance": 0.25}
    spec["serving"] = {"strategy": "canary", "rollout": {
        "steps": [50, 100], "bake_s": 4,
        "gates": {"min_requests": 20, "max_error_rate": 0.01, "max_p99_ratio": 5.0, "min_agreement": 0.95}}}
    # The test starts the monitor's run itself (its hourly schedule stays out of the way); the
    # retrain starts from the first alert, on the source data alone.
    spec["monitoring"] = {"interval_s": 3600, "min_rows": 100}
    spec["retrain"] = {"automatic": True, "cooldown_s": 3600, "include_traffic": False}
    path = folder / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _shifted_population():
    """Only the larger tumours arrive (a referral change upstream): a real shift of the inputs."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    shifted = frame[frame["mean_radius"] > frame["mean_radius"].quantile(0.6)]
    return shifted.sample(600, replace=True, random_state=2)


def _record(stack: Stack, action: str, subject_prefix: str) -> dict | None:
    found = [r for r in ledger_from_settings(stack.settings).records()
             if r["action"] == action and r["subject"].startswith(subject_prefix)]
    return found[-1] if found else None


def test_drift_retrains_and_a_canary_puts_the_new_champion_in_service(stack_env: Stack, tmp_path: Path):
    from flows.pipeline import model_pipeline

    settings = stack_env.settings
    serving = ServingState(settings.state_dir)
    first = model_pipeline(str(_spec(tmp_path)))
    assert first["champion"] == first["version"]
    active = serving.wait_active(MODEL, first["version"], 240)  # webhook → bridge → event → deploy
    assert active is not None, ledger_from_settings(settings).records()[-3:]
    endpoint = active["endpoint"]

    traffic = TrafficGenerator(endpoint, _shifted_population(), rate=40).start()
    try:
        wait_until(lambda: len(read_prediction_log(settings.prediction_log_dir, MODEL, first["version"])) >= 200,
                   120, "200 drifted requests in the prediction log")
        monitored = run_deployment_and_wait(settings, MONITOR_DEPLOYMENT, {"model": MODEL}, timeout_s=300)
        assert monitored.state is not None and monitored.state.is_completed(), monitored.state
        drift = _record(stack_env, Action.MONITOR_DRIFT, f"{MODEL}/{first['version']}")
        assert drift is not None, "the monitor saw no drift"

        finished = wait_until(lambda: _record(stack_env, Action.RETRAIN_FINISHED, f"{MODEL}/"), 600,
                              "the retrain the drift event started")
        new = finished["subject"].split("/", 1)[1]
        assert finished["details"]["outcome"] == "promoted", finished["details"]
        assert serving.wait_active(MODEL, new, 300) is not None, ledger_from_settings(settings).records()[-3:]
        succeeded = wait_until(lambda: _record(stack_env, Action.DEPLOY_SUCCEEDED, f"{MODEL}/{new}"), 120,
                               "the canary rollout's outcome in the ledger")
    finally:
        traffic.stop()

    started = _record(stack_env, Action.RETRAIN_STARTED, MODEL)
    assert started["details"]["reason"] == Event.DRIFT_DETECTED and started["details"]["champion"] == first["version"]
    # The new champion went through the canary's weighted step and its gates on live traffic.
    steps = {s["step"]: s for s in succeeded["details"]["timeline"]}
    assert succeeded["details"]["strategy"] == "canary"
    assert steps["weight 50%"]["weights"] == {first["version"]: 50, new: 50}
    assert steps["gates @ 50%"]["ok"]
    assert httpx.get(f"{endpoint}/version", timeout=5).json()["version"] == new
    assert traffic.sent > 0 and traffic.failed == 0, dict(traffic.statuses)
    # The loop is measured: detection from the drifted window's start, recovery up to the switch.
    recovered = _record(stack_env, Action.KPI_RECOVERED, f"{MODEL}/{new}")
    assert recovered is not None and recovered["details"]["alert"] == Action.MONITOR_DRIFT
    alert_at = datetime.fromisoformat(drift["time"]).timestamp()
    assert recovered["details"]["mttd_s"] > 0 and recovered["details"]["mttr_s"] > 0
    assert recovered["details"]["mttr_s"] <= datetime.fromisoformat(recovered["time"]).timestamp() - alert_at
