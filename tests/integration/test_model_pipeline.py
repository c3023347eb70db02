"""The model pipeline on real Prefect and MLflow servers: validate → build → evaluate → register."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from modelyard.catalog import CHALLENGER, CHAMPION
from modelyard.cli.stack import Stack
from modelyard.integrity import artifact_digest
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client, registry_snapshot
from modelyard.signing import SIGNATURE_FILE, TAG_SIGNATURE_SHA256, TAG_SIGNER, verify_model_dir
from tasks.validation import ValidationFailed
from tests.support.stacks import quiet

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _write_spec(path: Path, base: str, **changes) -> Path:
    spec = yaml.safe_load((SPECS / base).read_text())
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(quiet(spec)))
    return path


def _ledger_actions(stack: Stack, subject_prefix: str) -> list[str]:
    return [r["action"] for r in ledger_from_settings(stack.settings).records() if r["subject"].startswith(subject_prefix)]


def _prefect_artifact_keys(stack: Stack) -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the stack's URL and auth string (stack_env's settings)
        return {a.key for a in client.read_artifacts() if a.key}


def test_breast_cancer_spec_trains_through_the_worker_into_a_champion(stack_env: Stack):
    env = {**stack_env.settings.child_env(), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "train", str(SPECS / "breast_cancer.yaml")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client = registry_client(stack_env.settings)
    champion = client.get_model_version_by_alias("breast-cancer", CHAMPION)
    tags = champion.tags
    for tag in ("modelyard.data_fingerprint", "modelyard.git_commit", "modelyard.lock_sha256",
                "modelyard.validation", "modelyard.packages", "modelyard.artifact_sha256"):
        assert tags.get(tag), f"lineage tag {tag} missing"
    assert tags["modelyard.validation"].startswith("passed")
    assert json.loads(tags["modelyard.packages"])["scikit-learn"]
    assert tags["modelyard.serving_format"] == "onnx"
    assert tags["modelyard.onnx_status"] == "parity verified on the holdout"
    # The recorded sha256 is the digest of exactly what the registry serves.
    local = mlflow.artifacts.download_artifacts(f"models:/breast-cancer/{champion.version}")
    assert artifact_digest(Path(local)) == tags["modelyard.artifact_sha256"]
    # …signed at registration: the signature ships among the files, its signer is in the lineage.
    assert (Path(local) / SIGNATURE_FILE).is_file()
    signed = verify_model_dir(stack_env.settings, Path(local), "breast-cancer")
    assert tags[TAG_SIGNER] == signed.signer and tags[TAG_SIGNATURE_SHA256] == signed.signature_sha256
    assert (Path(local) / "extra_files" / "model.onnx").exists() or any(Path(local).rglob("model.onnx"))
    run = client.get_run(champion.run_id)
    assert run.data.metrics["holdout_roc_auc"] > 0.95
    assert run.data.tags["modelyard.decision"] == "passed"
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert {"model_card.md", "reference", "validation", "evaluation"} <= artifacts
    keys = _prefect_artifact_keys(stack_env)
    assert {"breast-cancer-validation", "breast-cancer-model-card", "breast-cancer-evaluation"} <= keys
    actions = _ledger_actions(stack_env, "breast-cancer")
    for action in ("data.validated", "model.registered", "model.evaluated", "model.promoted"):
        assert action in actions
    registered = next(r for r in ledger_from_settings(stack_env.settings).records(f"breast-cancer/{champion.version}")
                      if r["action"] == "model.registered")
    assert registered["details"]["signer"] == signed.signer
    assert registered["details"]["artifact_sha256"] == tags["modelyard.artifact_sha256"]


def test_diabetes_regression_needs_only_a_spec(stack_env: Stack):
    from flows.pipeline import model_pipeline

    outcome = model_pipeline(str(SPECS / "diabetes.yaml"))
    assert outcome["passed"] and outcome["champion"] == outcome["version"]
    client = registry_client(stack_env.settings)
    run = client.get_run(client.get_model_version("diabetes-progression", outcome["version"]).run_id)
    assert 0.3 < run.data.metrics["holdout_r2"] < 1.0
    assert run.data.metrics["holdout_rmse"] < 70


@pytest.fixture(scope="module")
def fraud_champion(stack_env: Stack, tmp_path_factory) -> dict:
    """A small fraud model, trained from a CSV, as champion of 'fraud-csv'."""
    from flows.pipeline import model_pipeline
    from tasks.demo_data import generate_transactions

    folder = tmp_path_factory.mktemp("fraud")
    clean = folder / "clean.csv"
    generate_transactions(n_rows=6000, seed=3).to_csv(clean, index=False)
    spec = _write_spec(folder / "fraud.yaml", "fraud.yaml", name="fraud-csv", **{"data.source": str(clean)})
    spec_dict = yaml.safe_load(spec.read_text())
    spec_dict["data"].pop("generator_params")
    spec.write_text(yaml.safe_dump(spec_dict))
    outcome = model_pipeline(str(spec))
    assert outcome["passed"] and outcome["champion"] == outcome["version"]
    return {"spec": spec, "clean": clean, "folder": folder, "version": outcome["version"]}


def _corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    bad = frame.copy()
    if kind == "nulls":
        bad.loc[bad.index[:25], "amount"] = None
    elif kind == "out_of_range":
        bad.loc[bad.index[:7], "hour"] = 31
    elif kind == "missing_column":
        bad = bad.drop(columns=["country"])
    elif kind == "unseen_category":
        bad.loc[bad.index[:12], "merchant_category"] = "casino_cash_advance"
    return bad


@pytest.mark.parametrize(
    "kind,expectation,column",
    [
        ("nulls", "expect_column_values_to_not_be_null", "amount"),
        ("out_of_range", "expect_column_values_to_be_between", "hour"),
        ("missing_column", "expect_column_to_exist", "country"),
        ("unseen_category", "expect_column_values_to_be_in_set", "merchant_category"),
    ],
)
def test_bad_data_stops_the_pipeline_and_leaves_the_registry_unchanged(
    stack_env: Stack, fraud_champion: dict, kind: str, expectation: str, column: str
):
    from flows.pipeline import model_pipeline

    client = registry_client(stack_env.settings)
    before = registry_snapshot(client, "fraud-csv")
    bad_path = fraud_champion["folder"] / f"{kind}.csv"
    _corrupt(pd.read_csv(fraud_champion["clean"]), kind).to_csv(bad_path, index=False)
    with pytest.raises(ValidationFailed) as failure:
        model_pipeline(str(fraud_champion["spec"]), data_path=str(bad_path))
    failed = {(f.expectation, f.column) for f in failure.value.report.failed}
    assert (expectation, column) in failed, failed
    named = next(f for f in failure.value.report.failed if (f.expectation, f.column) == (expectation, column))
    if kind != "missing_column":
        assert named.unexpected_count and named.examples
    assert registry_snapshot(client, "fraud-csv") == before
    runs = mlflow.search_runs(experiment_names=["fraud-csv"], filter_string="tags.`modelyard.validation` = 'failed'")
    assert len(runs) >= 1
    last = ledger_from_settings(stack_env.settings).records(subject="fraud-csv")[-1]
    assert last["action"] == "data.rejected"
    assert any(expectation in item for item in last["details"]["failed"])


def test_worse_challenger_is_rejected_and_champion_stays(stack_env: Stack, fraud_champion: dict):
    from flows.pipeline import model_pipeline

    client = registry_client(stack_env.settings)
    worse = _write_spec(
        fraud_champion["folder"] / "worse.yaml", "fraud.yaml", name="fraud-csv",
        **{"data.source": str(fraud_champion["clean"]),
           "estimator.params": {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.01}},
    )
    spec_dict = yaml.safe_load(worse.read_text())
    spec_dict["data"].pop("generator_params")
    worse.write_text(yaml.safe_dump(spec_dict))
    outcome = model_pipeline(str(worse), promote_if_better=True)
    assert outcome["passed"] is False
    assert any("roc_auc" in reason for reason in outcome["reasons"])
    snapshot = registry_snapshot(client, "fraud-csv")
    assert snapshot["aliases"].get(CHAMPION) == fraud_champion["version"]
    assert snapshot["aliases"].get(CHALLENGER) != outcome["version"]
    run = client.get_run(client.get_model_version("fraud-csv", outcome["version"]).run_id)
    assert run.data.tags["modelyard.decision"] == "rejected"
    evaluated = [r for r in ledger_from_settings(stack_env.settings).records(subject=f"fraud-csv/{outcome['version']}")
                 if r["action"] == "model.evaluated"]
    assert evaluated and evaluated[-1]["details"]["passed"] is False
    assert evaluated[-1]["details"]["champion_version"] == fraud_champion["version"]


def test_model_that_does_not_convert_is_registered_pyfunc_only_with_the_reason(stack_env: Stack, tmp_path):
    from flows.pipeline import model_pipeline

    spec = _write_spec(tmp_path / "hgb.yaml", "breast_cancer.yaml", name="breast-cancer-hgb",
                       estimator={"kind": "hist_gradient_boosting", "params": {"max_iter": 50}},
                       **{"policy.max_p95_latency_ms": 2000})
    outcome = model_pipeline(str(spec))
    version = registry_client(stack_env.settings).get_model_version("breast-cancer-hgb", outcome["version"])
    assert version.tags["modelyard.serving_format"] == "pyfunc"
    assert version.tags["modelyard.onnx_status"].startswith(("conversion failed", "parity failed", "ONNX Runtime"))
    assert outcome["passed"], outcome["reasons"]
