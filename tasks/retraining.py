"""Retraining stage logic: who may retrain now, and on what data.

Alerts arrive in bursts (every monitor window of a drifting model raises one; an automation
may fire once per event), so a retrain must *claim* its model first: one retrain per model at
a time, and at most one per cooldown window. The claim is a small JSON file changed under an
exclusive lock, so flow runs racing on one machine cannot both win.

Fresh labelled data is the model's source data plus, where delayed labels have arrived, the
traffic it served: logged inputs joined with their labels by request id. That is what the
model met in production, drift included.
"""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from deployments.server.prediction_log import inputs_frame, read_prediction_log
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

STALE_CLAIM_S = 2 * 3600  # a retrain that never released its claim (crash) stops blocking after this


@dataclass(frozen=True)
class Claim:
    granted: bool
    reason: str


def _claim_path(settings: Settings, model: str) -> Path:
    path = settings.state_dir / "retrain" / f"{model}.json"
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
    """Every logged request of the model (all versions) that has a label, as training rows."""
    if labels.empty:
        return pd.DataFrame()
    log = read_prediction_log(settings.prediction_log_dir, spec.name)
    if log.empty:
        return pd.DataFrame()
    log = log.drop_duplicates(["request_id", "row"], keep="last")
    rows = inputs_frame(log)
    rows["request_id"] = log["request_id"].astype(str).to_numpy()
    rows["__time"] = log["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return rows.merge(labels, on="request_id", how="inner")


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
