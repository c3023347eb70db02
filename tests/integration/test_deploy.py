"""Deployment from the registry event alone; blue/green, canary and shadow under load with zero
failed requests; automatic rollback of broken versions (no health, 20% errors, slower than their
own runtime without the delay) and a manual rollback — on real Prefect, MLflow, nginx and server processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.strategies import RolloutFailed
from modelyard.catalog import TAG_ARTIFACT_SHA256, TAG_DEPLOY_STATUS, Action
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from tests.support.broken_models import register_faulty_version
from tests.support.stacks import quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _serving(stack: Stack) -> ServingState:
    return ServingState(stack.settings.state_dir)


def _active(stack: Stack) -> str | None:
    return _serving(stack).active_version("deploy-bc")


def _wait_active(stack: Stack, model: str, version: str, timeout_s: float = 240) -> dict:
    active = _serving(stack).wait_active(model, version, timeout_s)
    if active is None:
        raise AssertionError(f"{model} v{version} did not become active; ledger tail: "
                             f"{ledger_from_settings(stack.settings).records()[-3:]}")
    return active


class Load:
    """Single-row requests against the stable endpoint, one after another, every status kept."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.statuses: list[int | str] = []
        self.request_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                request_id = uuid.uuid4().hex
                try:
                    response = client.post(f"{self.url}/invocations", json=self.body, headers={"X-Request-ID": request_id})
                    self.statuses.append(response.status_code)
                    self.request_ids.append(request_id)
                except httpx.HTTPError as error:
                    self.statuses.append(type(error).__name__)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _body() -> dict:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.head(1).values.tolist()}}


def _endpoint(stack: Stack) -> str:
    return _serving(stack).active_record("deploy-bc")["endpoint"]


def _counts(statuses: list) -> dict:
    return {s: statuses.count(s) for s in set(statuses)}


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = "deploy-bc"
    # Blue/green when the champion alias moves; the canary and shadow tests ask for their
    # strategy explicitly, with short bakes.
    spec["serving"] = {"strategy": "blue_green", "rollout": {
        "steps": [25, 100], "bake_s": 3, "shadow_s": 4,
        "gates": {"min_requests": 20, "max_error_rate": 0.01, "max_p99_ratio": 5.0, "min_agreement": 0.95}}}
    # The load here repeats one row: a scheduled monitor would rightly call that drift and
    # retrain mid-test. The monitoring loop has its own tests (test_monitoring.py).
    quiet(spec)
    path = tmp_path_factory.mktemp("deploy") / "deploy-bc.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_champion_alias_alone_deploys_then_blue_green_switch_fails_no_request(stack_env: Stack, spec_path: Path):
    from flows.pipeline import model_pipeline

    first = model_pipeline(str(spec_path))
    assert first["champion"] == first["version"]
    active = _wait_active(stack_env, "deploy-bc", first["version"])  # webhook → bridge → event → trigger → deploy
    url = active["endpoint"]
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == first["version"]

    with Load(url, _body()) as load:
        second = model_pipeline(str(spec_path), promote_if_better=True)
        assert second["champion"] == second["version"] != first["version"]
        _wait_active(stack_env, "deploy-bc", second["version"])
        time.sleep(2)
    assert len(load.statuses) > 50
    assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == second["version"]
    # The flow retires the old version, then records success.
    wait_until(lambda: Action.DEPLOY_SUCCEEDED in [r["action"] for r in ledger_from_settings(stack_env.settings).records(
        subject=f"deploy-bc/{second['version']}")], 60, "deploy.succeeded in the ledger")


def test_tampered_version_is_refused_and_rolled_back_while_the_champion_keeps_serving(stack_env: Stack, spec_path: Path):
    import mlflow

    from flows.build import build
    from flows.deploy import deploy

    serving = _active(stack_env)
    assert serving is not None
    built = build(str(spec_path))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/deploy-bc/{built['version']}"))
    # Tamper with the stored artifact itself, where the server will download it from.
    stored = [p for p in stack_env.settings.mlflow_artifacts_dir.rglob("model.onnx") if p.read_bytes() == next(local.rglob("model.onnx")).read_bytes()]
    assert stored, "the ONNX file of the new version is in the artifact store"
    for path in stored:
        path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RolloutFailed) as failure:
        deploy("deploy-bc", built["version"])
    # The target refused the files before any replica started: they no longer hash to the digest
    # recorded at registration. Any other failure would name something else.
    recorded = registry_client(stack_env.settings).get_model_version("deploy-bc", built["version"]).tags[TAG_ARTIFACT_SHA256]
    reason = " ".join(failure.value.reason.split())  # the server's message as its log wrapped it
    assert f"the registry recorded {recorded[:16]}" in reason and "refusing to serve a tampered artifact" in reason, reason
    assert _active(stack_env) == serving
    assert httpx.get(f"{_endpoint(stack_env)}/version", timeout=5).json()["version"] == serving
    last = ledger_from_settings(stack_env.settings).records(subject=f"deploy-bc/{built['version']}")[-1]
    assert last["action"] == "deploy.rolled_back"
    assert "refusing to serve a tampered artifact" in " ".join(last["details"]["reason"].split())


