"""Run the inference server for one model version: download, verify, load, warm, serve."""

from __future__ import annotations

import gc
from pathlib import Path

from modelyard.settings import Settings


def resolve_model_dir(model: str, settings: Settings) -> Path:
    """A local directory of the model: ``model`` itself if it is one, else a registry download
    (``models:/name/version``) cached under the state dir."""
    path = Path(model)
    if path.is_dir():
        return path
    if not model.startswith("models:/"):
        raise ValueError(f"'{model}' is neither a model directory nor a models:/ URI")
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_url)
    name_version = model.removeprefix("models:/").strip("/").replace("/", "-").replace("@", "-")
    target = settings.state_dir / "models" / name_version
    if not (target / "MLmodel").exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(target))
    return target


def build_app(model_dir: Path, settings: Settings, model: str = "", version: str = "", log_predictions: bool = True):
    from deployments.server.app import InferenceApp, ServerConfig
    from deployments.server.model_runtime import ModelRuntime
    from deployments.server.prediction_log import PredictionLog

    token = settings.api_token.get_secret_value() if settings.api_token else None
    if token is None and not settings.serve_anonymous:
        raise ValueError("no MODELYARD_API_TOKEN is set: set one, or MODELYARD_SERVE_ANONYMOUS=true to serve "
                         "without authentication (demo only)")
    runtime = ModelRuntime(model_dir, model=model, version=version)
    runtime.warm_up()
    log = None
    if log_predictions:
        log = PredictionLog(settings.prediction_log_dir, runtime.info.model, runtime.info.version,
                            max_queue=settings.prediction_log_queue, sample_rate=settings.prediction_log_sample_rate,
                            batch_rows=1000)
    config = ServerConfig(api_token=token, max_batch=settings.serve_max_batch, max_wait_ms=settings.serve_max_wait_ms,
                          max_body_bytes=settings.serve_max_body_bytes, max_rows=settings.serve_max_rows)
    app = InferenceApp(runtime, config, log)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic GC,
    # whose full passes over the model and libraries otherwise stall requests (p99).
    gc.collect()
    gc.freeze()
    # Requests allocate few cycles; collect the young generation rarely, so a queue of logged
    # requests does not trigger frequent scans either.
    gc.set_threshold(100_000, 50, 100)
    return app


def serve(model: str, settings: Settings, port: int, host: str | None = None, version: str = "",
          log_predictions: bool = True) -> None:
    import uvicorn

    app = build_app(resolve_model_dir(model, settings), settings, version=version, log_predictions=log_predictions)
    uvicorn.run(app, host=host or settings.host, port=port, loop="uvloop", http="httptools", lifespan="on",
                access_log=False, log_level="warning", timeout_graceful_shutdown=30)
