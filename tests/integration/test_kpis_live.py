"""Every new KPI from real records on a real stack: a quiet model trained and deployed by its
registry event; a scheduled-deployment `audit-verify` run recorded and passing; % monitored
from the real schedule and a real monitor run; utilisation sampled from the replica's real
process; and the bridge's /metrics, behind its token, parsed with prometheus_client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelyard.catalog import AUDIT_DEPLOYMENT, MONITOR_DEPLOYMENT, Action
from modelyard.cli.runs import run_deployment_and_wait
from modelyard.cli.stack import Stack
from modelyard.kpi_snapshot import KpiReader
from modelyard.kpis import Scope, audit_pass_rate
from modelyard.ledger import ledger_from_settings
from modelyard.processes import stack_supervisor
from modelyard.resources.serving_state import ServingState
from modelyard.utilisation import Sampler, read_samples, samples_path
from tests.support.stacks import quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
MODEL = "kpi-bc"
TEAM = "kpi-team"


@pytest.fixture(scope="module")
def deployed(stack_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The quiet test model trained, registered and deployed by its champion event: its version."""
    from flows.pipeline import model_pipeline

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec |= {"name": MODEL, "team": TEAM, "serving": {"strategy": "blue_green"}}
    spec_path = tmp_path_factory.mktemp("kpis") / f"{MODEL}.yaml"
    spec_path.write_text(yaml.safe_dump(quiet(spec)))
    result = model_pipeline(str(spec_path))
    version = result["version"]
    assert result["champion"] == version
    assert ServingState(stack_env.settings.state_dir).wait_active(MODEL, version, 240) is not None
    ledger = ledger_from_settings(stack_env.settings)
    wait_until(lambda: any(r["action"] == Action.DEPLOY_SUCCEEDED for r in ledger.records(subject=f"{MODEL}/{version}")),
               60, "deploy.succeeded in the ledger")
    return version


def test_scheduled_audit_verify_run_is_recorded_and_passes(stack_env: Stack, deployed: str):
    run = run_deployment_and_wait(stack_env.settings, AUDIT_DEPLOYMENT, timeout_s=180)
    assert run.state.is_completed(), run.state
    records = ledger_from_settings(stack_env.settings).records()
    mine = [r for r in records if r["action"] == Action.AUDIT_VERIFIED and str(run.id) in r["actor"]]
    assert len(mine) == 1 and mine[0]["details"]["ok"] is True and mine[0]["details"]["problem"] is None
    assert mine[0]["details"]["records"] > 0 and mine[0]["details"]["checkpoint"]
    rate = audit_pass_rate(records)
    assert rate["audit_runs"] >= 1 and rate["audit_pass_rate"] == 1.0


def test_serving_model_is_monitored_once_a_real_monitor_run_completed(stack_env: Stack, deployed: str):
    reader = KpiReader(stack_env.settings)
    before = reader.snapshot(Scope(model=MODEL)).monitoring
    (row,) = before["models"]
    assert row["scheduled"] and row["interval_s"] == 3600  # the deploy flow's schedule, from the quiet spec
    assert not row["monitored"] and row["reason"] == "no completed monitor run"
    run = run_deployment_and_wait(stack_env.settings, MONITOR_DEPLOYMENT, parameters={"model": MODEL}, timeout_s=240)
    assert run.state.is_completed(), run.state
    after = reader.snapshot(Scope(model=MODEL)).monitoring
    (row,) = after["models"]
    assert row["monitored"] and row["reason"] is None and 0 <= row["last_run_age_s"] < 300
    assert after["monitored_rate"] == 1.0 and row["team"] == TEAM


def test_utilisation_samples_the_real_replica_processes(stack_env: Stack, deployed: str):
    settings = stack_env.settings
    recorded = ServingState(settings.state_dir).replicas(MODEL)[deployed]
    programs = stack_supervisor(settings).processes()
    sampler = Sampler(settings)
    sampler.sample()
    time.sleep(1.0)
    mine = [r for r in sampler.sample()["replicas"] if r["model"] == MODEL]
    assert len(mine) == len(recorded["replicas"]) >= 1
    for sample in mine:
        assert sample["handle"] in {r["handle"] for r in recorded["replicas"]}
        assert sample["pid"] == programs[sample["handle"]].pid  # the process the serving state's program runs
        assert sample["cpu_percent"] is not None and sample["cpu_percent"] >= 0
        assert sample["rss_mb"] > 0


def test_bridge_serves_the_kpis_to_a_scraper_with_the_token(stack_env: Stack, deployed: str):
    from deployments.bridge import kpi_token

    settings = stack_env.settings
    # The watchdog samples every 30 s into the bounded file the bridge reads.
    wait_until(lambda: any(r["model"] == MODEL for s in read_samples(samples_path(settings), time.time() - 120)
                           for r in s["replicas"]), 75, f"the watchdog's utilisation sample of {MODEL}")
    url = f"http://{settings.host}:{settings.bridge_port}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10).status_code == 401
    answer = httpx.get(url, headers={"Authorization": f"Bearer {kpi_token(settings)}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(answer.text) for s in family.samples}
    labels = (("environment", "dev"), ("model", MODEL), ("team", TEAM))
    assert samples[("modelyard_deployments_total", labels)] == 1
    assert samples[("modelyard_deployment_success_ratio", labels)] == 1.0
    assert samples[("modelyard_lead_time_seconds", labels)] > 0
    replica = {(name, dict(key)["replica"]): value for (name, key), value in samples.items()
               if name.startswith("modelyard_replica_") and dict(key).get("model") == MODEL}
    assert replica[("modelyard_replica_memory_rss_bytes", "0")] > 0
    assert samples[("modelyard_kpi_source_up", (("source", "mlflow"),))] == 1
