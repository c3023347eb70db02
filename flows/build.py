"""build: train from the spec, export ONNX with proven parity, register a version with lineage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.validate import validate
from modelyard.catalog import Action
from tasks.audit import record_audit_event
from tasks.model_pipeline import (
    build_model_task, check_unchanged, prepare_data_task, register_model_task, registration_summary,
)
from tasks.reporting import model_card_artifact, publish


@flow(name="build", log_prints=True)
def build(spec_path: str, data_path: str | None = None, validation: dict[str, Any] | None = None) -> dict:
    """Train and register a version of validated data (validating first when not told how)."""
    if validation is None:
        validation = validate(spec_path, data_path)
    prepared = prepare_data_task(spec_path, data_path)
    check_unchanged(prepared, validation)
    built = build_model_task(prepared)
    registered, card = register_model_task(prepared, built, validation)
    publish(model_card_artifact(prepared.spec.name, card))
    print(f"registered {registered.name} v{registered.version} ({registered.serving_format}); "
          f"{prepared.spec.metrics.primary}={built.metrics.get(prepared.spec.metrics.primary)}")
    record_audit_event(Action.MODEL_REGISTERED, f"{registered.name}/{registered.version}",
                       registration_summary(registered, built, prepared))
    return {**registered.as_dict(), "metrics": built.metrics, "onnx_status": built.onnx.reason}
