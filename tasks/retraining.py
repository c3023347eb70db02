"""Retraining stage logic: who may retrain now (one retrain per model at a time, at most one
per cooldown, claimed under a lock since alerts come in bursts), and on what data (the source
plus the labelled traffic the model served, drift included)."""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from prefect import runtime, task
from prefect.cache_policies import NO_CACHE

from deployments.server.prediction_log import inputs_frame, read_prediction_log
from modelyard.audit import append_audit_record
from modelyard.catalog import CHAMPION, TAG_SPEC_DIR, Action
from modelyard.environments import split_environment
from modelyard.names import check_model_name
from modelyard.resources import get_resources
from modelyard.resources.registry import INFRA_RETRIES, alias_version, version_spec
from modelyard.settings import Settings
from modelyard.spec import ModelSpec
from tasks.monitoring import join_labels, labels_location, read_labels

MANUAL_REASON = "manual"  # a retrain asked for by hand, not by an alert
STALE_CLAIM_S = 2 * 3600  # a retrain that never released its claim (crash) stops blocking after this


@dataclass(frozen=True)
class Claim:
    granted: bool
    reason: str


def _claim_path(settings: Settings, model: str) -> Path:
    path = settings.state_dir / "retrain" / f"{check_model_name(model)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class _LockedState:
    """The claim file's JSON, read under an exclusive lock held until ``save`` or the end of the
    ``with`` block: read-modify-write without a race between flow runs."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> _LockedState:
        self._handle = open(self._path, "a+")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._handle.seek(0)
        try:
            self.state: dict = json.loads(self._handle.read() or "{}")
        except ValueError:
            self.state = {}
        return self

    def save(self, state: dict) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(state))
        self._handle.flush()

    def __exit__(self, *exc_info) -> None:
        self._handle.close()


def claim_retrain(settings: Settings, model: str, cooldown_s: float, run_id: str, now: float | None = None) -> Claim:
    """Take the model's retrain slot, or say why not (one running, or within the cooldown)."""
    now = time.time() if now is None else now
    with _LockedState(_claim_path(settings, model)) as claim:
        started = float(claim.state.get("started_at", 0))
        if claim.state.get("running") and now - started < STALE_CLAIM_S:
            return Claim(False, f"a retrain of {model} is already running (run {claim.state.get('run_id')})")
        if now - started < cooldown_s:
            return Claim(False, f"{model} was retrained {now - started:.0f} s ago; cooldown is {cooldown_s:.0f} s")
        claim.save({"running": True, "started_at": now, "run_id": run_id})
        return Claim(True, "claimed")


def release_retrain(settings: Settings, model: str, outcome: str) -> None:
    """Free the slot; the cooldown keeps counting from the claim's start."""
    with _LockedState(_claim_path(settings, model)) as claim:
        claim.save(claim.state | {"running": False, "finished_at": time.time(), "outcome": outcome})


