"""The model pipeline: validate → build → evaluate → register/promote, for any tabular spec."""

from __future__ import annotations

from prefect import flow

from flows.build import build
from flows.evaluate import evaluate
from flows.validate import validate
from tasks.model_pipeline import current_champion, promote, promotion_reason, record_author_task


@flow(name="model-pipeline", log_prints=True)
def model_pipeline(spec_path: str, data_path: str | None = None, promote_if_better: bool = False,
                   requested_by: str | None = None) -> dict:
    """Run the whole pipeline on a spec. The first passing version becomes champion; later
    ones become ``challenger`` and are promoted only with ``promote_if_better``.
    ``requested_by``: who asked for this version, recorded as its author (four-eyes keeps them
    from approving its promotion); unset, the author is the service (a retrain, the demo)."""
    validated = validate(spec_path, data_path)
    built = build(spec_path, data_path, validation=validated)
    model, version = built["name"], built["version"]
    if requested_by:
        record_author_task(model, version, requested_by)
    decision = evaluate(spec_path, version, data_path)
    champion = current_champion(model)
    why = promotion_reason(decision["passed"], champion, promote_if_better)
    if why is not None:
        promote(model, version, why)
        champion = version
    print(f"{model}: v{version} {'passed' if decision['passed'] else 'rejected'}; champion is v{champion}")
    return {"model": model, "version": version, "passed": decision["passed"], "reasons": decision["reasons"],
            "champion": champion}
