"""The stage logic of the model pipeline — prepare, validate, build, evaluate, promote — as
plain functions over the spec, with thin Prefect task wrappers for retries and the UI.
Validation and policy failures are verdicts, never retried; only transient infrastructure
errors (MLflow unreachable) are."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from modelyard.audit import append_audit_record
from modelyard.catalog import CHALLENGER, CHAMPION, TAG_SPEC_DIR, Action
from modelyard.environments import TAG_AUTHOR, TAG_TEAM
from modelyard.json_safe import json_safe
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, SPEC_ARTIFACT, alias_version, set_alias
from modelyard.spec import ExpectationSpec, ModelSpec, load_spec
from tasks import data as data_ops
from tasks.evaluation import Decision, decide, model_metrics, p95_latency_ms, slice_metrics
from tasks.lineage import git_commit, lock_hash, package_versions
from tasks.model_card import model_card_markdown
from modelyard.settings import Settings
from tasks.onnx_export import export_with_parity
from tasks.registry import (
    RegisteredVersion, VerifiedModel, load_version, log_and_register, log_decision, nullable_columns,
)
from tasks.training import FeatureSet, model_inputs, train_model
from tasks.validation import ValidationReport, build_suite, suite_for_model, validate_frame

EXPECTATIONS_ARTIFACT = "validation/expectations.json"
# The author of a version nobody asked for by name (a retrain after an alert, the demo): the
# service identity, which is never an approver, so four-eyes holds for it.
SERVICE_AUTHOR = "modelyard-service"


@dataclass
class PreparedData:
    spec: ModelSpec
    data: pd.DataFrame
    train: pd.DataFrame
    holdout: pd.DataFrame
    features: FeatureSet
    fingerprint: str


def prepare_data(spec_path: str, data_path: str | None = None) -> PreparedData:
    """Load the spec and its data (``data_path`` overrides the spec's source), split, fingerprint."""
    spec = load_spec(spec_path)
    if data_path:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(Path(data_path).resolve())})})
    return prepare_spec_data(spec)


def prepare_spec_data(spec: ModelSpec) -> PreparedData:
    """The spec's data, split and fingerprinted (relative paths from ``spec.base_dir``): the same
    holdout whoever asks, so a promotion compares two versions where the pipeline did."""
    data = data_ops.load_dataset(spec)
    columns = data_ops.feature_columns(spec, data)
    features = FeatureSet(columns, data_ops.categorical_columns(spec, data, columns))
    split = data_ops.split_dataset(spec, data)
    return PreparedData(spec, data, split.train, split.holdout, features, data_ops.fingerprint(data))


# -- validate --------------------------------------------------------------------------------


def champion_expectations(client: MlflowClient, model_name: str) -> list[ExpectationSpec] | None:
    """The expectation suite recorded with the current champion, if there is one."""
    version = alias_version(client, model_name, CHAMPION)
    if version is None:
        return None
    run_id = client.get_model_version(model_name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, EXPECTATIONS_ARTIFACT, tmp)
        return [ExpectationSpec.model_validate(item) for item in json.loads(Path(path).read_text())]


def model_expectations(prepared: PreparedData, client: MlflowClient) -> tuple[list[ExpectationSpec], str]:
    """The model's suite: the champion's when one exists, else inferred from this data."""
    recorded = champion_expectations(client, prepared.spec.name)
    if recorded is not None:
        return recorded, "champion's suite"
    _, expectations = suite_for_model(prepared.spec, prepared.data, prepared.features.columns, include_target=True)
    return expectations, "inferred from this data (no champion yet)"


def validate_prepared(prepared: PreparedData, expectations: list[ExpectationSpec]) -> ValidationReport:
    suite = build_suite(f"{prepared.spec.name}-suite", expectations)
    return validate_frame(prepared.data, suite)


def validation_summary(prepared: PreparedData, report: ValidationReport, run_id: str, source: str) -> dict[str, Any]:
    """What the ledger records of a validation, and what the build checks its data against."""
    return {"model": prepared.spec.name, "success": report.success, "fingerprint": prepared.fingerprint,
            "evaluated": report.evaluated,
            "failed": [f.expectation + (f":{f.column}" if f.column else "") for f in report.failed],
            "mlflow_run_id": run_id, "suite": source}


