"""The model a server process serves: ONNX Runtime when the version carries a
parity-verified ONNX graph, its skops-serialised scikit-learn pipeline otherwise — behind one
``predict``. Nothing is read from a model directory before its signature verifies, and nothing
is ever unpickled: skops loads only the types the signed MLmodel lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.integrity import artifact_digest
from modelyard.onnx_feed import COLUMNS, onnx_feed
from modelyard.settings import Settings
from modelyard.signing import SignatureInfo, verify_model_dir

NUMERIC_TYPES = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class ColumnSpec:
    """One input column as the MLflow signature states it."""

    name: str
    type: str  # double | float | long | integer | boolean | string
    nullable: bool = False  # accepts missing values: the training data had some here

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def v2_datatype(self) -> str:
        return {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                "boolean": "BOOL"}.get(self.type, "BYTES")


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray                 # class labels, or regression values
    probabilities: np.ndarray | None   # [rows, classes] for classifiers
    classes: list | None


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    run_id: str
    artifact_sha256: str
    serving_format: str
    signer: str = ""  # fingerprint of the key whose signature verified (sha256 of its DER public key)


def read_signature(model_dir: Path) -> list[ColumnSpec]:
    """The signature's columns; MLflow marks a column ``required: false`` when the data it was
    inferred from had missing values there."""
    from mlflow.models import Model

    signature = Model.load(str(model_dir / "MLmodel")).signature
    if signature is None or signature.inputs is None:
        raise ValueError(f"{model_dir} has no MLflow signature: the server cannot check inputs")
    columns = []
    for spec in signature.inputs.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        columns.append(ColumnSpec(spec.name, str(kind), not getattr(spec, "required", True)))
    return columns


def _find(model_dir: Path, name: str) -> Path | None:
    return next(iter(sorted(model_dir.rglob(name))), None)


def _skops_flavor(model_dir: Path) -> tuple[Path, list[str]]:
    """The skops file of a model directory and the types its (signed) MLmodel trusts; refuses
    any other serialisation: pickle and cloudpickle run the model's own code when loaded."""
    import yaml

    flavor = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("sklearn") or {}
    serialization = flavor.get("serialization_format", "pickle")
    if serialization != "skops":
        raise ValueError(f"{model_dir.name}: the model is serialised as {serialization}; only ONNX and skops are "
                         "ever loaded (unpickling runs the model's code): refusing to load it")
    path = (model_dir / str(flavor.get("pickled_model", ""))).resolve()
    if not path.is_file() or not path.is_relative_to(model_dir.resolve()):
        raise ValueError(f"{model_dir.name}: the MLmodel's skops file is not a file of the model directory")
    trusted = flavor.get("skops_trusted_types") or []
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise ValueError(f"{model_dir.name}: skops_trusted_types in MLmodel is not a list of type names")
    return path, trusted


def load_skops_pipeline(model_dir: Path):
    """The scikit-learn pipeline of a *verified* model directory, loaded by skops with exactly the
    types its signed MLmodel lists (skops refuses any other); never pickle."""
    import skops.io

    path, trusted = _skops_flavor(Path(model_dir))
    try:
        return skops.io.load(path, trusted=trusted)
    except Exception as error:  # skops raises UntrustedTypesFoundException, TypeError…
        raise ValueError(f"{Path(model_dir).name}: skops refused to load {path.name}: {error}") from error


def load_verified_pipeline(settings: Settings, model_dir: Path, what: str):
    """``load_skops_pipeline`` after the directory's signature verified (raises SignatureError)."""
    verify_model_dir(settings, Path(model_dir), what)
    return load_skops_pipeline(model_dir)


