"""Lineage facts recorded on every model version: where its code, packages and data came from."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = ("scikit-learn", "numpy", "pandas", "mlflow", "prefect", "skl2onnx",
                    "onnxruntime", "great-expectations", "evidently", "modelyard")


def git_commit(project_dir: Path) -> str:
    """The project's commit, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def lock_hash(project_dir: Path) -> str:
    """sha256 of requirements.lock: the exact package set the model was built with."""
    path = project_dir / "requirements.lock"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