def log_validation_run(client: MlflowClient, prepared: PreparedData, report: ValidationReport, source: str) -> str:
    """GX's result as an MLflow run of the model's experiment, pass or fail."""
    mlflow.set_experiment(prepared.spec.name)
    with mlflow.start_run(run_name=f"validate-{prepared.spec.name}") as run:
        mlflow.set_tags({"modelyard.stage": "validate", "modelyard.validation": "passed" if report.success else "failed",
                         "modelyard.data_fingerprint": prepared.fingerprint, "modelyard.suite_source": source})
        mlflow.log_metrics({"expectations_evaluated": report.evaluated, "expectations_failed": len(report.failed)})
        mlflow.log_dict(report.gx_result, "validation/gx_result.json")
    return run.info.run_id


# -- build -----------------------------------------------------------------------------------


class DataChanged(RuntimeError):
    """The data differs from the data that was validated; building on it is refused."""


def check_unchanged(prepared: PreparedData, validation: dict[str, Any]) -> None:
    """Raise DataChanged unless ``prepared`` is the very data ``validation`` judged."""
    if prepared.fingerprint != validation["fingerprint"]:
        raise DataChanged(
            f"data fingerprint {prepared.fingerprint[:12]} is not the validated {validation['fingerprint'][:12]}: "
            "the source changed after validation"
        )


@dataclass
class BuiltModel:
    pipeline: Any
    metrics: dict[str, float]
    slices: list[dict]
    onnx: Any


def build_model(prepared: PreparedData) -> BuiltModel:
    spec, features = prepared.spec, prepared.features
    pipeline = train_model(spec, prepared.train, features)
    inputs = model_inputs(prepared.holdout, features)
    y_true = prepared.holdout[spec.data.target]
    metrics = model_metrics(pipeline, inputs, y_true, spec.is_classification)
    slices = slice_metrics(prepared.holdout, inputs, y_true, pipeline, spec.is_classification,
                           spec.metrics.slices, spec.metrics.primary)
    onnx = export_with_parity(pipeline, features, with_gaps(prepared.holdout, nullable_columns(
        model_inputs(prepared.train, features), features)), spec.is_classification)
    return BuiltModel(pipeline, metrics, slices, onnx)


def with_gaps(holdout: pd.DataFrame, columns: list[str], rows: int = 20) -> pd.DataFrame:
    """The holdout and, per column that had missing values in training, ``rows`` of it with a
    gap there: ONNX parity must hold on missing values wherever the server will take them."""
    gaps = [holdout.head(rows).assign(**{column: np.nan}) for column in columns]
    return pd.concat([holdout, *gaps], ignore_index=True) if gaps else holdout


def lineage_tags(prepared: PreparedData, validation: dict[str, Any], project_dir: Path,
                 author: str = SERVICE_AUTHOR) -> dict[str, str]:
    """Tags that tie a version to its data, code, packages and validation run, its owning team and
    its author (four-eyes: the author of a version may not approve its promotion)."""
    return {
        TAG_TEAM: prepared.spec.team,
        TAG_AUTHOR: author,
        "modelyard.data_fingerprint": prepared.fingerprint,
        "modelyard.git_commit": git_commit(project_dir),
        "modelyard.lock_sha256": lock_hash(project_dir),
        "modelyard.validation": f"{'passed' if validation['success'] else 'failed'}: "
                                f"{validation['evaluated'] - len(validation['failed'])}/{validation['evaluated']} "
                                f"expectations (run {validation['mlflow_run_id']})",
        "modelyard.packages": json.dumps(package_versions(), sort_keys=True),
        "modelyard.data_source": prepared.spec.data.source,
        # Where relative paths of the spec (data, labels) start: a retrain reads them again.
        TAG_SPEC_DIR: str(prepared.spec.base_dir.resolve()),
    }


