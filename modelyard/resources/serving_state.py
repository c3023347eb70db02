"""What serves each model, what served before, what was refused, which replicas each running
version has, and the per-model rollout lock.

One typed store over files under ``<state_dir>/serving``: strategies write it when a switch is
proven, the reconciler and the monitor read it. Writes are atomic renames, so a reader never
sees half a record; the lock is an flock, so it holds across processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

HISTORY_LENGTH = 50


class ActiveRecord(TypedDict):
    version: str
    endpoint: str
    since: float


class HistoryEntry(TypedDict):
    version: str
    since: float
    strategy: str


class ReplicaRecord(TypedDict):
    """One replica of a running version: where it answers, and the target's handle on it (a
    supervisord program, a container name)."""

    index: int
    url: str
    port: int
    socket: str | None
    handle: str


class VersionReplicas(TypedDict):
    target: str
    replicas: list[ReplicaRecord]


class ModelBusy(RuntimeError):
    """Another rollout of the model held its lock for longer than the caller would wait."""


class ServingState:
    """The serving-state store of one stack (``state_dir``)."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "serving"

    def _path(self, model: str, kind: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f"{model}.{kind}"

    def _read(self, model: str, kind: str, empty):
        try:
            return json.loads(self._path(model, kind).read_text())
        except (FileNotFoundError, ValueError):
            return empty

    def _write(self, model: str, kind: str, value) -> None:
        path = self._path(model, kind)
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(json.dumps(value))
        os.replace(staged, path)  # readers never see half a file

    # --- what serves -------------------------------------------------------------------------
    def active_record(self, model: str) -> ActiveRecord | None:
        """What serves the model's stable endpoint now."""
        record = self._read(model, "active.json", None)
        return record if isinstance(record, dict) and "version" in record else None

    def active_version(self, model: str) -> str | None:
        record = self.active_record(model)
        return record["version"] if record else None

    def wait_active(self, model: str, version: str, timeout_s: float, poll_s: float = 1.0) -> ActiveRecord | None:
        """The active record once ``version`` serves the model, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.active_record(model)
            if record is not None and record["version"] == version:
                return record
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def served_models(self) -> list[str]:
        """Models with an active record: what should serve (and come back after a restart)."""
        if not self.directory.is_dir():
            return []
        return sorted(name for name in (path.name.removesuffix(".active.json")
                                        for path in self.directory.glob("*.active.json"))
                      if self.active_record(name) is not None)

    def history(self, model: str) -> list[HistoryEntry]:
        """Every version that became active, oldest first."""
        return self._read(model, "history.json", [])

    def served_since(self, model: str, version: str) -> float | None:
        """When ``version`` last became active (None if it never did)."""
        since = [entry["since"] for entry in self.history(model) if entry["version"] == version]
        return since[-1] if since else None

    def record_active(self, model: str, version: str, url: str, strategy: str) -> None:
        """``version`` now serves at ``url`` (called only once the switch is proven)."""
        now = time.time()
        self._write(model, "active.json", {"version": version, "endpoint": url, "since": now})
        entries = self.history(model) + [{"version": version, "since": now, "strategy": strategy}]
        self._write(model, "history.json", entries[-HISTORY_LENGTH:])

    # --- what was refused --------------------------------------------------------------------
    def refused_versions(self, model: str) -> dict[str, str]:
        """Versions whose rollout failed (version → reason): the reconciler does not retry them."""
        return self._read(model, "refused.json", {})

    def record_refused(self, model: str, version: str, reason: str) -> None:
        self._write(model, "refused.json", self.refused_versions(model) | {version: reason[:500]})

    def handled_versions(self, model: str) -> set[str]:
        """Versions the deploy path already dealt with: served once, or refused."""
        return set(self.refused_versions(model)) | {entry["version"] for entry in self.history(model)}

    # --- the replicas of running versions -----------------------------------------------------
    def replicas(self, model: str) -> dict[str, VersionReplicas]:
        """Every running version of the model (version → its target and replicas), as the
        targets recorded them when they started it."""
        return self._read(model, "replicas.json", {})

    def record_replicas(self, model: str, version: str, target: str, replicas: list[ReplicaRecord]) -> None:
        with self._file_lock(model, "replicas"):
            self._write(model, "replicas.json", self.replicas(model) | {version: {"target": target, "replicas": replicas}})

    def forget_replicas(self, model: str, version: str) -> None:
        with self._file_lock(model, "replicas"):
            self._write(model, "replicas.json", {v: r for v, r in self.replicas(model).items() if v != version})

    def replicated_models(self) -> list[str]:
        """Models with at least one running version recorded."""
        if not self.directory.is_dir():
            return []
        return sorted(path.name.removesuffix(".replicas.json") for path in self.directory.glob("*.replicas.json")
                      if self._read(path.name.removesuffix(".replicas.json"), "replicas.json", {}))

    @contextmanager
    def _file_lock(self, model: str, kind: str) -> Iterator[None]:
        """A read-modify-write of one file, one process at a time."""
        with open(self._path(model, f"{kind}.lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- one rollout per model at a time ------------------------------------------------------
    @contextmanager
    def lock(self, model: str, timeout_s: float = 900) -> Iterator[None]:
        """One rollout per model at a time, across processes (an event and the reconciler may race)."""
        with open(self._path(model, "lock"), "a+") as handle:
            deadline = time.monotonic() + timeout_s
            while not _try_lock(handle):
                if time.monotonic() > deadline:
                    raise ModelBusy(f"another rollout of {model} held the lock for {timeout_s:.0f} s")
                time.sleep(0.5)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def rollout_in_progress(self, model: str) -> bool:
        """Whether some process holds the model's rollout lock now (probed without waiting)."""
        path = self.directory / f"{model}.lock"
        if not path.exists():
            return False
        with open(path, "a+") as handle:
            if not _try_lock(handle):
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
