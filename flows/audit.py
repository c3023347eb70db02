"""audit-verify: the ledger verified on a schedule (hourly, prefect.yaml), with its MLflow and
Prefect witnesses; each run lands in the ledger as ``audit.verified``, and the share that
passed is the audit pass rate KPI. A broken ledger fails the run after recording why."""

from __future__ import annotations

from prefect import flow

from tasks.kpis import publish_audit_verify, verify_ledger_task


class LedgerBroken(RuntimeError):
    """``audit verify`` found a record edited, deleted, inserted, reordered, cut or restored."""


@flow(name="audit-verify", log_prints=True)
def audit_verify() -> dict:
    """Verify every record, checkpoint and witness; record the finding; fail if it is broken."""
    details = verify_ledger_task()
    rate = publish_audit_verify(details)
    print(f"ledger {'OK' if details['ok'] else 'BROKEN'}: {details['records']} records; "
          f"audit pass rate {rate['audit_pass_rate']}")
    if not details["ok"]:
        raise LedgerBroken(details["problem"])
    return details | {"pass_rate": rate["audit_pass_rate"]}
