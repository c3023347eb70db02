"""validate: the model's Great Expectations suite on its data; a failure stops everything."""

from __future__ import annotations

from prefect import flow

from modelyard.catalog import Action
from tasks.audit import record_audit_event
from tasks.model_pipeline import (
    log_validation_task, model_expectations_task, prepare_data_task, validate_data_task, validation_summary,
)
from tasks.reporting import publish, validation_artifact
from tasks.validation import ValidationFailed


@flow(name="validate", log_prints=True)
def validate(spec_path: str, data_path: str | None = None) -> dict:
    """Validate the spec's data; raise ValidationFailed (nothing trained) when it is bad."""
    prepared = prepare_data_task(spec_path, data_path)
    expectations, source = model_expectations_task(prepared)
    report = validate_data_task(prepared, expectations)
    run_id = log_validation_task(prepared, report, source)
    publish(validation_artifact(prepared.spec.name, report, source))
    summary = validation_summary(prepared, report, run_id, source)
    record_audit_event(Action.DATA_VALIDATED if report.success else Action.DATA_REJECTED, prepared.spec.name, summary)
    if not report.success:
        raise ValidationFailed(report)
    return summary | {"expectations": [e.model_dump() for e in expectations]}
