"""Bridge downtime loses nothing: the champion alias set while the webhook bridge was down is
deployed once the reconciler compares the registry with what serves — on a real stack."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import quiet

from deployments.strategies import active_version
from modelyard.ledger import ledger_from_settings
from modelyard.cli.stack import REGISTRY_BRIDGE, Stack

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parent.parent / "specs"


def test_alias_missed_while_the_bridge_was_down_is_deployed_by_the_reconciler(stack_env: Stack, tmp_path: Path):
    from flows.pipeline import model_pipeline
    from flows.reconcile import reconcile

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = "recon-bc"
    spec["serving"] = {"strategy": "blue_green"}
    spec_path = tmp_path / "recon-bc.yaml"
    spec_path.write_text(yaml.safe_dump(quiet(spec)))

    assert stack_env.processes.stop(REGISTRY_BRIDGE)
    try:
        result = model_pipeline(str(spec_path))
        assert result["champion"] == result["version"]
        time.sleep(5)
        assert active_version(stack_env.settings, "recon-bc") is None  # nobody heard of the alias
        missed = reconcile(grace_s=0)
        assert {"model": "recon-bc", "version": result["version"], "serving": None} in missed
    finally:
        stack_env.up()  # the bridge comes back
    path = stack_env.settings.state_dir / "serving" / "recon-bc.active.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and active_version(stack_env.settings, "recon-bc") != result["version"]:
        time.sleep(1)
    assert active_version(stack_env.settings, "recon-bc") == result["version"]
    url = json.loads(path.read_text())["endpoint"]
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == result["version"]
    deadline = time.monotonic() + 60  # the flow records its outcome after the switch
    while time.monotonic() < deadline:
        actions = [r["action"] for r in ledger_from_settings(stack_env.settings).records(subject=f"recon-bc/{result['version']}")]
        if "deploy.succeeded" in actions:
            break
        time.sleep(1)
    assert "registry.event.reconciled" in actions and "deploy.succeeded" in actions
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
