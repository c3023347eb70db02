"""evaluate: the challenger against the champion on one holdout; the policy decides."""

from __future__ import annotations

from prefect import flow

from modelyard.catalog import Action
from tasks.audit import record_audit_event
from tasks.model_pipeline import evaluate_task, prepare_data_task, record_decision
from tasks.reporting import evaluation_artifact, publish


@flow(name="evaluate", log_prints=True)
def evaluate(spec_path: str, version: str, data_path: str | None = None) -> dict:
    """Decide on ``version``; set the ``challenger`` alias only when the policy passes."""
    prepared = prepare_data_task(spec_path, data_path)
    name = prepared.spec.name
    evaluation = evaluate_task(prepared, version)
    record_decision(name, version, evaluation)
    publish(evaluation_artifact(name, version, evaluation.decision, evaluation.challenger_metrics,
                                evaluation.champion_metrics))
    result = evaluation.summary(version)
    record_audit_event(Action.MODEL_EVALUATED, f"{name}/{version}", result)
    print(f"{'PASSED' if evaluation.decision.passed else 'REJECTED'}: {name} v{version} {'; '.join(evaluation.decision.reasons)}")
    return result
