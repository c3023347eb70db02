"""An event lost on the way to Prefect loses nothing: the champion alias whose event Prefect never
accepted (the bridge's emit refused, MLflow's retries spent) is deployed once the reconciler
compares the registry with what serves — on a real stack."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from modelyard.catalog import CHAMPION, Action
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.serving_state import ServingState
from tests.support.deliveries import MLFLOW_WEBHOOK_RETRIES, bridge_replaced, refused_emit
from tests.support.stacks import quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_alias_whose_event_prefect_refused_is_deployed_by_the_reconciler(stack_env: Stack, tmp_path: Path):
    from flows.pipeline import model_pipeline
    from flows.reconcile import reconcile

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = "recon-bc"
    spec["serving"] = {"strategy": "blue_green"}
    spec_path = tmp_path / "recon-bc.yaml"
    spec_path.write_text(yaml.safe_dump(quiet(spec)))

    serving = ServingState(stack_env.settings.state_dir)
    # The bridge's every emit refused (its Prefect API address refuses connections).
    with bridge_replaced(stack_env, refused_emit) as bridge:
        result = model_pipeline(str(spec_path))
        assert result["champion"] == result["version"]

        def champion_attempts() -> list:
            return bridge.of("model_version_alias.created", "recon-bc", CHAMPION)

        # MLflow's delivery of the alias and each of its retries answered 503; then it gives up.
        attempts = wait_until(lambda: len(champion_attempts()) >= 1 + MLFLOW_WEBHOOK_RETRIES and champion_attempts(),
                              120, "MLflow's champion alias delivery and its retries")
    assert [(a.status, a.done) for a in attempts] == [(503, False)] * (1 + MLFLOW_WEBHOOK_RETRIES)
    assert len({a.delivery_id for a in attempts}) == 1  # one delivery, retried, never claimed
    assert serving.active_version("recon-bc") is None  # nobody heard of the alias
    assert not [r for r in ledger_from_settings(stack_env.settings).records()
                if r["action"] == Action.REGISTRY_EVENT_EMITTED and r["details"].get("name") == "recon-bc"]
    missed = reconcile(grace_s=0)
    assert {"model": "recon-bc", "version": result["version"], "serving": None} in missed
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
