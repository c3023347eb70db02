"""validate: the model's Great Expectations suite on its data; a failure stops everything."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.audit import record_audit_event
from tasks.model_pipeline import (
    log_validation_task, model_expectations_task, prepare_data_task, validate_data_task,
)
from tasks.validation import ValidationFailed, report_markdown


@flow(name="validate", log_prints=True)
def validate(spec_path: str, data_path: str | None = None) -> dict:
    """Validate the spec's data; raise ValidationFailed (nothing trained) when it is bad."""
    prepared = prepare_data_task(spec_path, data_path)
    expectations, source = model_expectations_task(prepared)
    report = validate_data_task(prepared, expectations)
    run_id = log_validation_task(prepared, report, source)
    create_markdown_artifact(
        key=f"{prepared.spec.name}-validation".lower().replace("_", "-"),
        markdown=report_markdown(report, f"Validation of {prepared.spec.name} data ({source})"),
    )
    summary = {"model": prepared.spec.name, "success": report.success, "fingerprint": prepared.fingerprint,
               "evaluated": report.evaluated, "failed": [f.expectation + (f":{f.column}" if f.column else "") for f in report.failed],
               "mlflow_run_id": run_id, "suite": source}
    record_audit_event("data.validated" if report.success else "data.rejected", prepared.spec.name, summary)
    summary["expectations"] = [e.model_dump() for e in expectations]
    if not report.success:
        raise ValidationFailed(report)
    return summary
