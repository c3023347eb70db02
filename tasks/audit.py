"""Writing to the audit ledger from flows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task
from prefect.runtime import flow_run

from modelyard.ledger import ledger_from_settings
from modelyard.settings import get_settings


def flow_actor() -> str:
    """Who acts, as the ledger names it: the running flow and its run, or the CLI."""
    name = flow_run.get_flow_name()
    run_id = flow_run.get_id()
    return f"flow:{name}/{run_id}" if name else "cli"


def append_audit_record(action: str, subject: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Append one record to the stack's ledger on behalf of the current flow run."""
    return ledger_from_settings(get_settings()).append(flow_actor(), action, subject, details)


@task(name="audit-record", retries=2, retry_delay_seconds=1)
def record_audit_event(action: str, subject: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Prefect task: one ledger record, retried on a transient file-system error."""
    return append_audit_record(action, subject, details)
