"""Signed models: every registered version's files are signed with OpenSSF ``model-signing``
(an elliptic-curve key pair, offline), and nothing is loaded before its signature verifies.

The signature is ``model.sig`` at the root of the MLflow model directory: a Sigstore bundle of a
manifest of every file's sha256, the signature file itself and MLflow's per-download
``registered_model_meta`` excepted. Verification accepts a signature by any public key in the
trusted-keys directory, so a version signed before a key rotation stays loadable for as long as
the old public key stays there (docs/security/model-signing.md). It fails closed: no signature,
a bad one, an untrusted key, no trusted key at all, or any error while checking refuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from modelyard.settings import Settings

SIGNATURE_FILE = "model.sig"
# Not model content, so not signed: the signature itself, and what MLflow writes into a download
# according to the URI used (name/version). Only at the model directory's root.
UNSIGNED_FILES = (SIGNATURE_FILE, "registered_model_meta")
PRIVATE_KEY_FILE = "model-signing.key"
PUBLIC_KEY_SUFFIX = ".pub"
# The ledger action of a refused load (to move to modelyard.catalog.Action as MODEL_SIGNATURE_REFUSED).
MODEL_SIGNATURE_REFUSED = "model.signature_refused"
# Registry tags of a signed version (lineage).
TAG_SIGNER = "modelyard.signature.signer"
TAG_SIGNATURE_SHA256 = "modelyard.signature.sha256"


class SignatureError(ValueError):
    """A model is refused: its signature is missing, invalid, or by no trusted key."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}: refusing to load it")
        self.what = what
        self.reason = reason


@dataclass(frozen=True)
class SignatureInfo:
    """Who signed a model directory, and which signature vouches for it."""

    signer: str  # sha256 (hex) of the signing public key's DER SubjectPublicKeyInfo
    key_file: str  # the trusted key's file name
    signature_sha256: str  # sha256 of model.sig
    seconds: float  # how long signing or verifying took

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The registry tags that record this signature on a version."""
        return {TAG_SIGNER: self.signer, TAG_SIGNATURE_SHA256: self.signature_sha256}


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    fingerprint: str  # sha256 of the DER public key: the signer identity modelyard reports
    hint: str  # sha256 of the PEM public key: what model-signing writes into a bundle


# -- keys --------------------------------------------------------------------------------------


def trusted_keys_dir(settings: Settings) -> Path:
    """Where the public keys whose signatures are trusted live (``*.pub``, PEM)."""
    return settings.trusted_model_keys_dir or settings.state_dir / "keys" / "trusted"


def signing_key_path(settings: Settings) -> Path:
    """The signer's private key: the configured one, else the one generated in the credentials dir."""
    return settings.model_signing_key or settings.credentials_dir / PRIVATE_KEY_FILE


def _public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(public_key) -> str:
    """sha256 (hex) of a public key's DER SubjectPublicKeyInfo: the signer identity."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _new_private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), None)


def ensure_signing_key(settings: Settings) -> TrustedKey:
    """The signer's key pair, made at first use: the private key (0600, readable only by the
    signer) in the credentials dir unless one is configured, and its public key published in the
    trusted-keys dir. Every process of a stack finds the same key."""
    path = signing_key_path(settings)
    if settings.model_signing_key is None:
        settings.credential(PRIVATE_KEY_FILE, _new_private_key_pem)
    elif not path.is_file():
        raise SignatureError(f"model signing key {path}", "the configured key does not exist")
    try:
        public_key = _load_private_key(path).public_key()
    except (ValueError, TypeError) as error:
        raise SignatureError(f"model signing key {path}", f"not an unencrypted PEM private key ({error})") from error
    fingerprint = key_fingerprint(public_key)
    return publish_public_key(settings, public_key, fingerprint)


def publish_public_key(settings: Settings, public_key, fingerprint: str | None = None) -> TrustedKey:
    """Put ``public_key`` into the trusted-keys dir (once, written whole, world-readable)."""
    fingerprint = fingerprint or key_fingerprint(public_key)
    folder = trusted_keys_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    pem = _public_pem(public_key)
    target = folder / f"{fingerprint[:16]}{PUBLIC_KEY_SUFFIX}"
    if not target.exists():
        draft = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
        draft.write_bytes(pem)
        draft.chmod(0o644)
        draft.replace(target)
    return TrustedKey(target, fingerprint, hashlib.sha256(pem).hexdigest())


def trusted_keys(settings: Settings) -> tuple[list[TrustedKey], list[str]]:
    """The trusted public keys, and the files in the trusted-keys dir that are no usable key."""
    from cryptography.hazmat.primitives import serialization

    keys, unusable = [], []
    folder = trusted_keys_dir(settings)
    for path in sorted(folder.glob(f"*{PUBLIC_KEY_SUFFIX}")) if folder.is_dir() else []:
        try:
            public_key = serialization.load_pem_public_key(path.read_bytes())
            pem = _public_pem(public_key)
        except (OSError, ValueError, TypeError):
            unusable.append(path.name)
            continue
        keys.append(TrustedKey(path, key_fingerprint(public_key), hashlib.sha256(pem).hexdigest()))
    return keys, unusable


# -- signing and verifying ---------------------------------------------------------------------


def _hashing_config():
    """One manifest for signing and verifying: every file's sha256, symlinks refused, only
    UNSIGNED_FILES (at the root) left out."""
    from model_signing import hashing

    return hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False) \
        .set_ignored_paths(paths=list(UNSIGNED_FILES), ignore_git_paths=False)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sign_model_dir(settings: Settings, path: Path) -> SignatureInfo:
    """Sign every file of the model directory ``path`` into ``path/model.sig`` with this stack's key."""
    from model_signing import signing

    started = time.perf_counter()
    path = Path(path)
    if not path.is_dir():
        raise SignatureError(str(path), "not a model directory, nothing to sign")
    key = ensure_signing_key(settings)
    signature = path / SIGNATURE_FILE
    signing.Config().set_hashing_config(_hashing_config()) \
        .use_elliptic_key_signer(private_key=signing_key_path(settings)).sign(path, signature)
    return SignatureInfo(key.fingerprint, key.path.name, _file_sha256(signature), time.perf_counter() - started)


