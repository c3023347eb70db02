"""Signed models on the real stack: a version registered outside modelyard, with the correct
artifact sha256 computed by whoever registered it, is refused before anything of it is loaded,
by the inference server and by evaluation (challenger or champion), and the refusal is in the
ledger. Its payload is a cloudpickle whose unpickling would write a marker file: the marker never
appears. So is a signed version whose files were replaced in the store with a matching digest."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models import infer_signature

from modelyard.catalog import CHAMPION, TAG_ARTIFACT_SHA256
from modelyard.cli.stack import Stack
from modelyard.integrity import artifact_digest
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.settings import Settings
from modelyard.signing import MODEL_SIGNATURE_REFUSED, SignatureError
from tests.support.servers import start_server
from tests.support.stacks import quiet

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"


class Payload:
    """A "model" whose unpickling runs code: it writes the marker file (and it predicts zeros)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def predict(self, frame):
        return np.zeros(len(frame), dtype=int)

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


@pytest.fixture(scope="module")
def outsider(stack_env: Stack, tmp_path_factory) -> dict:
    """A small fraud spec, its prepared data, and where a payload would leave its marker."""
    from modelyard.signing import ensure_signing_key
    from tasks.model_pipeline import prepare_data

    ensure_signing_key(stack_env.settings)  # the stack's own key pair, as `stack up` makes it
    folder = tmp_path_factory.mktemp("signing")
    spec = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    spec["name"] = "signing-outsider"
    spec["data"]["generator_params"] = {"n_rows": 2000, "seed": 5}
    spec["estimator"]["params"] = {"n_estimators": 10, "max_depth": 2}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(quiet(spec)))
    prepared = prepare_data(str(path))
    return {"spec": str(path), "prepared": prepared, "marker": folder / "unpickled.marker", "folder": folder}


def _example(outsider: dict) -> pd.DataFrame:
    from tasks.training import model_inputs

    prepared = outsider["prepared"]
    return model_inputs(prepared.holdout.head(5), prepared.features)


def mlflow_settings() -> Settings:
    """The settings of the stack the tests run against (its MLflow, with its credentials)."""
    from modelyard.settings import get_settings

    return get_settings()


def _register(name: str, model, example: pd.DataFrame, *, signer: Settings | None, **log_options) -> tuple[str, str]:
    """Log and register ``model`` as anyone with MLflow access can, with the artifact sha256 of
    exactly what was stored (so the digest check passes); signed by ``signer``'s key, if any.
    Returns the version and its logged model's id."""
    from tasks.registry import sign_logged_model

    with mlflow.start_run(run_name="outside-modelyard"), tempfile.TemporaryDirectory() as tmp:
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(example, model.predict(example)),
                                        pip_requirements=[], **log_options)
        if signer is not None:  # the upload goes through the stack's MLflow, as anyone's with access would
            digest, _ = sign_logged_model(signer, registry_client(mlflow_settings()), info, Path(tmp))
        else:
            digest = artifact_digest(Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)))
        version = mlflow.register_model(info.model_uri, name, tags={TAG_ARTIFACT_SHA256: digest})
    return str(version.version), info.model_id


def _register_payload(outsider: dict, signer: Settings | None) -> str:
    version, _ = _register("signing-outsider", Payload(outsider["marker"]), _example(outsider), signer=signer,
                           serialization_format="cloudpickle")
    assert not outsider["marker"].exists()
    return version


def _register_signed_pipeline(outsider: dict, stack: Stack) -> tuple[str, str]:
    """A scikit-learn pipeline logged with skops and signed with the stack's key: one modelyard trusts."""
    from tasks.training import SKOPS_TRUSTED_TYPES, train_model

    prepared = outsider["prepared"]
    pipeline = train_model(prepared.spec, prepared.train, prepared.features)
    return _register("signing-outsider", pipeline, _example(outsider), signer=stack.settings,
                     serialization_format="skops", skops_trusted_types=SKOPS_TRUSTED_TYPES, input_example=_example(outsider))


def _refusals(stack: Stack, version: str) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records(subject=f"signing-outsider/{version}")
            if r["action"] == MODEL_SIGNATURE_REFUSED]


def _cached(stack: Stack, version: str) -> bool:
    return (stack.settings.state_dir / "models" / f"signing-outsider-{version}").exists()


