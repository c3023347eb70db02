"""The audit ledger's checkpoints, witnessed on the real stack: a deploy record's checkpoint lands
as a tag on the model's MLflow registered model and as a Prefect artifact, and once the ledger's
directory is deleted, the MLflow tag alone makes `verify` fail instead of reporting an empty ledger."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from modelyard.catalog import Action
from modelyard.cli.stack import Stack
from modelyard.ledger import AuditLedger, CheckpointKeys
from modelyard.resources.registry import registry_client
from modelyard.resources.witness import TAG, MlflowTagWitness, PrefectArtifactWitness, ledger_witnesses

pytestmark = pytest.mark.stack


def test_a_checkpoint_witnessed_in_mlflow_outlives_the_ledgers_directory(stack_env: Stack, tmp_path):
    settings = stack_env.settings
    client = registry_client(settings)
    model = f"ledger-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(model)
    # A ledger of this test's own (its own origin and key), witnessed by the stack's MLflow and
    # Prefect; the stack's ledger and other tests' never count its checkpoints as theirs.
    keys = CheckpointKeys(tmp_path / "credentials" / "ledger-checkpoint.key", tmp_path / "keys" / "ledger-checkpoint.pub")
    origin = f"test-{model}"
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl", keys=keys, witnesses=ledger_witnesses(settings),
                         origin=origin)
    ledger.append("test", Action.MODEL_REGISTERED, f"{model}/1", {"version": "1"})
    ledger.append("test", Action.DEPLOY_SUCCEEDED, f"{model}/1", {"version": "1"})

    tagged = json.loads(client.get_registered_model(model).tags[TAG])
    assert (tagged["origin"], tagged["size"]) == (origin, 2)
    status = ledger.witness_status()
    assert status["mlflow"]["last_ok"]["size"] == 2 and status["prefect"]["last_ok"]["size"] == 2, status
    result = ledger.verify()
    assert result.ok, result.problem
    assert result.witnessed.checkpoint.size == 2
    in_prefect = [raw["size"] for _, raw in PrefectArtifactWitness(settings).read() if raw.get("origin") == origin]
    assert sorted(in_prefect) == [1, 2]  # one artifact per checkpoint: their history is kept

    shutil.rmtree(ledger.path.parent)  # the records, the checkpoints and the head, all gone
    only_mlflow = AuditLedger(ledger.path, keys=keys, witnesses=[MlflowTagWitness(settings)], origin=origin)
    result = only_mlflow.verify()
    assert not result.ok and result.records == 0
    assert result.problem.kind == "missing"
    assert f"MLflow model {model!r}" in result.problem.message and "2 records" in result.problem.message
