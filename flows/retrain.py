"""retrain: fresh labelled data → the model pipeline → promote if it beats the champion.

Started by the automations on `modelyard.drift.detected` and `modelyard.performance.degraded`
(see prefect.yaml), or by hand. A promotion moves the `champion` alias, and the registry event
takes it from there: the deploy flow rolls the new version out with the model's strategy.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from modelyard.settings import get_settings
from tasks.audit import record_audit_event
from tasks.retraining import claim_retrain, labelled_traffic, release_retrain, training_frame


@task(name="claim-retrain", cache_policy=NO_CACHE)
def claim_task(model: str, cooldown_s: float):
    return claim_retrain(get_settings(), model, cooldown_s, str(runtime.flow_run.id or "local"))


@task(name="champion-spec", cache_policy=NO_CACHE)
def champion_spec(model: str):
    from tasks.registry import CHAMPION, alias_version, tracking_client, version_spec

    client = tracking_client(get_settings())
    version = alias_version(client, model, CHAMPION)
    if version is None:
        raise ValueError(f"{model} has no champion to retrain")
    spec = version_spec(client, model, version)
    if spec is None:
        raise ValueError(f"{model} v{version} carries no spec to retrain from")
    spec_dir = client.get_model_version(model, version).tags.get("modelyard.spec_dir")
    return spec.model_copy(update={"base_dir": Path(spec_dir) if spec_dir else Path(".")}), version


@task(name="fresh-training-data", cache_policy=NO_CACHE)
def fresh_data_task(spec) -> dict:
    """The spec's source data plus labelled traffic, written where the pipeline reads it."""
    from tasks import data as data_ops
    from tasks.monitoring import labels_location, read_labels

    settings = get_settings()
    source = data_ops.load_source(spec.data, spec.base_dir)
    traffic = labelled_traffic(settings, spec, read_labels(labels_location(settings, spec), spec.data.target)) \
        if spec.retrain.include_traffic else None
    if traffic is None or len(traffic) < spec.retrain.min_labelled_rows:
        traffic_rows, used, frame = 0 if traffic is None else len(traffic), 0, source
    else:
        traffic_rows = used = len(traffic)
        frame = training_frame(spec, source, traffic)
    out_dir = settings.state_dir / "retrain" / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / "training.parquet"
    frame.to_parquet(data_path, index=False)
    spec_path = out_dir / "spec.yaml"
    raw = spec.model_dump(mode="json")
    # The written spec lives elsewhere: its relative paths become absolute.
    if spec.monitoring.labels:
        raw["monitoring"]["labels"] = str(labels_location(settings, spec))
    if ":" not in spec.data.source and not Path(spec.data.source).is_absolute():
        raw["data"]["source"] = str((spec.base_dir / spec.data.source).resolve())
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"data_path": str(data_path), "spec_path": str(spec_path), "source_rows": len(source),
            "labelled_traffic_rows": traffic_rows, "used_traffic_rows": used}


@flow(name="retrain", log_prints=True)
def retrain(model: str, reason: str = "manual", cooldown_s: float | None = None) -> dict:
    """Retrain ``model`` once (claiming it first); promote only a version that beats the champion."""
    from flows.pipeline import model_pipeline

    logger = get_run_logger()
    spec, champion = champion_spec(model)
    cooldown = spec.retrain.cooldown_s if cooldown_s is None else cooldown_s
    if reason != "manual" and not spec.retrain.automatic:
        why = "automatic retraining is off for this model (retrain.automatic: false)"
        record_audit_event("retrain.skipped", model, {"reason": reason, "why": why})
        return {"model": model, "retrained": False, "why": why}
    claim = claim_task(model, cooldown)
    if not claim.granted:
        record_audit_event("retrain.skipped", model, {"reason": reason, "why": claim.reason})
        logger.info("retrain of %s skipped: %s", model, claim.reason)
        return {"model": model, "retrained": False, "why": claim.reason}
    outcome = "failed"
    try:
        record_audit_event("retrain.started", model, {"reason": reason, "champion": champion})
        data = fresh_data_task(spec)
        result = model_pipeline(data["spec_path"], data["data_path"], promote_if_better=True)
        promoted = result["champion"] == result["version"] and result["passed"]
        outcome = "promoted" if promoted else "kept champion"
        record_audit_event("retrain.finished", f"{model}/{result['version']}",
                           {"reason": reason, "outcome": outcome, "previous_champion": champion,
                            "decision": result["reasons"], **{k: v for k, v in data.items() if k.endswith("rows")}})
        if promoted:
            print(f"{model}: v{result['version']} beat v{champion} and is the new champion; the deploy flow takes over")
        else:
            print(f"{model}: v{result['version']} did not beat v{champion}; champion v{champion} stays "
                  f"({'; '.join(result['reasons'])})")
        return {"model": model, "retrained": True, "version": result["version"], "outcome": outcome, **data}
    finally:
        release_retrain(get_settings(), model, outcome)