@pytest.mark.parametrize("signed_by, reason", [
    ("nobody", "it is not signed (no model.sig): a version registered outside modelyard"),
    ("its own key", "it is signed by a key that is not trusted"),
])
def test_a_version_registered_outside_modelyard_is_refused_by_the_server_before_load(
        stack_env: Stack, outsider, tmp_path, signed_by, reason):
    attacker = Settings(state_dir=tmp_path / "attacker")  # only its key: a pair the stack never trusted
    version = _register_payload(outsider, attacker if signed_by == "its own key" else None)
    with pytest.raises(RuntimeError) as refused:
        start_server(f"models:/signing-outsider/{version}", stack_env.settings.child_env(), tmp_path / "server.log")
    log = " ".join(str(refused.value).split())  # as the console wrapped it
    assert "server exited with 2" in log and reason in log and "refusing to load it" in log
    assert not outsider["marker"].exists()
    assert not _cached(stack_env, version)  # an unverified download never enters the model cache
    refusals = _refusals(stack_env, version)
    assert [r["actor"] for r in refusals] == [f"server:signing-outsider/{version}"]
    assert reason.split(":")[0] in refusals[0]["details"]["reason"]


def test_evaluation_refuses_an_outside_challenger_and_never_unpickles_it(stack_env: Stack, outsider):
    from flows.evaluate import evaluate

    version = _register_payload(outsider, None)
    with pytest.raises(SignatureError, match=f"signing-outsider/{version}: it is not signed"):
        evaluate(outsider["spec"], version)
    assert not outsider["marker"].exists()
    refusals = _refusals(stack_env, version)
    assert len(refusals) == 1 and refusals[0]["actor"].startswith("flow:evaluate/")
    client = registry_client(stack_env.settings)
    assert "modelyard.decision" not in client.get_run(client.get_model_version("signing-outsider", version).run_id).data.tags


def test_evaluation_refuses_an_outside_champion_after_loading_a_signed_challenger(stack_env: Stack, outsider):
    from tasks.model_pipeline import evaluate_version
    from tasks.registry import load_version

    client = registry_client(stack_env.settings)
    champion = _register_payload(outsider, None)
    client.set_registered_model_alias("signing-outsider", CHAMPION, champion)  # straight into MLflow
    challenger, _ = _register_signed_pipeline(outsider, stack_env)
    loaded = load_version(stack_env.settings, "signing-outsider", challenger)
    assert loaded.serving_format == "pyfunc" and loaded.signer  # skops, verified
    with pytest.raises(SignatureError, match=f"signing-outsider/{champion}: it is not signed"):
        evaluate_version(outsider["prepared"], challenger, client, stack_env.settings)
    assert not outsider["marker"].exists()
    assert _refusals(stack_env, champion)
    assert not _refusals(stack_env, challenger)


def test_a_signed_version_whose_files_and_digest_were_replaced_is_refused(stack_env: Stack, outsider, tmp_path):
    import pickle

    client = registry_client(stack_env.settings)
    version, model_id = _register_signed_pipeline(outsider, stack_env)
    # Someone with write access to MLflow swaps the weights for a pickle and records their digest.
    swapped = tmp_path / "swap" / "model.skops"
    swapped.parent.mkdir()
    swapped.write_bytes(pickle.dumps(Payload(outsider["marker"])))
    client.log_model_artifact(model_id, str(swapped))
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/signing-outsider/{version}", dst_path=str(tmp_path / "dl")))
    assert (stored / "model.skops").read_bytes() == swapped.read_bytes()
    client.set_model_version_tag("signing-outsider", version, TAG_ARTIFACT_SHA256, artifact_digest(stored))
    with pytest.raises(RuntimeError) as refused:
        start_server(f"models:/signing-outsider/{version}", stack_env.settings.child_env(), tmp_path / "server.log")
    assert "the files differ from what was signed (changed: model.skops)" in " ".join(str(refused.value).split())
    assert not outsider["marker"].exists()
    assert _refusals(stack_env, version)


def test_the_test_harness_broken_versions_are_signed_skops_and_served(stack_env: Stack, outsider, tmp_path):
    """tests/support/broken_models.py registers faulty versions the rollback tests serve: signed
    with the stack's key, saved with skops (their wrapper class trusted by name), never pickled."""
    import requests

    from modelyard.signing import TAG_SIGNER, ensure_signing_key
    from tests.support.broken_models import register_faulty_version

    good, _ = _register_signed_pipeline(outsider, stack_env)
    faulty = register_faulty_version("signing-outsider", good, "none", {})
    tags = registry_client(stack_env.settings).get_model_version("signing-outsider", faulty).tags
    assert tags[TAG_SIGNER] == ensure_signing_key(stack_env.settings).fingerprint
    env = stack_env.settings.child_env() | {"MODELYARD_SERVE_ANONYMOUS": "true"}
    env.pop("MODELYARD_API_TOKEN", None)
    server = start_server(f"models:/signing-outsider/{faulty}", env, tmp_path / "faulty.log")
    try:
        version = requests.get(f"{server.url}/version", timeout=10).json()
        assert version["serving_format"] == "pyfunc" and version["signer"] == tags[TAG_SIGNER]
        rows = _example(outsider)
        answer = requests.post(f"{server.url}/invocations", timeout=30,
                               json={"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == len(rows)
    finally:
        server.stop()
