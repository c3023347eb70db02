"""The audit ledger: RFC 9162 Merkle hashing and proofs, chained records with tamper detection that
names the first bad record, signed and witnessed checkpoints that catch the probed attacks
(cut-and-rewrite, cut-and-append, restoring an old copy, deleting it), inclusion proofs that a
standalone script checks, torn-line repair that loses nothing, safe concurrent appends, and no
secrets inside."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.ledger import (
    GENESIS_HASH,
    LEDGER_REPAIRED,
    REDACTED,
    AuditLedger,
    Checkpoint,
    CheckpointKeys,
    FileWitness,
    LedgerError,
    checkpoint_keys,
    file_witness,
    ledger_from_settings,
    record_hash,
)
from modelyard.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from modelyard.settings import Settings

PROJECT = Path(__file__).resolve().parents[2]
CHECKER = PROJECT / "infra" / "scripts" / "verify_inclusion.py"

# --- RFC 9162 hashing: the Certificate Transparency reference vectors (RFC 6962 test data) ---------

CT_ENTRIES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
CT_INCLUSION = [  # (leaf index, tree size, audit path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def test_tree_heads_match_the_certificate_transparency_vectors():
    leaves = [leaf_hash(entry) for entry in CT_ENTRIES]
    tree, frontier = MerkleTree(leaves), Frontier()
    assert tree.root(0) == EMPTY_ROOT == Frontier().root()
    for size in range(1, 9):
        frontier.append(leaves[size - 1])
        assert root_of(leaves[:size]).hex() == tree.root(size).hex() == frontier.root().hex() == CT_ROOTS[size - 1]


def test_proofs_match_the_vectors_and_verify():
    tree = MerkleTree([leaf_hash(entry) for entry in CT_ENTRIES])
    for index, size, path in CT_INCLUSION:
        assert [h.hex() for h in tree.inclusion_proof(index, size)] == path
        assert verify_inclusion(tree.leaf(index), index, size, [bytes.fromhex(h) for h in path], tree.root(size))
    for old, new, proof in CT_CONSISTENCY:
        assert [h.hex() for h in tree.consistency_proof(old, new)] == proof
        assert verify_consistency(old, new, tree.root(old), tree.root(new), [bytes.fromhex(h) for h in proof])


def test_every_proof_of_every_tree_shape_verifies_and_a_wrong_one_does_not():
    for size in range(1, 34):
        leaves = [leaf_hash(f"{size}/{i}".encode()) for i in range(size)]
        tree = MerkleTree(leaves)
        root = tree.root()
        for index in range(size):
            path = tree.inclusion_proof(index)
            assert verify_inclusion(leaves[index], index, size, path, root)
            assert not verify_inclusion(leaf_hash(b"forged"), index, size, path, root)
            if size > 1:
                assert not verify_inclusion(leaves[index], index, size, path[:-1], root)
        for old in range(0, size + 1):
            proof = tree.consistency_proof(old)
            assert verify_consistency(old, size, tree.root(old), root, proof)
            if 0 < old < size:
                assert not verify_consistency(old, size, leaf_hash(b"other history"), root, proof)
                assert not verify_consistency(old, size, tree.root(old), leaf_hash(b"other head"), proof)


# --- the ledger's records and chain -----------------------------------------------------------


def _stack_ledger(tmp_path: Path, witnesses=()) -> AuditLedger:
    """The ledger as the stack builds it: key made at first use, local file witness."""
    return ledger_from_settings(Settings(state_dir=tmp_path / "state"), witnesses=witnesses)


def _ledger_with(tmp_path: Path, n: int = 6, signed: bool = True) -> AuditLedger:
    """``n`` records, the last a deploy (so a checkpoint is signed at ``n``; the first is signed too)."""
    ledger = _stack_ledger(tmp_path) if signed else AuditLedger(tmp_path / "audit" / "ledger.jsonl")
    for i in range(n):
        action = "deploy.succeeded" if i == n - 1 else "model.registered"
        ledger.append("tester", action, f"model-{i % 2}", {"version": i})
    return ledger


def _lines(ledger: AuditLedger) -> list[str]:
    return ledger.path.read_text().splitlines(keepends=True)


def _write(ledger: AuditLedger, lines: list[str]) -> None:
    ledger.path.write_text("".join(lines))


def _rechain(records: list[dict]) -> list[str]:
    """Records renumbered, re-chained and re-hashed: what an attacker with the code writes."""
    out, prev = [], GENESIS_HASH
    for seq, record in enumerate(records, start=1):
        record = {**record, "seq": seq, "prev_hash": prev}
        record["hash"] = prev = record_hash(record)
        out.append(json.dumps(record, sort_keys=True) + "\n")
    return out


def test_untouched_ledger_verifies(tmp_path):
    ledger = _ledger_with(tmp_path)
    result = ledger.verify()
    assert result.ok and result.records == 6, result.problem
    records = ledger.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(records, records[1:]))
    assert [c.size for c in ledger.checkpoints()] == [1, 6]
    assert result.checkpoint.size == 6 and result.unvouched == 0
    assert result.witnessed.checkpoint.size == 6


def test_an_append_only_process_never_touches_the_key_and_the_next_signer_catches_up(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    server = ledger_from_settings(settings, sign=False)
    for i in range(70):
        server.append("server:fraud/1", "prediction_log.pruned", "fraud/1", {"i": i})
    assert not checkpoint_keys(settings).private_path.exists() and server.checkpoints() == []
    ledger_from_settings(settings).append("flow:monitor/1", "monitor.drift.detected", "fraud/1", {})
    assert [c.size for c in server.checkpoints()] == [71]
    assert ledger_from_settings(settings).verify().ok


def test_the_checkpoint_key_is_private_and_its_public_key_published(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    _ledger_with(tmp_path, n=1)
    keys = checkpoint_keys(settings)
    assert keys.private_path == settings.credentials_dir / "ledger-checkpoint.key"
    assert keys.public_path == settings.state_dir / "keys" / "ledger-checkpoint.pub"
    assert keys.private_path.stat().st_mode & 0o777 == 0o600
    assert keys.private_path.parent.stat().st_mode & 0o777 == 0o700
    assert keys.public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in keys.public_path.read_text()


def test_a_checkpoint_is_signed_on_each_deploy_rollback_and_promotion_and_every_64_records(tmp_path):
    ledger = _stack_ledger(tmp_path)
    for i in range(1, 131):
        ledger.append("tester", "serving.replica_down", "fraud/1", {"i": i})
    assert [c.size for c in ledger.checkpoints()] == [1, 65, 129]
    for action in ("model.promoted", "deploy.started", "deploy.succeeded", "deploy.rolled_back",
                   "deploy.automatic_rollback", "deploy.manual_rollback"):
        ledger.append("tester", action, "fraud/2", {})
    assert [c.size for c in ledger.checkpoints()] == [1, 65, 129, 131, 132, 133, 134, 135, 136]
    assert ledger.verify().ok


def test_edited_record_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    record = json.loads(lines[2])
    record["details"]["version"] = 99
    lines[2] = json.dumps(record) + "\n"
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.seq, problem.kind) == (3, 3, "edited")


def test_edited_record_with_recomputed_hash_breaks_the_chain(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    record = json.loads(lines[1])
    record["actor"] = "mallory"
    record["hash"] = record_hash(record)
    lines[1] = json.dumps(record) + "\n"
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.seq, problem.kind) == (2, 2, "edited")


def test_deleted_record_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    del lines[3]
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.seq, problem.kind) == (4, 5, "deleted")
    assert "seq 4..4 are missing" in problem.message


def test_inserted_record_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    lines.insert(2, lines[1])  # a copy of a genuine record, replayed
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.kind) == (3, "inserted")


def test_forged_record_inserted_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    before = json.loads(lines[1])
    forged = {"seq": 3, "time": before["time"], "actor": "mallory", "action": "model.promoted",
              "subject": "model-0", "details": {}, "prev_hash": before["hash"]}
    forged["hash"] = record_hash(forged)
    lines.insert(2, json.dumps(forged) + "\n")
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.kind) == (3, "inserted")


def test_reordered_records_are_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    lines = _lines(ledger)
    lines[2], lines[3] = lines[3], lines[2]
    _write(ledger, lines)
    problem = ledger.verify().problem
    assert (problem.line, problem.seq, problem.kind) == (3, 4, "reordered")


def test_a_checkpoint_not_signed_by_the_published_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ledger = _ledger_with(tmp_path)
    genuine = ledger.checkpoints()[-1]
    mallory = CheckpointKeys(tmp_path / "mallory.key", tmp_path / "mallory" / "mallory.pub")
    stranger = AuditLedger(tmp_path / "elsewhere" / "ledger.jsonl", keys=mallory)
    stranger.append("mallory", "x", "y")
    forged = stranger.checkpoints()[-1]
    forged = Checkpoint(genuine.origin, genuine.size, genuine.root, genuine.time, forged.key_id, forged.signature)
    with open(ledger.checkpoints_path, "a") as handle:
        handle.write(json.dumps(forged.as_dict()) + "\n")
    assert ledger.verify().problem.kind == "forged-checkpoint"
    # …and one re-signed over the genuine fields with some other key, claiming the genuine key id:
    other = Ed25519PrivateKey.generate().sign(genuine.message())
    import base64

    lines = ledger.checkpoints_path.read_text().splitlines(keepends=True)[:-1]
    lines.append(json.dumps({**genuine.as_dict(), "signature": base64.b64encode(other).decode()}) + "\n")
    ledger.checkpoints_path.write_text("".join(lines))
    assert ledger.verify().problem.kind == "forged-checkpoint"


# --- the four probed attacks --------------------------------------------------------------------


def test_attack_a_cutting_the_tail_and_rewriting_the_head_without_a_configured_key_is_caught(tmp_path):
    ledger = _ledger_with(tmp_path)  # MODELYARD_LEDGER_KEY unset: the checkpoint key is the generated one
    _write(ledger, _lines(ledger)[:4])
    ledger.state_path.unlink()  # the head, rewritten: the ledger rebuilds it from what is left
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "truncated" and result.problem.line == 5
    assert "signed 6 records" in result.problem.message and "holds 4" in result.problem.message
    # Cutting the stored checkpoints too leaves the witnessed one, in another directory:
    kept = [line for line in ledger.checkpoints_path.read_text().splitlines(keepends=True)
            if json.loads(line)["size"] <= 4]
    ledger.checkpoints_path.write_text("".join(kept))
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "restored"
    assert "signed 6 records" in result.problem.message


def test_attack_b_deleting_two_records_and_appending_three_forged_ones_is_caught(tmp_path):
    ledger = _ledger_with(tmp_path)
    records = [json.loads(line) for line in _lines(ledger)[:4]]
    forged = [{"time": records[-1]["time"], "actor": "mallory", "action": "model.promoted",
               "subject": "model-0", "details": {"version": 100 + i}} for i in range(3)]
    _write(ledger, _rechain(records + forged))
    ledger.state_path.unlink()
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "rewritten"
    assert result.records < 5 and result.problem.line <= 5
    # The same through the ledger's own code (signing with the real key) and the stored
    # checkpoints cut back: the witnessed checkpoint of 6 records still refuses it.
    _write(ledger, _lines(ledger)[:4])  # the state is already gone
    ledger.checkpoints_path.write_text(ledger.checkpoints_path.read_text().splitlines(keepends=True)[0])
    for record in forged:  # each signed with the real key
        ledger.append(record["actor"], record["action"], record["subject"], record["details"])
    assert [c.size for c in ledger.checkpoints()] == [1, 5, 6, 7]
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "rewritten"
    assert "witnessed" in result.problem.message


def test_attack_c_restoring_an_older_ledger_with_its_checkpoints_and_head_is_caught(tmp_path):
    ledger = _ledger_with(tmp_path)
    old_copy = tmp_path / "old-copy"
    shutil.copytree(ledger.path.parent, old_copy)
    for i in range(3):
        ledger.append("tester", "deploy.manual_rollback" if i == 2 else "serving.replica_down", "model-0", {"i": i})
    assert ledger.verify().ok
    shutil.rmtree(ledger.path.parent)
    shutil.copytree(old_copy, ledger.path.parent)  # ledger, checkpoints and head as they were
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "restored"
    assert "signed 9 records" in result.problem.message and "holds 6" in result.problem.message
    ledger.append("tester", "serving.replica_down", "model-0", {})  # appending on top hides nothing
    assert not ledger.verify().ok


def test_attack_d_deleting_the_files_is_a_failure_not_an_empty_ledger(tmp_path):
    assert _stack_ledger(tmp_path / "fresh").verify().ok  # never written: nothing to miss
    ledger = _ledger_with(tmp_path)
    shutil.rmtree(ledger.path.parent)  # the ledger, its checkpoints, its head
    result = ledger.verify()
    assert not result.ok and result.records == 0
    assert result.problem.kind == "missing" and "kept a checkpoint of 6 records" in result.problem.message
    # With the local witness gone too, the published key still says records were signed:
    file_witness(Settings(state_dir=tmp_path / "state")).path.unlink()
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "missing"
    assert "ledger-checkpoint.pub" in result.problem.message


# --- witnesses ------------------------------------------------------------------------------


class MemoryWitness:
    """A witness in this process's memory that can be made to fail."""

    name = "memory"

    def __init__(self) -> None:
        self.kept: list[dict] = []
        self.down = False

    def publish(self, checkpoint, subject):
        if self.down:
            raise ConnectionError("witness unreachable")
        self.kept.append({**checkpoint.as_dict()})

    def read(self):
        if self.down:
            raise ConnectionError("witness unreachable")
        return [(f"memory:{i}", kept) for i, kept in enumerate(self.kept)]