def register_model(prepared: PreparedData, built: BuiltModel, validation: dict[str, Any],
                   client: MlflowClient, settings: Settings,
                   author: str = SERVICE_AUTHOR) -> tuple[RegisteredVersion, str]:
    """Log, sign and register a version with its evidence; returns it and its model card."""
    spec = prepared.spec
    lineage = lineage_tags(prepared, validation, settings.project_dir, author)
    data_facts = {
        "source": spec.data.source, "rows": len(prepared.data), "train rows": len(prepared.train),
        "holdout rows": len(prepared.holdout), "features": len(prepared.features.columns),
        "target": spec.data.target, "fingerprint": prepared.fingerprint,
    }
    if spec.is_classification:
        shares = prepared.data[spec.data.target].value_counts(normalize=True).head(10)
        data_facts["target distribution"] = ", ".join(f"{k}: {v:.2%}" for k, v in shares.items())
    serving = {"format": "onnx" if built.onnx.ok else "pyfunc", "onnx_status": built.onnx.reason}
    card = model_card_markdown(spec, data_facts=data_facts, metrics=built.metrics, slice_rows=built.slices,
                               lineage=lineage, serving=serving)
    params = {"estimator": spec.estimator.kind, **{f"estimator.{k}": v for k, v in spec.estimator.params.items()},
              "features": len(prepared.features.columns), "split": spec.data.split.method,
              "test_size": spec.data.split.test_size}
    registered = log_and_register(
        settings=settings, model_name=spec.name, pipeline=built.pipeline, features=prepared.features,
        train_inputs=model_inputs(prepared.train, prepared.features), params=params, metrics=built.metrics,
        onnx=built.onnx, validation_result={k: v for k, v in validation.items() if k != "expectations"}, model_card=card, slice_rows=built.slices,
        lineage=lineage, client=client,
    )
    client.log_dict(registered.run_id, validation["expectations"], EXPECTATIONS_ARTIFACT)
    # The deploy flow reads the serving section (target, strategy, gates) from here: a version
    # carries the rollout plan it was built with, whatever the spec file says later.
    client.log_dict(registered.run_id, spec.model_dump(mode="json"), SPEC_ARTIFACT)
    client.set_registered_model_tag(registered.name, TAG_TEAM, spec.team)
    return registered, card


def record_author(client: MlflowClient, model: str, version: str, author: str) -> None:
    """Name who asked for a version (``model_pipeline(requested_by=...)``) as its author, on the
    version and its run: four-eyes keeps them from approving its promotion."""
    client.set_model_version_tag(model, version, TAG_AUTHOR, author)
    run_id = client.get_model_version(model, version).run_id
    if run_id:
        client.set_tag(run_id, TAG_AUTHOR, author)


def registration_summary(registered: RegisteredVersion, built: BuiltModel, prepared: PreparedData) -> dict[str, Any]:
    """What the ledger records of a registered version."""
    return {**registered.as_dict(), "metrics": built.metrics, "onnx": built.onnx.reason,
            "data_fingerprint": prepared.fingerprint}


# -- evaluate --------------------------------------------------------------------------------


@dataclass
class Evaluation:
    decision: Decision
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    p95_ms: float

    def summary(self, version: str) -> dict[str, Any]:
        """The decision with the numbers behind it, JSON-safe for the ledger and the flow's result."""
        return json_safe({**self.decision.as_dict(), "version": version, "p95_ms": self.p95_ms,
                          "challenger_metrics": self.challenger_metrics, "champion_metrics": self.champion_metrics})


def serving_latency_p95(model: VerifiedModel, holdout: pd.DataFrame, features: FeatureSet) -> float:
    """p95 single-row latency of the version as its server predicts (ONNX when verified, else skops)."""
    inputs = model_inputs(holdout, features)
    rows = [model.columns(inputs.iloc[[i]]) for i in range(min(len(inputs), 50))]
    return p95_latency_ms(lambda i: model.runtime.predict(rows[i]), len(rows))


