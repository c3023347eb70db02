"""The smoke flow: proves a flow run reaches the stack and writes to the audit ledger."""

from __future__ import annotations

from typing import Any

from prefect import flow

from modelyard.catalog import Action
from tasks.audit import record_audit_event
from tasks.reporting import publish, smoke_artifact
from tasks.stack_checks import check_environment


@flow(name="smoke", log_prints=True)
def smoke() -> dict[str, Any]:
    """Check the environment, show it in the UI, and leave a record in the audit ledger."""
    facts = check_environment()
    publish(smoke_artifact(facts))
    record = record_audit_event(Action.STACK_SMOKE, "stack", facts)
    print(f"audit record seq {record['seq']} written")
    return {"facts": facts, "audit_seq": record["seq"], "audit_hash": record["hash"]}


if __name__ == "__main__":
    smoke()
