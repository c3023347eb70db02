"""Broken versions of a good model, registered like any other, for rollback tests.

Each wraps the champion's own fitted pipeline (so its answers agree with the champion's) and
adds one fault: ``crash`` never becomes healthy, ``errors`` fails a fifth of its predictions,
``slow`` sleeps ``SLOW_SECONDS`` on every prediction. ``none`` adds nothing: the champion's
pyfunc twin, the baseline a ``slow`` version is measured against (both then serve through the
same pyfunc runtime, so only the added delay can fail a latency gate). The server must import
this module, which it can: it runs with the project directory as its working directory.

They are saved with skops (the server never unpickles), trusting this module's class, and signed
with the stack's own key: the test harness is trusted, like the model pipeline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sklearn.base import BaseEstimator, ClassifierMixin

SLOW_SECONDS = 0.05


class FaultyClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, inner=None, fault: str = "none") -> None:
        self.inner = inner
        self.fault = fault

    @property
    def classes_(self):
        return self.inner.classes_

    def fit(self, X, y):  # noqa: N803 - scikit-learn's signature
        return self

    def predict(self, X):  # noqa: N803
        if self.fault == "crash":
            raise RuntimeError("this version is broken: it cannot predict at all")
        self.calls_ = getattr(self, "calls_", 0) + 1
        # Every fifth prediction fails, once warm-up (3 calls) and the smoke request are done:
        # a version that starts fine and then errors under traffic.
        if self.fault == "errors" and self.calls_ > 4 and self.calls_ % 5 == 0:
            raise RuntimeError("this version fails a fifth of its predictions")
        if self.fault == "slow":
            time.sleep(SLOW_SECONDS)
        return self.inner.predict(X)

    def predict_proba(self, X):  # noqa: N803
        return self.inner.predict_proba(X)


FAULTY_TYPE = f"{__name__}.FaultyClassifier"


def register_faulty_version(model: str, good_version: str, fault: str, spec: dict) -> str:
    """Register ``model``'s ``good_version`` wrapped with ``fault`` as a new version, signed, with
    the artifact digest and the spec a deploy reads, exactly like the pipeline registers one."""
    import json

    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from deployments.server.main import registered_digest, resolve_model_dir
    from deployments.server.model_runtime import load_verified_pipeline
    from modelyard.catalog import TAG_ARTIFACT_SHA256
    from modelyard.resources.registry import SPEC_ARTIFACT, registry_client
    from modelyard.settings import get_settings
    from tasks.registry import sign_logged_model
    from tasks.training import SKOPS_TRUSTED_TYPES

    settings = get_settings()
    good_uri = f"models:/{model}/{good_version}"
    _, _, expected = registered_digest(good_uri, settings)
    good_dir = resolve_model_dir(good_uri, settings, expected)
    inner = load_verified_pipeline(settings, good_dir, f"{model} v{good_version}")
    split = json.loads(next(good_dir.rglob("serving_input_example.json")).read_text())["dataframe_split"]
    example = pd.DataFrame(split["data"], columns=split["columns"])
    faulty = FaultyClassifier(inner, fault)
    with mlflow.start_run(run_name=f"faulty-{fault}"), tempfile.TemporaryDirectory() as tmp:
        info = mlflow.sklearn.log_model(faulty, name="model", serialization_format="skops",
                                        skops_trusted_types=[*SKOPS_TRUSTED_TYPES, FAULTY_TYPE],
                                        signature=infer_signature(example, inner.predict(example)),
                                        input_example=example)
        mlflow.log_dict(spec, SPEC_ARTIFACT)
        digest, signed = sign_logged_model(settings, registry_client(settings), info, Path(tmp))
        version = mlflow.register_model(info.model_uri, model, tags={TAG_ARTIFACT_SHA256: digest, **signed.tags(),
                                                                     "modelyard.fault": fault})
    return str(version.version)
