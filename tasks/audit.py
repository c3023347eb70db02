"""Writing to the audit ledger from flows, as a task (retried on a transient file-system error)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task

from modelyard.audit import append_audit_record
from modelyard.catalog import Action


@task(name="audit-record", retries=2, retry_delay_seconds=1)
def record_audit_event(action: Action, subject: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ledger record on behalf of the running flow."""
    return append_audit_record(action, subject, details)
