"""retrain: fresh labelled data → the model pipeline → promote if it beats the champion.

Started by the triggers in prefect.yaml on drift or degraded performance, or by hand; a
promotion moves the ``champion`` alias and the registry event deploys it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from modelyard.catalog import Action
from tasks.audit import record_audit_event
from tasks.deploying import check_names
from tasks.retraining import (
    MANUAL_REASON, champion_spec, claim_task, fresh_data_task, record_outcome, release_task,
)


@flow(name="retrain", log_prints=True)
def retrain(model: str, reason: str = MANUAL_REASON, cooldown_s: float | None = None) -> dict:
    """Retrain ``model`` once (claiming it first); promote only a version that beats the champion.
    An alert on an environment's model (``<name>-staging``) retrains the dev model ``<name>``."""
    from flows.pipeline import model_pipeline

    check_names("retrain", {"model": model})
    alerted = model
    spec, champion = champion_spec(model)
    model = spec.name  # versions are trained in dev; promotion carries them onwards
    claim = claim_task(spec, reason, cooldown_s)
    if not claim.granted:
        record_audit_event(Action.RETRAIN_SKIPPED, model, {"reason": reason, "why": claim.reason})
        get_run_logger().info("retrain of %s skipped: %s", model, claim.reason)
        return {"model": model, "retrained": False, "why": claim.reason}
    outcome = "failed"
    try:
        record_audit_event(Action.RETRAIN_STARTED, model, {"reason": reason, "champion": champion,
                                                           "alert_model": alerted})
        data = fresh_data_task(spec)
        result = model_pipeline(data["spec_path"], data["data_path"], promote_if_better=True)
        outcome = record_outcome(model, reason, champion, result, data)
        print(f"{model}: v{result['version']} against champion v{champion}: {outcome}")
        return {"model": model, "retrained": True, "version": result["version"], "outcome": outcome, **data}
    finally:
        release_task(model, outcome)
