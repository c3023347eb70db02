"""Run the inference server for one model version: download, verify, load, warm, serve.

Verified twice over before anything is deserialised: the files hash to the sha256 recorded at
registration, and their ``model-signing`` signature verifies against a trusted key."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from modelyard.catalog import TAG_ARTIFACT_SHA256
from modelyard.integrity import artifact_digest
from modelyard.settings import Settings
from modelyard.signing import MODEL_SIGNATURE_REFUSED, SignatureError, verify_model_dir


class IntegrityError(ValueError):
    """The model files are not the ones that were registered: refuse to serve them."""


def registered_digest(model: str, settings: Settings) -> tuple[str, str, str | None]:
    """(name, version, recorded artifact sha256) of a ``models:/name/version`` or ``@alias`` URI."""
    from modelyard.resources.registry import registry_client

    client = registry_client(settings)
    reference = model.removeprefix("models:/").strip("/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = reference.rsplit("/", 1)
        version = client.get_model_version(name, number)
    return version.name, str(version.version), version.tags.get(TAG_ARTIFACT_SHA256)


def verify_integrity(loaded_digest: str, expected: str | None, model: str) -> None:
    if expected is None:
        raise IntegrityError(f"{model} has no recorded artifact sha256 ({TAG_ARTIFACT_SHA256}): refusing to serve")
    if loaded_digest != expected:
        raise IntegrityError(f"{model}: the files hash to {loaded_digest[:16]}…, the registry recorded "
                             f"{expected[:16]}… at registration: refusing to serve a tampered artifact")


def _current_actor() -> str:
    """Who loads a model, as the ledger names it: a flow run on the worker, else this server."""
    try:
        from modelyard.audit import flow_actor

        actor = flow_actor()
    except Exception:  # noqa: BLE001 - no Prefect in a model image
        return "server"
    return actor if actor != "cli" else "server"


def record_refusal(settings: Settings, error: SignatureError, subject: str, actor: str | None = None) -> None:
    """Put a refused load into the ledger. A server without the ledger (a container) still
    refuses; the reason is then on its stderr, and its target reports the failed start."""
    from modelyard.ledger import ledger_from_settings

    try:
        ledger_from_settings(settings, sign=False).append(actor or _current_actor(), MODEL_SIGNATURE_REFUSED, subject,
                                              {"reason": error.reason})
    except Exception as failure:  # noqa: BLE001 - recording must never turn a refusal into a load
        print(f"modelyard: could not record the refusal of {subject} in the ledger: {failure}", file=sys.stderr)


def verify_signature(settings: Settings, model_dir: Path, subject: str, actor: str | None = None):
    """``verify_model_dir``, recording a refusal in the ledger before raising it."""
    try:
        return verify_model_dir(settings, model_dir, subject)
    except SignatureError as error:
        record_refusal(settings, error, subject, actor)
        raise


def resolve_model_dir(model: str, settings: Settings, expected_sha256: str | None = None,
                      actor: str | None = None) -> Path:
    """A local directory of the model: ``model`` itself if it is one, else a registry download
    (``models:/name/version``) cached under the state dir.

    Replicas starting side by side share the cache, so a download never writes there: each goes
    into its own directory beside it, is checked against ``expected_sha256`` (when given), and is
    renamed into place whole. A process that loses the race uses the winner's directory; a
    reader thus never hashes a half-written model (a false "tampered artifact").

    A registry version, downloaded or cached, is returned only once its signature verified
    (SignatureError otherwise, recorded in the ledger as ``actor``): an unsigned download is
    never cached. A plain directory is returned as it is; the runtime verifies it before loading."""
    path = Path(model)
    if path.is_dir():
        return path
    if not model.startswith("models:/"):
        raise ValueError(f"'{model}' is neither a model directory nor a models:/ URI")
    reference = model.removeprefix("models:/").strip("/")
    name_version = reference.replace("/", "-").replace("@", "-")
    subject = reference.replace("@", "/")
    target = settings.state_dir / "models" / name_version
    if (target / "MLmodel").exists():
        if expected_sha256 is not None:
            verify_integrity(artifact_digest(target), expected_sha256, model)
        verify_signature(settings, target, subject, actor)
        return target
    import shutil
    import tempfile

    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{name_version}.", dir=target.parent))
    staged.chmod(0o755)  # as a plain mkdir would make it (mkdtemp's is private)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(staged))
        if not (staged / "MLmodel").exists():
            raise ValueError(f"{model}: the download has no MLmodel file")
        if expected_sha256 is not None:
            verify_integrity(artifact_digest(staged), expected_sha256, model)
        verify_signature(settings, staged, subject, actor)
        if target.exists() and not (target / "MLmodel").exists():
            shutil.rmtree(target, ignore_errors=True)  # a partial download of an older modelyard
        try:
            staged.rename(target)
        except OSError:
            if not (target / "MLmodel").exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def record_prune(settings: Settings, model: str, actor: str):
    """What a pruner calls before it deletes old prediction log partitions: a ledger record of
    them, by ``actor`` (a server, or the host pruning for its containers)."""
    from modelyard.catalog import Action
    from modelyard.ledger import ledger_from_settings

    ledger = ledger_from_settings(settings, sign=False)

    def record(pruned_version: str, details: dict) -> None:
        ledger.append(actor, Action.PREDICTION_LOG_PRUNED, f"{model}/{pruned_version}", details)

    return record


def load_runtime(settings: Settings, model_dir: Path, model: str = "", version: str = "",
                 digest: str | None = None, actor: str | None = None):
    """The model of ``model_dir`` loaded for predictions (``ModelRuntime``), which verifies its
    signature before reading any file; a refusal is recorded in the ledger, then raised."""
    from deployments.server.model_runtime import ModelRuntime

    try:
        return ModelRuntime(model_dir, settings, model=model, version=version, artifact_sha256=digest)
    except SignatureError as error:
        record_refusal(settings, error, f"{model or model_dir.name}/{version or '?'}", actor)
        raise


def build_app(model_dir: Path, settings: Settings, model: str = "", version: str = "", log_predictions: bool = True,
              expected_digest: str | None = None, verify: bool = False):
    from deployments.server.app import InferenceApp, ServerConfig
    from deployments.server.prediction_log import PredictionLog

    token = settings.api_token.get_secret_value() if settings.api_token else None
    if token is None and not settings.serve_anonymous:
        raise ValueError("no MODELYARD_API_TOKEN is set: set one, or MODELYARD_SERVE_ANONYMOUS=true to serve "
                         "without authentication (demo only)")
    # Hash and verify the signature before loading anything (the runtime verifies it first thing).
    digest = artifact_digest(model_dir)
    if verify:
        verify_integrity(digest, expected_digest, f"{model or model_dir.name} v{version}")
    runtime = load_runtime(settings, model_dir, model, version, digest,
                           actor=f"server:{model or model_dir.name}/{version or '?'}")
    runtime.warm_up()
    log = None
    if log_predictions:
        retention_days = settings.prediction_log_retention_days
        log = PredictionLog(settings.prediction_log_dir, runtime.info.model, runtime.info.version,
                            max_queue=settings.prediction_log_queue, max_queue_bytes=settings.prediction_log_queue_bytes,
                            sample_rate=settings.prediction_log_sample_rate, batch_rows=1000,
                            retention_s=retention_days * 86400 if retention_days > 0 else None,
                            on_prune=record_prune(settings, runtime.info.model,
                                                  f"server:{runtime.info.model}/{runtime.info.version}"))
    config = ServerConfig(api_token=token, admin_token=settings.admin_secret(), max_batch=settings.serve_max_batch,
                          max_wait_ms=settings.serve_max_wait_ms, max_body_bytes=settings.serve_max_body_bytes,
                          max_rows=settings.serve_max_rows)
    app = InferenceApp(runtime, config, log)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic GC,
    # whose full passes over the model and libraries otherwise stall requests (p99).
    gc.collect()
    gc.freeze()
    # Requests allocate few cycles; collect the young generation rarely, so a queue of logged
    # requests does not trigger frequent scans either.
    gc.set_threshold(100_000, 50, 100)
    return app


def _listen_sockets(host: str, port: int, uds: str | None) -> list:
    """A TCP socket (health checks, direct clients) and, if asked, a unix socket for the router.

    nginx reaches versions through unix-socket slots it connects to per request, so that a
    traffic switch is an atomic symlink swap instead of a reload (see deployments/traffic)."""
    import os
    import socket

    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    sockets = [tcp]
    if uds:
        path = Path(uds)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(path))
        os.chmod(path, 0o666)
        sockets.append(unix)
    for sock in sockets:
        sock.listen(2048)
        sock.set_inheritable(True)
    return sockets


def serve(model: str, settings: Settings, port: int, host: str | None = None, version: str = "",
          log_predictions: bool = True, uds: str | None = None, expected_digest: str | None = None,
          name: str = "") -> None:
    import uvicorn

    if model.startswith("models:/"):
        name, number, expected = registered_digest(model, settings)
        model_dir = resolve_model_dir(f"models:/{name}/{number}", settings, expected, actor=f"server:{name}/{number}")
        app = build_app(model_dir, settings, model=name, version=number, log_predictions=log_predictions,
                        expected_digest=expected, verify=True)
    else:
        # A baked model directory (a Docker image): verified against the digest recorded at
        # registration, which the image carries as a label and passes here.
        app = build_app(resolve_model_dir(model, settings), settings, model=name, version=version,
                        log_predictions=log_predictions, expected_digest=expected_digest,
                        verify=expected_digest is not None)
    sockets = _listen_sockets(host or settings.host, port, uds)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=30)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        if uds:
            Path(uds).unlink(missing_ok=True)
