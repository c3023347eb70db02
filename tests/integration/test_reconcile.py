"""Bridge downtime loses nothing: the champion alias set while the webhook bridge was down is
deployed once the reconciler compares the registry with what serves — on a real stack."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from modelyard.catalog import Action
from modelyard.cli.stack import MLFLOW_SERVER, REGISTRY_BRIDGE, Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.serving_state import ServingState
from modelyard.webhooks import bridge_url
from tests.support.stacks import quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def test_alias_missed_while_the_bridge_was_down_is_deployed_by_the_reconciler(stack_env: Stack, tmp_path: Path):
    from flows.pipeline import model_pipeline
    from flows.reconcile import reconcile

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = "recon-bc"
    spec["serving"] = {"strategy": "blue_green"}
    spec_path = tmp_path / "recon-bc.yaml"
    spec_path.write_text(yaml.safe_dump(quiet(spec)))

    serving = ServingState(stack_env.settings.state_dir)
    mlflow_log = stack_env.processes.log_path(MLFLOW_SERVER)
    offset = mlflow_log.stat().st_size
    assert stack_env.processes.stop(REGISTRY_BRIDGE)
    try:
        result = model_pipeline(str(spec_path))
        assert result["champion"] == result["version"]
        # MLflow gave up delivering the alias webhook (its retries are spent): the event is lost.
        lost = f"Failed to send webhook to {bridge_url(stack_env.settings)} for event model_version_alias.created"
        wait_until(lambda: lost in _log_since(mlflow_log, offset), 120, "MLflow giving up the alias delivery")
        assert serving.active_version("recon-bc") is None  # nobody heard of the alias
        assert not [r for r in ledger_from_settings(stack_env.settings).records()
                    if r["action"] == Action.REGISTRY_EVENT_EMITTED and r["details"].get("name") == "recon-bc"]
        missed = reconcile(grace_s=0)
        assert {"model": "recon-bc", "version": result["version"], "serving": None} in missed
    finally:
        stack_env.up()  # the bridge comes back
    active = serving.wait_active("recon-bc", result["version"], 240)
    assert active is not None, ledger_from_settings(stack_env.settings).records()[-3:]
    url = active["endpoint"]
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == result["version"]
    def actions() -> list[str]:
        return [r["action"] for r in ledger_from_settings(stack_env.settings).records(subject=f"recon-bc/{result['version']}")]

    wait_until(lambda: Action.DEPLOY_SUCCEEDED in actions(), 60, "deploy.succeeded in the ledger")  # recorded after the switch
    assert Action.REGISTRY_EVENT_RECONCILED in actions()
    # Once it serves, there is nothing left to reconcile for it.
    assert all(m["model"] != "recon-bc" for m in reconcile(grace_s=0))


def test_deploy_and_reconciler_adding_the_same_monitor_schedule_at_once_both_succeed(stack_env: Stack):
    """The reconciler may find a version serving before its deploy flow added the schedule; both
    then create it at the same moment. One creates, the others see it; none fails."""
    import contextvars
    import threading

    from modelyard.schedules import ensure_monitor_schedule, monitored_models

    model = "schedule-race"
    start = threading.Barrier(4)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def add() -> None:
        start.wait()
        try:
            outcomes.append(ensure_monitor_schedule(model, 3600))
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    # Each thread carries the test's Prefect settings (the stack's API URL) in its own context.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(add,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert outcomes.count("created") == 1 and sorted(outcomes)[1:] == ["unchanged"] * 3
    assert monitored_models()[model] == 3600
