"""Broken versions of a good model, registered like any other, for rollback tests.

Each wraps the champion's own fitted pipeline (so its answers agree with the champion's) and
adds one fault: ``crash`` never becomes healthy, ``errors`` fails a fifth of its predictions,
``slow`` sleeps ``SLOW_SECONDS`` on every prediction. ``none`` adds nothing: the champion's
pyfunc twin, the baseline a ``slow`` version is measured against (both then serve through the
same pyfunc runtime, so only the added delay can fail a latency gate). The server must import
this module, which it can: it runs with the project directory as its working directory.
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


def register_faulty_version(model: str, good_version: str, fault: str, spec: dict) -> str:
    """Register ``model``'s ``good_version`` wrapped with ``fault`` as a new version, with the
    artifact digest and the spec a deploy reads, exactly like the pipeline registers one."""
    import mlflow
    from mlflow.models import infer_signature

    from modelyard.catalog import TAG_ARTIFACT_SHA256
    from modelyard.integrity import artifact_digest
    from modelyard.resources.registry import SPEC_ARTIFACT

    good_uri = f"models:/{model}/{good_version}"
    inner = mlflow.sklearn.load_model(good_uri)
    with tempfile.TemporaryDirectory() as tmp:
        good_dir = Path(mlflow.artifacts.download_artifacts(good_uri, dst_path=tmp))
        import json

        import pandas as pd

        example_path = next(good_dir.rglob("serving_input_example.json"))
        split = json.loads(example_path.read_text())["dataframe_split"]
        example = pd.DataFrame(split["data"], columns=split["columns"])
    faulty = FaultyClassifier(inner, fault)
    with mlflow.start_run(run_name=f"faulty-{fault}") as run:
        info = mlflow.sklearn.log_model(faulty, name="model", serialization_format="cloudpickle",
                                        signature=infer_signature(example, inner.predict(example)),
                                        input_example=example)
        mlflow.log_dict(spec, SPEC_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp))
            digest = artifact_digest(local)
        version = mlflow.register_model(info.model_uri, model, tags={TAG_ARTIFACT_SHA256: digest,
                                                                     "modelyard.fault": fault})
    del run
    return str(version.version)
