"""The model pipeline: validate → build → evaluate → register/promote, for any tabular spec."""

from __future__ import annotations

from prefect import flow, task

from flows.build import build
from flows.evaluate import evaluate
from flows.validate import validate
from modelyard.settings import get_settings
from tasks.audit import record_audit_event
from tasks.model_pipeline import INFRA_RETRIES
from tasks.registry import CHAMPION, alias_version, set_alias, tracking_client


@task(name="promote-to-champion", **INFRA_RETRIES)
def promote(model: str, version: str, reason: str) -> str | None:
    """Point the ``champion`` alias at ``version``; return the version it pointed at before."""
    client = tracking_client(get_settings())
    previous = alias_version(client, model, CHAMPION)
    set_alias(client, model, CHAMPION, version)
    record_audit_event("model.promoted", f"{model}/{version}", {"alias": CHAMPION, "previous": previous, "reason": reason})
    return previous


@task(name="current-champion", **INFRA_RETRIES)
def current_champion(model: str) -> str | None:
    return alias_version(tracking_client(get_settings()), model, CHAMPION)


@flow(name="model-pipeline", log_prints=True)
def model_pipeline(spec_path: str, data_path: str | None = None, promote_if_better: bool = False) -> dict:
    """Run the whole pipeline on a spec. The first passing version becomes champion; later
    ones become ``challenger`` and are promoted only with ``promote_if_better``."""
    validated = validate(spec_path, data_path)
    built = build(spec_path, data_path, validation=validated)
    model, version = built["name"], built["version"]
    decision = evaluate(spec_path, version, data_path)
    outcome = {"model": model, "version": version, "passed": decision["passed"],
               "reasons": decision["reasons"], "champion": current_champion(model)}
    if decision["passed"] and (outcome["champion"] is None or promote_if_better):
        why = "first version to pass the policy" if outcome["champion"] is None else "beat the champion under the policy"
        promote(model, version, why)
        outcome["champion"] = version
    print(f"{model}: v{version} {'passed' if decision['passed'] else 'rejected'}; champion is v{outcome['champion']}")
    return outcome