class ModelRuntime:
    """Loads a model version directory, once its signature verified, and predicts on columns of rows."""

    def __init__(self, model_dir: Path, settings: Settings, model: str = "", version: str = "",
                 artifact_sha256: str | None = None) -> None:
        """Raises SignatureError, before reading any file of ``model_dir``, unless a trusted key signed it."""
        self.model_dir = Path(model_dir)
        self.signature: SignatureInfo = verify_model_dir(settings, self.model_dir,
                                                         f"{model or self.model_dir.name} v{version or '?'}")
        serving_path = _find(self.model_dir, "serving.json")
        self.serving = json.loads(serving_path.read_text()) if serving_path else {"format": "pyfunc"}
        meta = self._registered_meta()
        self.info = VersionInfo(
            model=model or meta.get("model_name", self.model_dir.name),
            version=str(version or meta.get("model_version", "0")),
            run_id=self._run_id(),
            artifact_sha256=artifact_sha256 or artifact_digest(self.model_dir),
            serving_format="onnx" if self.serving.get("format") == "onnx" and _find(self.model_dir, "model.onnx") else "pyfunc",
            signer=self.signature.signer,
        )
        self.columns = read_signature(self.model_dir)
        if self.info.serving_format == "onnx":
            # The build proves the graph on missing values (parity on rows with gaps) and lists
            # the columns it proved; a column it did not prove refuses them.
            proven = set(self.serving.get("nullable", []))
            self.columns = [replace(c, nullable=c.nullable and c.name in proven) for c in self.columns]
        self.classes: list | None = None
        if self.info.serving_format == "onnx":
            self._load_onnx()
        else:
            self._load_pyfunc()

    def _registered_meta(self) -> dict:
        path = self.model_dir / "registered_model_meta"
        if not path.exists():
            return {}
        import yaml

        return yaml.safe_load(path.read_text()) or {}

    def _run_id(self) -> str:
        import yaml

        mlmodel = yaml.safe_load((self.model_dir / "MLmodel").read_text()) or {}
        return str(mlmodel.get("run_id") or "")

    def _load_onnx(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(_find(self.model_dir, "model.onnx")), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.categorical = set(self.serving.get("categorical", []))
        self.feature_order = list(self.serving.get("columns", [c.name for c in self.columns]))
        self.layout = self.serving.get("layout", COLUMNS)
        self.is_classifier = len(self.output_names) > 1
        if self.is_classifier:
            import onnx

            graph = onnx.load(str(_find(self.model_dir, "model.onnx")), load_external_data=False)
            for node in graph.graph.node:
                if node.op_type in {"TreeEnsembleClassifier", "LinearClassifier"}:
                    for attr in node.attribute:
                        if attr.name == "classlabels_int64s" and attr.ints:
                            self.classes = list(attr.ints)
                        elif attr.name == "classlabels_strings" and attr.strings:
                            self.classes = [s.decode() for s in attr.strings]

    def _load_pyfunc(self) -> None:
        self.pipeline = load_skops_pipeline(self.model_dir)
        self.is_classifier = hasattr(self.pipeline, "predict_proba")
        if self.is_classifier:
            self.classes = list(self.pipeline.classes_)

    def predict(self, columns: dict[str, np.ndarray]) -> Prediction:
        """Predict on checked columns (name → 1-D array of the rows' values)."""
        if self.info.serving_format == "onnx":
            outputs = self.session.run(None, onnx_feed(columns, self.layout, self.feature_order, self.categorical,
                                                       self.input_names))
            if self.is_classifier:
                return Prediction(outputs[0].reshape(-1), np.asarray(outputs[1]), self.classes)
            return Prediction(np.asarray(outputs[0]).reshape(-1), None, None)
        frame = pd.DataFrame({c.name: columns[c.name] for c in self.columns})
        labels = np.asarray(self.pipeline.predict(frame))
        proba = np.asarray(self.pipeline.predict_proba(frame)) if self.is_classifier else None
        return Prediction(labels, proba, self.classes)

    def warm_up(self, rows: int = 8) -> None:
        """Run a few predictions on typical values so the first request is not slow."""
        sample = {c.name: (np.zeros(rows) if c.numeric else np.array(["warmup"] * rows, dtype=object))
                  for c in self.columns}
        for column in self.columns:  # missing values take their own paths through some models
            if column.nullable and column.numeric:
                sample[column.name][::2] = np.nan
        for _ in range(3):
            self.predict(sample)
