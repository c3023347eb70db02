"""Appending to the audit ledger on behalf of whoever acts now: a flow run, or the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.catalog import Action
from modelyard.settings import Settings


def flow_actor() -> str:
    """Who acts, as the ledger names it: the running flow and its run, or the CLI."""
    from prefect.runtime import flow_run

    name = flow_run.get_flow_name()
    run_id = flow_run.get_id()
    return f"flow:{name}/{run_id}" if name else "cli"


def append_audit_record(action: Action, subject: str, details: Mapping[str, Any] | None = None,
                        settings: Settings | None = None) -> dict[str, Any]:
    """Append one record to the stack's ledger on behalf of the current actor."""
    from modelyard.resources import get_resources

    return get_resources(settings).ledger.append(flow_actor(), str(action), subject, details)
