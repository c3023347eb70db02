"""MLflow: logging a built model with its evidence, registering it, reading and moving aliases."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from modelyard.integrity import artifact_digest
from modelyard.settings import Settings

if TYPE_CHECKING:  # scikit-learn only where a model is built: deploy and monitor runs start faster
    from tasks.onnx_export import OnnxResult
    from tasks.training import FeatureSet

CHAMPION = "champion"
CHALLENGER = "challenger"
REFERENCE_ROWS = 50_000
# What the pyfunc flavour needs to load and predict: given explicitly, pinned to this environment.
# Left to MLflow, it infers them in a subprocess that loads the model (seconds per build) and picks
# up whatever that process imported, pytest included.
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops")


def tracking_client(settings: Settings) -> MlflowClient:
    """Point MLflow at the stack's tracking server and registry."""
    mlflow.set_tracking_uri(settings.mlflow_url)
    mlflow.set_registry_uri(settings.mlflow_url)
    return MlflowClient(tracking_uri=settings.mlflow_url, registry_uri=settings.mlflow_url)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str
    artifact_sha256: str
    serving_format: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def model_pip_requirements() -> list[str]:
    """``name==version`` of MODEL_REQUIREMENTS as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def _flatten_params(spec_params: dict[str, Any], prefix: str) -> dict[str, str]:
    return {f"{prefix}{key}": str(value)[:250] for key, value in spec_params.items()}


def log_and_register(
    *,
    model_name: str,
    pipeline,
    features: FeatureSet,
    train_inputs: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    onnx: OnnxResult,
    validation_result: dict[str, Any],
    model_card: str,
    slice_rows: list[dict],
    lineage: dict[str, str],
    client: MlflowClient,
) -> RegisteredVersion:
    """Log the model (pyfunc + ONNX when parity holds) with its evidence, and register a version."""
    from tasks.training import SKOPS_TRUSTED_TYPES

    mlflow.set_experiment(model_name)
    with mlflow.start_run(run_name=f"build-{model_name}") as run, tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        mlflow.log_params(_flatten_params(params, ""))
        mlflow.log_metrics({f"holdout_{key}": value for key, value in metrics.items()})
        mlflow.log_dict(validation_result, "validation/summary.json")
        mlflow.log_dict({"slices": slice_rows}, "evaluation/slice_metrics.json")
        mlflow.log_text(model_card, "model_card.md")
        reference = train_inputs.head(REFERENCE_ROWS)
        reference_path = tmp_dir / "reference.parquet"
        reference.to_parquet(reference_path, index=False)
        mlflow.log_artifact(str(reference_path), "reference")

        extra_files = []
        serving = {"format": "onnx" if onnx.ok else "pyfunc", "onnx_status": onnx.reason,
                   "parity": onnx.parity, "layout": onnx.layout, "columns": features.columns, "categorical": features.categorical}
        if onnx.ok and onnx.model_bytes:
            onnx_path = tmp_dir / "model.onnx"
            onnx_path.write_bytes(onnx.model_bytes)
            extra_files.append(str(onnx_path))
        serving_path = tmp_dir / "serving.json"
        serving_path.write_text(json.dumps(serving, indent=2))
        extra_files.append(str(serving_path))

        example = reference.head(5)
        signature = infer_signature(example, pipeline.predict(example))
        info = mlflow.sklearn.log_model(
            pipeline, name="model", signature=signature, input_example=example,
            skops_trusted_types=SKOPS_TRUSTED_TYPES, extra_files=extra_files,
            pip_requirements=model_pip_requirements(),
        )
        local_model = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_dir / "download")))
        digest = artifact_digest(local_model)
        tags = {**lineage, "modelyard.artifact_sha256": digest, "modelyard.serving_format": serving["format"],
                "modelyard.onnx_status": onnx.reason[:500]}
        mlflow.set_tags(tags)
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    return RegisteredVersion(model_name, str(version.version), run.info.run_id, info.model_uri, digest, serving["format"])


SPEC_ARTIFACT = "spec/spec.json"


def version_spec(client: MlflowClient, model_name: str, version: str):
    """The model spec a version was built from (``None`` for versions registered without one)."""
    from modelyard.spec import SpecError, parse_spec

    run_id = client.get_model_version(model_name, version).run_id
    try:
        raw = mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPEC_ARTIFACT}") if run_id else None
    except Exception:  # noqa: BLE001 - no artifact (e.g. a version logged by hand)
        return None
    if raw is None:
        return None
    try:
        return parse_spec(raw, origin=f"{model_name} v{version} {SPEC_ARTIFACT}")
    except SpecError:
        return None


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def set_alias(client: MlflowClient, model_name: str, alias: str, version: str) -> None:
    client.set_registered_model_alias(model_name, alias, version)


def registry_snapshot(client: MlflowClient, model_name: str) -> dict[str, Any]:
    """Versions and aliases of a model (empty when it does not exist): to prove what changed."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        return {"versions": [], "aliases": {}}
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    return {"versions": versions, "aliases": dict(model.aliases)}


def load_version(model_name: str, version: str):
    """The registered version as the fitted sklearn pipeline (for metrics with probabilities)."""
    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def log_decision(client: MlflowClient, run_id: str, decision: dict[str, Any], champion_metrics: dict | None, p95_ms: float | None) -> None:
    client.log_dict(run_id, decision, "evaluation/decision.json")
    client.set_tag(run_id, "modelyard.decision", "passed" if decision["passed"] else "rejected")
    if p95_ms is not None:
        client.log_metric(run_id, "p95_single_row_latency_ms", p95_ms)
    for key, value in (champion_metrics or {}).items():
        client.log_metric(run_id, f"champion_{key}", value)