def evaluate_version(prepared: PreparedData, version: str, client: MlflowClient, settings: Settings) -> Evaluation:
    """The challenger against the current champion on the same holdout, under the spec's policy.
    Both are loaded as their servers load them, after their signatures verified: a version that
    does not verify stops the evaluation (SignatureError, recorded in the ledger)."""
    spec = prepared.spec
    inputs = model_inputs(prepared.holdout, prepared.features)
    y_true = prepared.holdout[spec.data.target]
    challenger = load_version(settings, spec.name, version)
    challenger_metrics = model_metrics(challenger, inputs, y_true, spec.is_classification)
    champion_version = alias_version(client, spec.name, CHAMPION)
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        champion = load_version(settings, spec.name, champion_version)
        champion_metrics = model_metrics(champion, inputs, y_true, spec.is_classification)
    p95 = serving_latency_p95(challenger, prepared.holdout, prepared.features)
    decision = decide(spec.policy, challenger_metrics, champion_metrics, p95,
                      champion_version if champion_metrics is not None else None)
    return Evaluation(decision, challenger_metrics, champion_metrics, p95)


def promotion_reason(passed: bool, champion: str | None, promote_if_better: bool) -> str | None:
    """Why a version that was just evaluated becomes champion, or None when it does not: the
    first version to pass does, a later one only when asked to promote the better."""
    if not passed:
        return None
    if champion is None:
        return "first version to pass the policy"
    return "beat the champion under the policy" if promote_if_better else None


# -- Prefect task wrappers -------------------------------------------------------------------


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data_task(spec_path: str, data_path: str | None = None) -> PreparedData:
    return prepare_data(spec_path, data_path)


@task(name="model-expectations", **INFRA_RETRIES)
def model_expectations_task(prepared: PreparedData) -> tuple[list[ExpectationSpec], str]:
    return model_expectations(prepared, get_resources().registry)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data_task(prepared: PreparedData, expectations: list[ExpectationSpec]) -> ValidationReport:
    return validate_prepared(prepared, expectations)


@task(name="log-validation", **INFRA_RETRIES)
def log_validation_task(prepared: PreparedData, report: ValidationReport, source: str) -> str:
    return log_validation_run(get_resources().registry, prepared, report, source)


@task(name="train-and-export", cache_policy=NO_CACHE)
def build_model_task(prepared: PreparedData) -> BuiltModel:
    return build_model(prepared)


@task(name="register-version", **INFRA_RETRIES)
def register_model_task(prepared: PreparedData, built: BuiltModel,
                        validation: dict[str, Any]) -> tuple[RegisteredVersion, str]:
    resources = get_resources()
    return register_model(prepared, built, validation, resources.registry, resources.settings)


@task(name="evaluate-challenger", **INFRA_RETRIES)
def evaluate_task(prepared: PreparedData, version: str) -> Evaluation:
    resources = get_resources()
    return evaluate_version(prepared, version, resources.registry, resources.settings)


@task(name="record-decision", **INFRA_RETRIES)
def record_decision(model: str, version: str, evaluation: Evaluation) -> None:
    """The decision on the version's MLflow run; the ``challenger`` alias when it passed."""
    client = get_resources().registry
    run_id = client.get_model_version(model, version).run_id
    log_decision(client, run_id, json_safe(evaluation.decision.as_dict()), evaluation.champion_metrics, evaluation.p95_ms)
    if evaluation.decision.passed:
        set_alias(client, model, CHALLENGER, version)


@task(name="record-author", **INFRA_RETRIES)
def record_author_task(model: str, version: str, author: str) -> None:
    record_author(get_resources().registry, model, version, author)


@task(name="current-champion", **INFRA_RETRIES)
def current_champion(model: str) -> str | None:
    return alias_version(get_resources().registry, model, CHAMPION)


@task(name="promote-to-champion", **INFRA_RETRIES)
def promote(model: str, version: str, reason: str) -> str | None:
    """Point the ``champion`` alias at ``version``; return the version it pointed at before."""
    client = get_resources().registry
    previous = alias_version(client, model, CHAMPION)
    set_alias(client, model, CHAMPION, version)
    append_audit_record(Action.MODEL_PROMOTED, f"{model}/{version}",
                        {"alias": CHAMPION, "previous": previous, "reason": reason})
    return previous