def test_a_failing_witness_never_fails_the_append_is_recorded_and_retried_with_the_next_checkpoint(tmp_path):
    witness = MemoryWitness()
    ledger = _stack_ledger(tmp_path, witnesses=[witness])
    ledger.append("tester", "model.registered", "fraud/1", {})
    witness.down = True
    record = ledger.append("tester", "deploy.succeeded", "fraud/1", {})
    assert record["seq"] == 2
    failure = ledger.witness_status()["memory"]["last_failure"]
    assert failure["size"] == 2 and "witness unreachable" in failure["error"]
    witness.down = False
    ledger.append("tester", "model.promoted", "fraud/2", {})
    status = ledger.witness_status()["memory"]
    assert status["last_ok"]["size"] == 3 and "last_failure" not in status
    assert [kept["size"] for kept in witness.kept] == [1, 3]
    result = ledger.verify()
    assert result.ok and result.witnessed.checkpoint.size == 3


def test_verify_fails_closed_when_a_witness_cannot_be_read(tmp_path):
    witness = MemoryWitness()
    ledger = _stack_ledger(tmp_path, witnesses=[witness])
    ledger.append("tester", "deploy.succeeded", "fraud/1", {})
    witness.down = True
    result = ledger.verify()
    assert not result.ok and result.problem.kind == "unwitnessed"
    assert result.witness_errors and "memory" in result.witness_errors[0]


