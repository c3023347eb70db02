"""The server's model cache (``resolve_model_dir``): replicas starting side by side download the
same version at once; none may see the other's half-written files (a false "tampered artifact"
refusal) or leave a half-written cache behind; nothing unsigned enters it. The registry download is
a stand-in here, of files signed with the stack's key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow.artifacts
import pytest

from deployments.server.main import IntegrityError, resolve_model_dir
from modelyard.integrity import artifact_digest
from modelyard.ledger import ledger_from_settings
from modelyard.settings import Settings
from modelyard.signing import MODEL_SIGNATURE_REFUSED, SIGNATURE_FILE, SignatureError, sign_model_dir

URI = "models:/fraud/3"
FILES = {"MLmodel": "flavors: {}\n", "model.onnx": "weights " * 1000, "conda.yaml": "name: x\n"}


def _reference(tmp_path: Path) -> Path:
    reference = tmp_path / "reference"
    reference.mkdir(exist_ok=True)
    for name, text in FILES.items():
        (reference / name).write_text(text)
    return reference


def _complete_digest(tmp_path: Path) -> str:
    return artifact_digest(_reference(tmp_path))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


@pytest.fixture
def signature(settings, tmp_path) -> bytes:
    """The registered files' signature, by the stack's key; the stand-in download ships it."""
    sign_model_dir(settings, _reference(tmp_path))
    return (_reference(tmp_path) / SIGNATURE_FILE).read_bytes()


@pytest.fixture
def downloads(monkeypatch, signature) -> list[Path]:
    """A slow stand-in download (MLmodel first, the weights and signature 0.3 s later), recording
    where it wrote."""
    calls: list[Path] = []

    def download(artifact_uri: str, dst_path: str) -> str:
        assert artifact_uri == URI
        calls.append(Path(dst_path))
        (Path(dst_path) / "MLmodel").write_text(FILES["MLmodel"])
        time.sleep(0.3)
        for name in ("model.onnx", "conda.yaml"):
            (Path(dst_path) / name).write_text(FILES[name])
        (Path(dst_path) / SIGNATURE_FILE).write_bytes(signature)
        return dst_path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    return calls


def test_replicas_downloading_at_once_each_get_the_complete_directory_and_no_partial_one_is_ever_visible(
        tmp_path, settings, downloads):
    expected = _complete_digest(tmp_path)
    target = settings.state_dir / "models" / "fraud-3"
    start = threading.Barrier(3)
    results: dict[int, Path | Exception] = {}
    seen_partial = []

    def replica(n: int) -> None:
        start.wait()
        try:
            results[n] = resolve_model_dir(URI, settings, expected)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results[n] = error

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        if target.exists() and artifact_digest(target) != expected:
            seen_partial.append(sorted(p.name for p in target.iterdir()))
        time.sleep(0.01)
    assert results == {0: target, 1: target}
    assert len(downloads) == 2 and target not in downloads  # each into its own directory
    assert seen_partial == []
    assert artifact_digest(target) == expected
    assert [p.name for p in target.parent.iterdir()] == ["fraud-3"]  # no staging directory left


def test_a_cached_version_is_not_downloaded_again(tmp_path, settings, downloads):
    first = resolve_model_dir(URI, settings)
    assert resolve_model_dir(URI, settings, _complete_digest(tmp_path)) == first
    assert len(downloads) == 1


def test_a_download_that_hashes_otherwise_is_refused_and_not_cached(tmp_path, settings, downloads):
    with pytest.raises(IntegrityError, match="tampered"):
        resolve_model_dir(URI, settings, "0" * 64)
    assert list((settings.state_dir / "models").iterdir()) == []


def test_a_half_written_cache_left_by_an_older_version_is_replaced(tmp_path, settings, downloads):
    partial = settings.state_dir / "models" / "fraud-3"
    partial.mkdir(parents=True)
    (partial / "model.onnx").write_text("weig")
    assert resolve_model_dir(URI, settings, _complete_digest(tmp_path)) == partial
    assert artifact_digest(partial) == _complete_digest(tmp_path)


def test_an_unsigned_download_is_refused_recorded_and_not_cached(tmp_path, settings, downloads, monkeypatch):
    original = mlflow.artifacts.download_artifacts

    def unsigned(artifact_uri: str, dst_path: str) -> str:
        original(artifact_uri, dst_path)
        (Path(dst_path) / SIGNATURE_FILE).unlink()
        return dst_path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", unsigned)
    # The recorded digest is right (whoever registered it computed it): only the signature is missing.
    reference = _reference(tmp_path)
    (reference / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match=r"fraud/3: it is not signed"):
        resolve_model_dir(URI, settings, artifact_digest(reference), actor="test")
    assert list((settings.state_dir / "models").iterdir()) == []
    refused = ledger_from_settings(settings).records(subject="fraud/3")
    assert [(r["action"], r["actor"]) for r in refused] == [(MODEL_SIGNATURE_REFUSED, "test")]
    assert "not signed" in refused[0]["details"]["reason"]


def test_a_cached_version_tampered_after_download_is_refused(tmp_path, settings, downloads):
    cached = resolve_model_dir(URI, settings)
    (cached / "model.onnx").write_text("other weights")
    with pytest.raises(SignatureError, match="changed: model.onnx"):
        resolve_model_dir(URI, settings)
