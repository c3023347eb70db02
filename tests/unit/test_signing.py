"""Model signing with OpenSSF model-signing: a signed directory verifies, and anything else is
refused with a reason: a changed, added or removed file, no signature, an untrusted key, no
trusted key at all. Rotation: a version signed by the old key verifies while its public key
stays trusted, and is refused once it is removed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelyard.settings import Settings
from modelyard.signing import (
    SIGNATURE_FILE, SignatureError, ensure_signing_key, sign_model_dir, signing_key_path, trusted_keys_dir,
    verify_model_dir,
)


def _model_dir(root: Path) -> Path:
    model = root / "model"
    (model / "extra_files").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors:\n  sklearn:\n    serialization_format: skops\n")
    (model / "model.skops").write_bytes(os.urandom(4096))
    (model / "extra_files" / "model.onnx").write_bytes(os.urandom(8192))
    return model


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


@pytest.fixture
def model(tmp_path) -> Path:
    return _model_dir(tmp_path)


def test_a_signed_directory_verifies_and_names_its_signer(settings, model):
    signed = sign_model_dir(settings, model)
    assert (model / SIGNATURE_FILE).is_file()
    verified = verify_model_dir(settings, model, "fraud v1")
    assert verified.signer == signed.signer and len(verified.signer) == 64
    assert verified.signature_sha256 == signed.signature_sha256
    # MLflow writes registered_model_meta into a registry download: not model content.
    (model / "registered_model_meta").write_text("model_name: fraud\nmodel_version: '1'\n")
    assert verify_model_dir(settings, model, "fraud v1").signer == signed.signer


def test_the_private_key_is_readable_only_by_its_owner_and_the_public_key_is_published(settings, model):
    key = ensure_signing_key(settings)
    mode = stat.S_IMODE(signing_key_path(settings).stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(settings.credentials_dir.stat().st_mode) == 0o700
    assert key.path.parent == trusted_keys_dir(settings) and key.path.read_text().startswith("-----BEGIN PUBLIC KEY")
    assert ensure_signing_key(settings) == key  # the same key for every later use
    assert "PRIVATE" not in "".join(p.read_text() for p in trusted_keys_dir(settings).iterdir())


@pytest.mark.parametrize("change, reason", [
    (lambda m: (m / "model.skops").write_bytes(b"\x80\x04cos\nsystem\n"), "changed: model.skops"),
    (lambda m: (m / "extra_files" / "payload.pkl").write_bytes(b"x"), "not signed: extra_files/payload.pkl"),
    (lambda m: (m / "extra_files" / "model.onnx").unlink(), "missing: extra_files/model.onnx"),
])
def test_a_tampered_directory_is_refused_naming_the_file(settings, model, change, reason):
    sign_model_dir(settings, model)
    change(model)
    with pytest.raises(SignatureError) as refused:
        verify_model_dir(settings, model, "fraud v1")
    assert str(refused.value).startswith("fraud v1: the signature does not verify")
    assert reason in str(refused.value) and "refusing to load it" in str(refused.value)


def test_a_symlink_smuggled_into_a_signed_directory_is_refused(settings, model, tmp_path):
    sign_model_dir(settings, model)
    (tmp_path / "elsewhere").write_text("secret")
    (model / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SignatureError, match="fraud v1: the signature does not verify"):
        verify_model_dir(settings, model, "fraud v1")


def test_an_unsigned_directory_is_refused(settings, model):
    ensure_signing_key(settings)
    with pytest.raises(SignatureError, match=r"fraud v2: it is not signed \(no model.sig\)"):
        verify_model_dir(settings, model, "fraud v2")


def test_a_signature_file_that_is_not_a_bundle_is_refused(settings, model):
    ensure_signing_key(settings)
    (model / SIGNATURE_FILE).write_text("not json")
    with pytest.raises(SignatureError, match="model.sig is not a model-signing bundle"):
        verify_model_dir(settings, model, "fraud v2")


def test_a_signature_by_an_untrusted_key_is_refused(tmp_path, model):
    attacker = Settings(state_dir=tmp_path / "attacker")
    stack = Settings(state_dir=tmp_path / "stack")
    ensure_signing_key(stack)
    sign_model_dir(attacker, model)  # a valid signature, by a key the stack does not trust
    with pytest.raises(SignatureError, match="signed by a key that is not trusted"):
        verify_model_dir(stack, model, "fraud v3")


def test_a_signature_copied_onto_other_files_does_not_verify(settings, tmp_path, model):
    sign_model_dir(settings, model)
    other = _model_dir(tmp_path / "other")
    (other / SIGNATURE_FILE).write_bytes((model / SIGNATURE_FILE).read_bytes())
    with pytest.raises(SignatureError, match="changed: .*model.skops"):
        verify_model_dir(settings, other, "fraud v4")


def test_without_any_trusted_key_nothing_verifies(settings, model):
    sign_model_dir(settings, model)
    for key in trusted_keys_dir(settings).iterdir():
        key.unlink()
    with pytest.raises(SignatureError, match="no trusted model-signing key"):
        verify_model_dir(settings, model, "fraud v1")


def test_key_rotation_keeps_old_versions_verifiable_while_the_old_public_key_is_trusted(settings, tmp_path):
    old_model = _model_dir(tmp_path / "v1")
    old = sign_model_dir(settings, old_model)
    # Rotate: the private key is retired (a new one is generated at next use); the old public key stays.
    signing_key_path(settings).rename(tmp_path / "retired.key")
    new_model = _model_dir(tmp_path / "v2")
    new = sign_model_dir(settings, new_model)
    assert new.signer != old.signer
    assert len(list(trusted_keys_dir(settings).glob("*.pub"))) == 2
    assert verify_model_dir(settings, old_model, "fraud v1").signer == old.signer
    assert verify_model_dir(settings, new_model, "fraud v2").signer == new.signer
    # Revoking the old key: its versions are refused, the new key's still load.
    (trusted_keys_dir(settings) / old.key_file).unlink()
    with pytest.raises(SignatureError, match="not trusted"):
        verify_model_dir(settings, old_model, "fraud v1")
    assert verify_model_dir(settings, new_model, "fraud v2").signer == new.signer


def test_a_configured_key_signs_and_a_missing_one_refuses(tmp_path, model):
    generated = Settings(state_dir=tmp_path / "gen")
    ensure_signing_key(generated)
    configured = Settings(state_dir=tmp_path / "state", model_signing_key=signing_key_path(generated))
    signed = sign_model_dir(configured, model)
    assert signed.signer == ensure_signing_key(generated).fingerprint
    assert verify_model_dir(configured, model, "fraud v1").signer == signed.signer
    missing = Settings(state_dir=tmp_path / "state", model_signing_key=tmp_path / "nope.key")
    with pytest.raises(SignatureError, match="the configured key does not exist"):
        sign_model_dir(missing, model)



# -- what the runtime loads from a directory that verified ----------------------------------------

MARKER_CODE = "open({path!r}, 'w').write('unpickled')"


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (MARKER_CODE.format(path=str(self.marker)),))


def _saved_model(path: Path, serialization: str, **kwargs) -> Path:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.tree import DecisionTreeClassifier

    frame = pd.DataFrame({"amount": [1.0, 2.0, 3.0, 4.0]})
    model = DecisionTreeClassifier().fit(frame, [0, 1, 0, 1])
    mlflow.sklearn.save_model(model, str(path), serialization_format=serialization, pip_requirements=[],
                              signature=infer_signature(frame, model.predict(frame)), **kwargs)
    return path


def test_a_pickled_model_is_never_unpickled_even_when_signed(settings, tmp_path):
    import pickle

    from deployments.server.model_runtime import ModelRuntime

    model = _saved_model(tmp_path / "pickled", "cloudpickle")
    marker = tmp_path / "marker"
    (model / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    sign_model_dir(settings, model)  # even a trusted signer's pickle is not loaded
    with pytest.raises(ValueError, match="serialised as cloudpickle; only ONNX and skops are ever loaded"):
        ModelRuntime(model, settings, model="fraud", version="5")
    assert not marker.exists()


def test_skops_loads_only_the_types_the_signed_mlmodel_trusts(settings, tmp_path):
    import yaml

    from deployments.server.model_runtime import ModelRuntime

    model = _saved_model(tmp_path / "skops", "skops", skops_trusted_types=["sklearn.tree._tree.Tree"])
    sign_model_dir(settings, model)
    runtime = ModelRuntime(model, settings, model="fraud", version="6")
    assert runtime.info.serving_format == "pyfunc" and runtime.info.signer
    assert runtime.predict({"amount": [1.0, 2.0]}).labels.tolist() == [0, 1]
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = []
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(SignatureError, match="changed: MLmodel"):  # the list is signed
        ModelRuntime(model, settings, model="fraud", version="6")
    sign_model_dir(settings, model)  # signed as it is now: skops refuses the type it no longer trusts
    with pytest.raises(ValueError, match="skops refused to load model.skops.*sklearn.tree._tree.Tree"):
        ModelRuntime(model, settings, model="fraud", version="6")
