"""build: train from the spec, export ONNX with proven parity, register a version with lineage."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.validate import validate
from tasks.audit import record_audit_event
from tasks.model_pipeline import build_model_task, prepare_data_task, register_model_task


class DataChanged(RuntimeError):
    """The data differs from the data that was validated; building on it is refused."""


@flow(name="build", log_prints=True)
def build(spec_path: str, data_path: str | None = None, validation: dict[str, Any] | None = None) -> dict:
    """Train and register a version of validated data (validating first when not told how)."""
    if validation is None:
        validation = validate(spec_path, data_path)
    prepared = prepare_data_task(spec_path, data_path)
    if prepared.fingerprint != validation["fingerprint"]:
        raise DataChanged(
            f"data fingerprint {prepared.fingerprint[:12]} is not the validated {validation['fingerprint'][:12]}: "
            "the source changed after validation"
        )
    built = build_model_task(prepared)
    registered, card = register_model_task(prepared, built, validation)
    create_markdown_artifact(key=f"{prepared.spec.name}-model-card".lower().replace("_", "-"), markdown=card)
    print(f"registered {registered.name} v{registered.version} ({registered.serving_format}); "
          f"{prepared.spec.metrics.primary}={built.metrics.get(prepared.spec.metrics.primary)}")
    record_audit_event("model.registered", f"{registered.name}/{registered.version}",
                       {**registered.as_dict(), "metrics": built.metrics, "onnx": built.onnx.reason,
                        "data_fingerprint": prepared.fingerprint})
    return {**registered.as_dict(), "metrics": built.metrics, "onnx_status": built.onnx.reason}