def test_another_ledgers_witnessed_checkpoints_are_not_this_ones(tmp_path):
    witness = MemoryWitness()
    ours = _stack_ledger(tmp_path / "ours", witnesses=[witness])
    theirs = AuditLedger(tmp_path / "theirs" / "ledger.jsonl", origin="other-stack", witnesses=[witness],
                         keys=CheckpointKeys(tmp_path / "theirs.key", tmp_path / "theirs-keys" / "k.pub"))
    for _ in range(3):
        theirs.append("tester", "deploy.succeeded", "fraud/1", {})
    ours.append("tester", "deploy.succeeded", "fraud/1", {})
    result = ours.verify()
    assert result.ok and result.witnessed.checkpoint.size == 1


def test_the_mlflow_and_prefect_witnesses_render_and_read_back_a_checkpoint(tmp_path):
    from modelyard.resources.witness import model_of, parse_rendered, render_checkpoint

    ledger = _ledger_with(tmp_path, n=2)
    checkpoint = ledger.checkpoints()[-1]
    markdown = render_checkpoint(checkpoint, "fraud/3")
    assert checkpoint.root in markdown and "| 2 |" in markdown
    assert Checkpoint.from_dict(parse_rendered(markdown)) == checkpoint
    assert parse_rendered("no checkpoint here") == {}
    assert model_of("fraud/3") == "fraud" and model_of("fraud") == "fraud"
    assert model_of("stack") == "stack" and model_of("../etc") is None


