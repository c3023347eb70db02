"""promote: a version serving in one environment into the next (dev → staging → production).

Started by ``deploy.succeeded`` when the next environment's promotion is automatic or on
approval (the trigger in prefect.yaml), or by `modelyard promote`. The flow reads as the
promotion's story; each step is in tasks/promoting.py. When the environment asks for approval,
the run suspends with a typed form whose description is the evidence; Prefect re-runs the flow
from the top when it resumes, and every step reuses what this run already recorded.
"""

from __future__ import annotations

from prefect import flow
from prefect.flow_runs import suspend_flow_run
from prefect.runtime import flow_run

from tasks.deploying import check_names
from tasks.promoting import (
    Stopped, Tally, already_promoted, check_requester, copy_task, evidence_markdown, evidence_task, gather_approvals,
    needs_approval, plan_task, policy_task, refuse_rejected, request_approval, request_promotion,
)


@flow(name="promote", log_prints=True)
def promote(model: str, version: str, to: str | None = None, requested_by: str | None = None) -> dict:
    """Copy ``model`` v``version`` (a registered model of one environment) into the next
    environment as far as the policies and, where asked, the approvers allow."""
    check_names("promote", {"model": model, "version": version})
    requested_by = check_requester(requested_by)
    run_id = str(flow_run.get_id())
    plan = plan_task(model, version, to, run_id)
    if isinstance(plan, Stopped):
        print(plan.why)
        return {"promoted": False, "why": plan.why}
    if requested_by is None and to is None and (why := already_promoted(plan, run_id)) is not None:
        print(f"nothing to do: {why}")
        return {"promoted": False, "why": why}
    request_promotion(plan, run_id, requested_by)
    evidence = evidence_task(plan, run_id)
    first = policy_task(plan, evidence, run_id, requested_by, stage="precheck")
    tally = Tally()
    if needs_approval(plan, first):
        request = request_approval(plan, evidence, run_id, requested_by)
        print(f"waiting for {request['details']['required']} approval(s) of {plan.subject} into {plan.target_env} "
              f"until {request['details']['deadline']}: {request['details']['url']}")
        tally = gather_approvals(plan, request, evidence_markdown(plan, evidence, request["details"]["required"],
                                                                  request["details"]["deadline"]),
                                 requested_by, suspend_flow_run)
        if tally.rejection is not None:
            refuse_rejected(plan, run_id, tally)
    decision = policy_task(plan, evidence, run_id, requested_by, tally, stage="final", fresh_alerts=True)
    copied = copy_task(plan, decision, run_id, tally)
    print(f"{plan.subject} → {copied['model']} v{copied['version']} ({plan.target_env}); its champion alias deploys it")
    return copied
