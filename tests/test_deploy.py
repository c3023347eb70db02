"""Deployment from the registry event alone, blue/green under load with zero failed requests,
and automatic rollback when a version must not serve — on real Prefect, MLflow and nginx."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.strategies import RolloutFailed, active_version
from modelyard.ledger import ledger_from_settings
from modelyard.stack import Stack

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _wait_active(stack: Stack, model: str, version: str, timeout_s: float = 240) -> dict:
    path = stack.settings.state_dir / "serving" / f"{model}.active.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and json.loads(path.read_text())["version"] == version:
            return json.loads(path.read_text())
        time.sleep(1)
    raise AssertionError(f"{model} v{version} did not become active; ledger tail: "
                         f"{ledger_from_settings(stack.settings).records()[-3:]}")


class Load:
    """Single-row requests against the stable endpoint, one after another, every status kept."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.statuses: list[int | str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/invocations", json=self.body)
                    self.statuses.append(response.status_code)
                except httpx.HTTPError as error:
                    self.statuses.append(type(error).__name__)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = "deploy-bc"
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

    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.head(1).values.tolist()}}
    with Load(url, body) as load:
        second = model_pipeline(str(spec_path), promote_if_better=True)
        assert second["champion"] == second["version"] != first["version"]
        _wait_active(stack_env, "deploy-bc", second["version"])
        time.sleep(2)
    assert len(load.statuses) > 50
    assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == second["version"]
    deadline = time.monotonic() + 60  # the flow retires the old version, then records success
    while time.monotonic() < deadline:
        actions = [r["action"] for r in ledger_from_settings(stack_env.settings).records(subject=f"deploy-bc/{second['version']}")]
        if "deploy.succeeded" in actions:
            break
        time.sleep(1)
    assert "deploy.succeeded" in actions


def test_tampered_version_is_refused_and_rolled_back_while_the_champion_keeps_serving(stack_env: Stack, spec_path: Path):
    import mlflow

    from flows.build import build
    from flows.deploy import deploy

    serving = active_version(stack_env.settings, "deploy-bc")
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
    assert "tampered" in failure.value.reason or "exited during start-up" in failure.value.reason
    assert active_version(stack_env.settings, "deploy-bc") == serving
    url = json.loads((stack_env.settings.state_dir / "serving" / "deploy-bc.active.json").read_text())["endpoint"]
    assert httpx.get(f"{url}/version", timeout=5).json()["version"] == serving
    last = ledger_from_settings(stack_env.settings).records(subject=f"deploy-bc/{built['version']}")[-1]
    assert last["action"] == "deploy.rolled_back" and last["details"]["reason"]