# --- inclusion proofs and the standalone checker -------------------------------------------------


def _check(proof: dict | str, public_key: Path) -> subprocess.CompletedProcess[str]:
    text = proof if isinstance(proof, str) else json.dumps(proof)
    return subprocess.run([sys.executable, str(CHECKER), "-", "--public-key", str(public_key)],
                          input=text, capture_output=True, text=True, timeout=60)


def test_audit_prove_prints_a_proof_the_standalone_checker_accepts_and_a_tampered_one_it_refuses(tmp_path):
    ledger = _ledger_with(tmp_path, n=9)
    ledger.append("tester", "serving.replica_down", "model-0", {})  # seq 10: after the last checkpoint
    env = {"PATH": os.environ.get("PATH", ""), "MODELYARD_STATE_DIR": str(tmp_path / "state"),
           "MODELYARD_MLFLOW_PORT": "9", "MODELYARD_PREFECT_PORT": "9"}  # no stack: nothing to witness on
    shown = subprocess.run([sys.executable, "-m", "modelyard.cli", "audit", "prove", "3"], env=env,
                           capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    proof = json.loads(shown.stdout)
    assert (proof["seq"], proof["leaf_index"], proof["tree_size"]) == (3, 2, 9)
    assert proof["record"] == ledger.records()[2]
    public_key = tmp_path / "state" / "keys" / "ledger-checkpoint.pub"
    accepted = _check(shown.stdout, public_key)
    assert accepted.returncode == 0 and accepted.stdout.startswith("OK: record 3"), accepted.stderr

    edited = json.loads(shown.stdout)
    edited["record"]["details"]["version"] = 7
    assert "does not hash" in _check(edited, public_key).stderr
    swapped = json.loads(shown.stdout)
    swapped["audit_path"][0] = swapped["audit_path"][1]
    assert "does not lead to the signed tree head" in _check(swapped, public_key).stderr
    resized = json.loads(shown.stdout)
    resized["checkpoint"]["size"] = 10
    resized["tree_size"] = 10
    assert "signature is not valid" in _check(resized, public_key).stderr
    stranger = CheckpointKeys(tmp_path / "s.key", tmp_path / "s" / "s.pub")
    stranger.signing_key()
    assert "not by this public key" in _check(shown.stdout, stranger.public_path).stderr

    newest = ledger.prove(10)  # no checkpoint holds it yet: one is signed for the proof
    assert newest["tree_size"] == 10 and ledger.checkpoints()[-1].size == 10
    assert _check(newest, public_key).returncode == 0


# --- torn lines -----------------------------------------------------------------------------


def test_a_torn_last_line_is_detected_then_repaired_and_nothing_complete_is_lost(tmp_path):
    ledger = _ledger_with(tmp_path, n=5)
    before = ledger.records()
    torn = b'{"action": "deploy.started", "actor": "flow:deploy/1", "details": {"ver'
    with open(ledger.path, "ab") as handle:
        handle.write(torn)
    problem = ledger.verify().problem
    assert (problem.kind, problem.line) == ("torn", 6) and "audit repair" in problem.message
    assert ledger.records() == before

    env = {"PATH": os.environ.get("PATH", ""), "MODELYARD_STATE_DIR": str(tmp_path / "state"),
           "MODELYARD_MLFLOW_PORT": "9", "MODELYARD_PREFECT_PORT": "9"}
    repaired = subprocess.run([sys.executable, "-m", "modelyard.cli", "audit", "repair"], env=env,
                              capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert f"quarantined {len(torn)} torn bytes" in " ".join(repaired.stdout.split())
    records = ledger.records()
    assert records[:5] == before
    assert records[5]["action"] == LEDGER_REPAIRED and records[5]["details"]["bytes"] == len(torn)
    kept = Path(records[5]["details"]["quarantined"])
    assert kept.parent == ledger.quarantine_dir and kept.read_bytes() == torn
    assert ledger.verify().ok
    assert ledger.append("tester", "model.registered", "model-0", {})["seq"] == 7
    assert ledger.verify().ok and kept.read_bytes() == torn
    assert ledger.repair() is None  # nothing left to repair


def test_an_append_after_a_crash_mid_write_quarantines_the_torn_line_and_goes_on(tmp_path):
    ledger = _ledger_with(tmp_path, n=3)
    before = ledger.records()
    with open(ledger.path, "ab") as handle:
        handle.write('{"seq": 4, "subject": "modèle-'.encode()[:-1])  # cut inside a character
    with open(file_witness(Settings(state_dir=tmp_path / "state")).path, "ab") as handle:
        handle.write(b'{"origin": "modelyard", "si')  # the witness's own write, cut short too
    assert ledger.records() == before
    record = ledger.append("tester", "model.registered", "model-1", {"after": "crash"})
    records = ledger.records()
    assert records[:3] == before
    assert [r["action"] for r in records[3:]] == [LEDGER_REPAIRED, "model.registered"] and record["seq"] == 5
    assert ledger.verify().ok
    assert list(ledger.quarantine_dir.iterdir())


# --- the state is a cache; appends are O(log n) --------------------------------------------------


def test_the_appenders_state_is_a_cache_rebuilt_or_caught_up_from_the_ledger(tmp_path):
    ledger = _ledger_with(tmp_path, n=5)
    stale = ledger.state_path.read_text()
    ledger.append("tester", "model.registered", "model-0", {})
    ledger.state_path.write_text(stale)  # as if the process died between the line and the state
    ledger.append("tester", "model.registered", "model-0", {})
    ledger.state_path.unlink()  # lost altogether
    ledger.append("tester", "deploy.succeeded", "model-0", {})
    assert [r["seq"] for r in ledger.records()] == list(range(1, 9))
    state = json.loads(ledger.state_path.read_text())
    assert state["size"] == 8 and len(state["frontier"]) == 1  # 8 = one perfect subtree
    assert ledger.verify().ok


def test_an_append_refuses_a_ledger_shorter_than_what_was_written_to_it(tmp_path):
    ledger = _ledger_with(tmp_path, n=4)
    _write(ledger, _lines(ledger)[:2])
    with pytest.raises(LedgerError, match="cut or replaced"):
        ledger.append("tester", "model.registered", "model-0", {})


# --- secrets and concurrency --------------------------------------------------------------------


def test_secrets_never_enter_the_ledger(tmp_path):
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    ledger.append(
        "cli", "stack.configured", "stack",
        {
            "api_token": "tok-123", "webhook_secret": "whs-456", "db_password": "pw-789",
            "database_url": "postgresql://me:hunter2@127.0.0.1:5432/db",
            "headers": {"Authorization": "Bearer abc.def"},
            "note": "called with Bearer xyz",
            "max_tokens": 256,
        },
    )
    text = ledger.path.read_text()
    for secret in ("tok-123", "whs-456", "pw-789", "hunter2", "abc.def", "xyz"):
        assert secret not in text
    details = ledger.records()[0]["details"]
    assert details["api_token"] == REDACTED
    assert details["database_url"] == f"postgresql://me:{REDACTED}@127.0.0.1:5432/db"
    assert details["max_tokens"] == 256


def _append_many(state_dir: str, worker: int, count: int) -> None:
    ledger = ledger_from_settings(Settings(state_dir=Path(state_dir)))
    for i in range(count):
        action = "deploy.succeeded" if i % 100 == 99 else "load.append"
        ledger.append(f"worker-{worker}", action, f"subject-{worker}", {"i": i})


def test_four_processes_appending_at_once_leave_a_valid_signed_ledger(tmp_path):
    state_dir = tmp_path / "state"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(state_dir), w, 500)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
        assert process.exitcode == 0
    ledger = ledger_from_settings(Settings(state_dir=state_dir))
    result = ledger.verify()
    assert result.ok, result.problem
    assert result.records == 2000
    records = ledger.records()
    assert [r["seq"] for r in records] == list(range(1, 2001))
    for worker in range(4):
        mine = [r["details"]["i"] for r in records if r["actor"] == f"worker-{worker}"]
        assert mine == list(range(500))
    sizes = [c.size for c in ledger.checkpoints()]
    deploys = [r["seq"] for r in records if r["action"] == "deploy.succeeded"]
    assert sizes[0] == 1 and sizes == sorted(set(sizes)) and set(deploys) <= set(sizes)
    assert all(b - a <= 64 for a, b in zip(sizes, sizes[1:])) and sizes[-1] > 2000 - 64


@pytest.mark.parametrize("subject,count", [("model-0", 3), ("model-1", 3), ("nothing", 0)])
def test_records_filter_by_subject(tmp_path, subject, count):
    assert len(_ledger_with(tmp_path, signed=False).records(subject=subject)) == count


def test_a_record_with_a_file_witness_elsewhere_is_witnessed_there(tmp_path):
    witness = FileWitness(tmp_path / "elsewhere" / "witness.jsonl")
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl", witnesses=[witness],
                         keys=CheckpointKeys(tmp_path / "k.key", tmp_path / "keys" / "k.pub"))
    ledger.append("tester", "deploy.succeeded", "fraud/1", {})
    kept = witness.read()
    assert len(kept) == 1 and Checkpoint.from_dict(kept[0][1]) == ledger.checkpoints()[-1]
