"""MLflow: logging a built model with its evidence, registering it, recording the policy's decision."""

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
from mlflow.models import infer_signature

from modelyard.catalog import TAG_ARTIFACT_SHA256
from modelyard.integrity import artifact_digest
from modelyard.settings import Settings
from modelyard.signing import SIGNATURE_FILE, SignatureInfo, sign_model_dir

if TYPE_CHECKING:  # scikit-learn only where a model is built: deploy and monitor runs start faster
    from mlflow.models.model import ModelInfo

    from deployments.server.model_runtime import ModelRuntime
    from tasks.onnx_export import OnnxResult
    from tasks.training import FeatureSet

REFERENCE_ROWS = 50_000
# What the pyfunc flavour needs to load and predict: given explicitly, pinned to this environment.
# Left to MLflow, it infers them in a subprocess that loads the model (seconds per build) and picks
# up whatever that process imported, pytest included.
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str
    artifact_sha256: str
    serving_format: str
    signer: str  # fingerprint of the key that signed the version's files
    signature_sha256: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def model_pip_requirements() -> list[str]:
    """``name==version`` of MODEL_REQUIREMENTS as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def nullable_columns(inputs: pd.DataFrame, features: FeatureSet) -> list[str]:
    """The numeric columns with missing values in ``inputs``: the model learnt to take them, so
    its server accepts null there (categories are strings by then: a gap is the category "nan")."""
    return [c for c in features.numeric if inputs[c].isna().any()]


def _flatten_params(spec_params: dict[str, Any], prefix: str) -> dict[str, str]:
    return {f"{prefix}{key}": str(value)[:250] for key, value in spec_params.items()}


def sign_logged_model(settings: Settings, client: MlflowClient, info: ModelInfo, work_dir: Path) -> tuple[str, SignatureInfo]:
    """Sign a logged model's files as the registry stores them, ship the signature among them
    (``model.sig`` at the model's root) and return the digest of the whole, signature included,
    with the signature's identity."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(work_dir)))
    signature = sign_model_dir(settings, local)
    client.log_model_artifact(info.model_id, str(local / SIGNATURE_FILE))
    return artifact_digest(local), signature


def log_and_register(
    *,
    settings: Settings,
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
    """Log the model (skops pipeline + ONNX when parity holds) with its evidence, sign it, and
    register a version whose lineage names its digest and signer."""
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
        # nullable: the columns whose missing values the ONNX parity check covered (build_model
        # adds rows with gaps to it), so an ONNX server may take null there.
        gaps = nullable_columns(train_inputs, features)
        serving = {"format": "onnx" if onnx.ok else "pyfunc", "onnx_status": onnx.reason,
                   "parity": onnx.parity, "layout": onnx.layout, "columns": features.columns, "categorical": features.categorical,
                   "nullable": gaps}
        if onnx.ok and onnx.model_bytes:
            onnx_path = tmp_dir / "model.onnx"
            onnx_path.write_bytes(onnx.model_bytes)
            extra_files.append(str(onnx_path))
        serving_path = tmp_dir / "serving.json"
        serving_path.write_text(json.dumps(serving, indent=2))
        extra_files.append(str(serving_path))

        example = reference.head(5)
        # MLflow marks a column `required: false` when the frame it infers from has missing values
        # there; the server takes null exactly in those columns, so show it every column that had gaps.
        shown = pd.concat([example, example.head(1).assign(**dict.fromkeys(gaps, float("nan")))]) if gaps else example
        signature = infer_signature(shown, pipeline.predict(example))
        info = mlflow.sklearn.log_model(
            pipeline, name="model", signature=signature, input_example=example,
            skops_trusted_types=SKOPS_TRUSTED_TYPES, extra_files=extra_files,
            pip_requirements=model_pip_requirements(),
        )
        digest, signed = sign_logged_model(settings, client, info, tmp_dir / "download")
        tags = {**lineage, TAG_ARTIFACT_SHA256: digest, **signed.tags(), "modelyard.serving_format": serving["format"],
                "modelyard.onnx_status": onnx.reason[:500]}
        mlflow.set_tags(tags)
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    return RegisteredVersion(model_name, str(version.version), run.info.run_id, info.model_uri, digest, serving["format"],
                             signed.signer, signed.signature_sha256)


class VerifiedModel:
    """A registered version as evaluation uses it: loaded through the inference server's own
    verified runtime (digest and signature checked first; ONNX, else skops; never pickle), with
    scikit-learn's ``predict``, ``predict_proba`` and ``classes_`` over a frame of model inputs."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    @property
    def serving_format(self) -> str:
        return self.runtime.info.serving_format

    @property
    def signer(self) -> str:
        return self.runtime.info.signer

    @property
    def classes_(self) -> list:
        return list(self.runtime.classes or [])

    def columns(self, frame: pd.DataFrame) -> dict:
        """The runtime's input: each signature column of ``frame`` as an array."""
        return {c.name: frame[c.name].to_numpy() for c in self.runtime.columns}

    def predict(self, frame: pd.DataFrame):
        return self.runtime.predict(self.columns(frame)).labels

    def predict_proba(self, frame: pd.DataFrame):
        return self.runtime.predict(self.columns(frame)).probabilities


def load_version(settings: Settings, model_name: str, version: str) -> VerifiedModel:
    """The registered version, verified as the server verifies it (its recorded digest, then its
    signature against the trusted keys; a refusal is recorded in the ledger and raised as
    SignatureError), then loaded as the server loads it."""
    from deployments.server.main import load_runtime, registered_digest, resolve_model_dir

    uri = f"models:/{model_name}/{version}"
    _, _, expected = registered_digest(uri, settings)
    model_dir = resolve_model_dir(uri, settings, expected)
    return VerifiedModel(load_runtime(settings, model_dir, model_name, str(version), expected))


def log_decision(client: MlflowClient, run_id: str, decision: dict[str, Any], champion_metrics: dict | None, p95_ms: float | None) -> None:
    client.log_dict(run_id, decision, "evaluation/decision.json")
    client.set_tag(run_id, "modelyard.decision", "passed" if decision["passed"] else "rejected")
    if p95_ms is not None:
        client.log_metric(run_id, "p95_single_row_latency_ms", p95_ms)
    for key, value in (champion_metrics or {}).items():
        client.log_metric(run_id, f"champion_{key}", value)