def _bundle_key_hint(signature: Path, what: str) -> str | None:
    try:
        bundle = json.loads(signature.read_text())
        return bundle["verificationMaterial"]["publicKey"].get("hint") or None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SignatureError(what, f"{SIGNATURE_FILE} is not a model-signing bundle ({type(error).__name__})") from error


def verify_model_dir(settings: Settings, path: Path, what: str) -> SignatureInfo:
    """Check that the files of ``path`` are exactly what a trusted key signed; ``what`` names the
    model and version in the error. Raises SignatureError on anything but a valid signature."""
    started = time.perf_counter()
    path = Path(path)
    signature = path / SIGNATURE_FILE
    if not path.is_dir():
        raise SignatureError(what, f"{path} is not a model directory")
    if not signature.is_file():
        raise SignatureError(what, f"it is not signed (no {SIGNATURE_FILE}): a version registered outside modelyard")
    keys, unusable = trusted_keys(settings)
    if not keys:
        extra = f" ({', '.join(unusable)} unreadable)" if unusable else ""
        raise SignatureError(what, f"no trusted model-signing key in {trusted_keys_dir(settings)}{extra}")
    hint = _bundle_key_hint(signature, what)
    candidates = [k for k in keys if k.hint == hint] if hint else keys
    if not candidates:
        raise SignatureError(what, f"it is signed by a key that is not trusted (key sha256 {hint[:16]}…, "
                                   f"trusted: {', '.join(k.path.name for k in keys)})")
    try:
        from model_signing import verifying
    except ImportError as error:  # a check that cannot run refuses
        raise SignatureError(what, f"model-signing is not installed, the signature cannot be checked ({error})") from error
    reasons = []
    for key in candidates:
        try:
            verifying.Config().set_hashing_config(_hashing_config()) \
                .use_elliptic_key_verifier(public_key=key.path).verify(path, signature)
        except Exception as error:  # noqa: BLE001 - model-signing raises ValueError, InvalidSignature, protobuf errors…
            reasons.append(_reason(error))
            continue
        return SignatureInfo(key.fingerprint, key.path.name, _file_sha256(signature), time.perf_counter() - started)
    raise SignatureError(what, "the signature does not verify: " + "; ".join(reasons)[:800])


def _reason(error: Exception) -> str:
    """model-signing's error in a line: which files differ, rather than their digests' reprs."""
    text = str(error).strip() or type(error).__name__
    if text.startswith("Signature mismatch"):
        text = text.replace("\\'", "'")  # the list of differences arrives as its repr
        changed = re.findall(r"Hash mismatch for '([^']+)'", text)
        added = re.findall(r"Extra files found in model '[^']*': ([^\"'\]]+)", text)
        missing = re.findall(r"Missing files in model '[^']*': ([^\"'\]]+)", text)
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("changed", changed), ("not signed", added), ("missing", missing)) if names]
        return f"the files differ from what was signed ({'; '.join(parts) or 'manifest mismatch'})"
    if type(error).__name__ == "InvalidSignature":
        return "the signature is not valid for its manifest (forged or altered)"
    return text