def labelled_traffic(settings: Settings, spec: ModelSpec, labels: pd.DataFrame) -> pd.DataFrame:
    """Every logged prediction of the model (all versions) that has a label, as training rows:
    joined by the server's prediction id (see ``join_labels``), never by the client's id."""
    if labels.empty:
        return pd.DataFrame()
    log = join_labels(read_prediction_log(settings.prediction_log_dir, spec.name), labels, spec.data.target)
    if log.empty:
        return pd.DataFrame()
    rows = inputs_frame(log)
    rows["request_id"] = log["request_id"].astype(str).to_numpy()
    rows["__time"] = log["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    rows[spec.data.target] = log[spec.data.target].to_numpy()
    return rows


def training_frame(spec: ModelSpec, source: pd.DataFrame, traffic: pd.DataFrame) -> pd.DataFrame:
    """Source rows and labelled traffic in the source's columns. Columns the server never
    sees (ids, the split's time column) are filled from the log: the request time for the time
    column — traffic is newer than the source — and the request id otherwise."""
    if traffic.empty:
        return source.reset_index(drop=True)
    fill = pd.DataFrame(index=traffic.index)
    for column in source.columns:
        if column in traffic.columns:
            fill[column] = traffic[column]
        elif column == spec.data.split.time_column:
            fill[column] = traffic["__time"]
        else:
            fill[column] = traffic["request_id"]
    for column in source.columns:
        if column in traffic.columns and source[column].dtype != fill[column].dtype:
            try:
                fill[column] = fill[column].astype(source[column].dtype)
            except (TypeError, ValueError):
                pass
    return pd.concat([source, fill[source.columns]], ignore_index=True)


def fresh_training_data(settings: Settings, spec: ModelSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    """The spec's source data plus its labelled traffic (once at least ``min_labelled_rows`` have
    arrived), and how many rows of each there were and were used."""
    from tasks import data as data_ops

    source = data_ops.load_source(spec.data, spec.base_dir)
    traffic = labelled_traffic(settings, spec, read_labels(labels_location(settings, spec), spec.data.target)) \
        if spec.retrain.include_traffic else None
    if traffic is None or len(traffic) < spec.retrain.min_labelled_rows:
        traffic_rows, used, frame = 0 if traffic is None else len(traffic), 0, source
    else:
        traffic_rows = used = len(traffic)
        frame = training_frame(spec, source, traffic)
    return frame, {"source_rows": len(source), "labelled_traffic_rows": traffic_rows, "used_traffic_rows": used}


def retrain_spec(settings: Settings, spec: ModelSpec) -> dict[str, Any]:
    """The spec as the retrain writes it elsewhere: its relative paths made absolute."""
    raw = spec.model_dump(mode="json")
    if spec.monitoring.labels:
        raw["monitoring"]["labels"] = str(labels_location(settings, spec))
    if ":" not in spec.data.source and not Path(spec.data.source).is_absolute():
        raw["data"]["source"] = str((spec.base_dir / spec.data.source).resolve())
    return raw


def write_retrain_inputs(settings: Settings, spec: ModelSpec, frame: pd.DataFrame) -> dict[str, str]:
    """The training frame and its spec, written where the model pipeline reads them."""
    out_dir = settings.state_dir / "retrain" / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path, spec_path = out_dir / "training.parquet", out_dir / "spec.yaml"
    frame.to_parquet(data_path, index=False)
    spec_path.write_text(yaml.safe_dump(retrain_spec(settings, spec), sort_keys=False))
    return {"data_path": str(data_path), "spec_path": str(spec_path)}


def retrain_outcome(result: dict[str, Any]) -> str:
    """What a retrain's pipeline run came to: the new version promoted, or the champion kept."""
    return "promoted" if result["passed"] and result["champion"] == result["version"] else "kept champion"


def dev_model(model: str) -> str:
    """The registered model a retrain of ``model`` (any environment's) trains into: dev's."""
    return split_environment(check_model_name(model))[0]


# --- Prefect task wrappers ----------------------------------------------------------------------

@task(name="champion-spec", **INFRA_RETRIES)
def champion_spec(model: str) -> tuple[ModelSpec, str]:
    """The spec the dev champion was built from (its relative paths where they were), and its
    version. An alert on an environment's model (``<name>-staging``) retrains the dev model:
    versions are trained in dev only and reach the other environments by promotion."""
    client = get_resources().registry
    model = dev_model(model)
    version = alias_version(client, model, CHAMPION)
    if version is None:
        raise ValueError(f"{model} has no champion to retrain")
    spec = version_spec(client, model, version)
    if spec is None:
        raise ValueError(f"{model} v{version} carries no spec to retrain from")
    spec_dir = client.get_model_version(model, version).tags.get(TAG_SPEC_DIR)
    return spec.model_copy(update={"base_dir": Path(spec_dir) if spec_dir else Path(".")}), version


@task(name="claim-retrain", cache_policy=NO_CACHE)
def claim_task(spec: ModelSpec, reason: str, cooldown_s: float | None) -> Claim:
    """The model's retrain slot, unless an alert asks while automatic retraining is off for it
    (``cooldown_s``: the spec's unless given)."""
    if reason != MANUAL_REASON and not spec.retrain.automatic:
        return Claim(False, "automatic retraining is off for this model (retrain.automatic: false)")
    cooldown = spec.retrain.cooldown_s if cooldown_s is None else cooldown_s
    return claim_retrain(get_resources().settings, spec.name, cooldown, str(runtime.flow_run.id or "local"))


@task(name="release-retrain", cache_policy=NO_CACHE)
def release_task(model: str, outcome: str) -> None:
    release_retrain(get_resources().settings, model, outcome)


@task(name="fresh-training-data", cache_policy=NO_CACHE)
def fresh_data_task(spec: ModelSpec) -> dict[str, Any]:
    """The spec's source data plus labelled traffic, written where the pipeline reads it."""
    settings = get_resources().settings
    frame, rows = fresh_training_data(settings, spec)
    return write_retrain_inputs(settings, spec, frame) | rows


@task(name="record-retrain-outcome", cache_policy=NO_CACHE)
def record_outcome(model: str, reason: str, champion: str, result: dict[str, Any], data: dict[str, Any]) -> str:
    """``retrain.finished`` in the ledger, with the decision and the rows used; returns the outcome."""
    outcome = retrain_outcome(result)
    append_audit_record(Action.RETRAIN_FINISHED, f"{model}/{result['version']}",
                        {"reason": reason, "outcome": outcome, "previous_champion": champion,
                         "decision": result["reasons"], **{k: v for k, v in data.items() if k.endswith("rows")}})
    return outcome
