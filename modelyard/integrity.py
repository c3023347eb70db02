"""Content digests of model artifacts, so that what was registered is what gets served: the
sha256 of a manifest of every file's relative path and sha256, whatever the store's layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Written by MLflow into a download according to the URI used (name/version), not model content.
NOT_CONTENT = frozenset({"registered_model_meta"})


def manifest(root: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every model file under ``root``, sorted by path."""
    root = Path(root)
    return sorted(
        (path.relative_to(root).as_posix(), file_sha256(path))
        for path in root.rglob("*") if path.is_file() and path.name not in NOT_CONTENT
    )


def artifact_digest(root: Path) -> str:
    """sha256 of the manifest of ``root``: changes if any file is added, removed or altered."""
    lines = "".join(f"{rel}\0{sha}\n" for rel, sha in manifest(root))
    return hashlib.sha256(lines.encode()).hexdigest()