def test_canary_moves_a_good_version_through_weighted_steps_without_a_failed_request(stack_env: Stack, spec_path: Path):
    from flows.build import build
    from flows.deploy import deploy

    serving = _active(stack_env)
    built = build(str(spec_path))
    url = _endpoint(stack_env)
    with Load(url, _body()) as load:
        result = deploy("deploy-bc", built["version"], strategy="canary")
        time.sleep(1)
    assert set(load.statuses) == {200}, _counts(load.statuses)
    steps = {s["step"]: s for s in result["timeline"]}
    assert steps["weight 25%"]["weights"] == {serving: 75, built["version"]: 25}
    gates = {g["gate"]: g for g in steps["gates @ 25%"]["gates"]}
    assert steps["gates @ 25%"]["ok"] and gates["requests"]["value"] >= 20
    assert gates["agreement"]["value"] == 1.0 and gates["error_rate"]["value"] == 0
    assert _active(stack_env) == built["version"]
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == built["version"]
    # The rollout chart is on the version's MLflow run, where the Prefect artifact embeds it from.
    client = registry_client(stack_env.settings)
    run_id = client.get_model_version("deploy-bc", built["version"]).run_id
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "rollouts"))
    # So are the delivery KPIs after this rollout, published as the `delivery-kpis` artifact.
    assert {"kpis/delivery-kpis.html", "kpis/delivery-kpis.png"} <= {a.path for a in client.list_artifacts(run_id, "kpis")}
    from tests.support.stacks import prefect_client

    with prefect_client(stack_env.settings) as prefect:
        published = sorted((a for a in prefect.read_artifacts() if a.key == "delivery-kpis"), key=lambda a: a.created)
    assert published and published[-1].description == f"after deploy-bc v{built['version']}"
    assert "# Delivery KPIs of deploy-bc" in published[-1].data and "success rate" in published[-1].data


@pytest.mark.parametrize(("fault", "expected"), [
    ("crash", "exited during start-up"), ("errors", "error_rate"), ("slow", "p99"),
])
def test_canary_rolls_a_broken_version_back_by_itself(stack_env: Stack, spec_path: Path, fault: str, expected: str):
    from flows.deploy import deploy

    champion = _active(stack_env)
    spec = yaml.safe_load(spec_path.read_text())
    serving = champion
    if fault == "slow":
        # The champion answers through ONNX Runtime, a wrapped version through its pyfunc: slower
        # by its runtime alone. Its pyfunc twin serves first, so that only the delay differs.
        serving = register_faulty_version("deploy-bc", champion, "none", spec)
        deploy("deploy-bc", serving, strategy="blue_green")
        assert _active(stack_env) == serving
    broken = register_faulty_version("deploy-bc", champion, fault, spec)
    url = _endpoint(stack_env)
    with Load(url, _body()) as load, pytest.raises(RolloutFailed) as failure:
        deploy("deploy-bc", broken, strategy="canary")
    assert expected in failure.value.reason, failure.value.reason
    assert _active(stack_env) == serving
    if fault == "crash":  # never received traffic
        assert set(load.statuses) == {200}, _counts(load.statuses)
    else:  # its canary share saw the fault; the rollback was measured
        rolled = [s for s in failure.value.timeline if s["step"] == "rolled back"]
        assert rolled and rolled[-1]["ok"] and rolled[-1]["weights"] == {serving: 100}
    with httpx.Client(timeout=5) as client:
        after = [client.post(f"{url}/invocations", json=_body()).status_code for _ in range(50)]
        assert after == [200] * 50
        assert client.get(f"{url}/version").json()["version"] == serving
    last = ledger_from_settings(stack_env.settings).records(subject=f"deploy-bc/{broken}")[-1]
    assert last["action"] == "deploy.rolled_back" and expected in last["details"]["reason"]
    tags = registry_client(stack_env.settings).get_model_version("deploy-bc", broken).tags
    assert tags[TAG_DEPLOY_STATUS] == "rolled_back"


def test_shadow_mirrors_traffic_without_touching_responses_then_switches(stack_env: Stack, spec_path: Path):
    from flows.build import build
    from flows.deploy import deploy
    from deployments.server.prediction_log import read_prediction_log

    serving = _active(stack_env)
    built = build(str(spec_path))
    url = _endpoint(stack_env)
    with Load(url, _body()) as load:
        result = deploy("deploy-bc", built["version"], strategy="shadow")
        time.sleep(1)
    assert set(load.statuses) == {200}, _counts(load.statuses)
    gates = next(s for s in result["timeline"] if s["step"] == "shadow gates")
    assert gates["ok"] and gates["compared_rows"] >= 20
    # The shadow answered the very requests the client sent (same ids), and its answers went nowhere.
    shadowed = read_prediction_log(stack_env.settings.prediction_log_dir, "deploy-bc", built["version"])
    assert len(set(shadowed["request_id"]) & set(load.request_ids)) >= 20
    assert _active(stack_env) == built["version"]
    assert serving != built["version"]


def test_manual_rollback_returns_to_the_previous_version(stack_env: Stack):
    before = _active(stack_env)
    earlier = [h["version"] for h in _serving(stack_env).history("deploy-bc") if h["version"] != before][-1]
    env = {**stack_env.settings.child_env(), **stack_env.settings.prefect_client_env(), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, "-m", "modelyard.cli", "rollback", "deploy-bc"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=stack_env.settings.project_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _active(stack_env) == earlier
    assert httpx.get(f"{_endpoint(stack_env)}/version", timeout=5).json()["version"] == earlier
    last = ledger_from_settings(stack_env.settings).records(subject=f"deploy-bc/{earlier}")[-1]
    assert last["action"] == "deploy.manual_rollback" and last["details"]["from_version"] == before
