"""evaluate: the challenger against the champion on one holdout; the policy decides."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from modelyard.settings import get_settings
from tasks.audit import record_audit_event
from tasks.evaluation import decision_markdown
from tasks.model_pipeline import INFRA_RETRIES, evaluate_task, json_safe, prepare_data_task
from tasks.registry import CHALLENGER, log_decision, set_alias, tracking_client


@task(name="record-decision", **INFRA_RETRIES)
def record_decision(model: str, version: str, run_id: str, evaluation) -> None:
    client = tracking_client(get_settings())
    log_decision(client, run_id, json_safe(evaluation.decision.as_dict()), evaluation.champion_metrics, evaluation.p95_ms)
    if evaluation.decision.passed:
        set_alias(client, model, CHALLENGER, version)


@flow(name="evaluate", log_prints=True)
def evaluate(spec_path: str, version: str, data_path: str | None = None) -> dict:
    """Decide on ``version``; set the ``challenger`` alias only when the policy passes."""
    prepared = prepare_data_task(spec_path, data_path)
    name = prepared.spec.name
    evaluation = evaluate_task(prepared, version)
    run_id = tracking_client(get_settings()).get_model_version(name, version).run_id
    record_decision(name, version, run_id, evaluation)
    create_markdown_artifact(
        key=f"{name}-evaluation".lower().replace("_", "-"),
        markdown=decision_markdown(name, version, evaluation.decision, evaluation.challenger_metrics, evaluation.champion_metrics),
    )
    result = json_safe({**evaluation.decision.as_dict(), "version": version, "p95_ms": evaluation.p95_ms,
                        "challenger_metrics": evaluation.challenger_metrics,
                        "champion_metrics": evaluation.champion_metrics})
    record_audit_event("model.evaluated", f"{name}/{version}", result)
    print(("PASSED" if evaluation.decision.passed else "REJECTED") + f": {name} v{version} " + "; ".join(evaluation.decision.reasons))
    return result
