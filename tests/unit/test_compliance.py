"""The compliance report's pure parts: a document assembled from facts and real ledger records
has every Annex IV section, says "not recorded" where evidence is missing, escapes a hostile
model card, and carries inclusion proofs that verify (and are marked when they do not)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modelyard.catalog import TAG_ARTIFACT_SHA256, Action
from modelyard.environments import TAG_AUTHOR, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_TEAM
from modelyard.ledger import AuditLedger, CheckpointKeys
from modelyard.names import InvalidName
from modelyard.signing import TAG_SIGNATURE_SHA256, TAG_SIGNER
from tasks.compliance import (
    NOT_RECORDED, assemble_document, card_limitations, cited_records, prove_records, resolve_subject, verify_proof,
)
from tasks.compliance_template import render_html

ANNEX_IV_TITLES = (
    "Annex IV §1 General description of the AI system",
    "Annex IV §2 Development process and data",
    "Annex IV §3 Monitoring, functioning and control",
    "Annex IV §4 Appropriateness of the performance metrics",
    "Annex IV §5 Risk management",
    "Annex IV §6 Lifecycle changes",
    "Record integrity",
)
CARD = """# Model card: fraud-detector

## Intended use
Scoring card transactions.

## Limitations
- Not evaluated on merchants outside the EU.
- Degrades when the channel mix shifts.

## Lineage
| tag | value |
|---|---|
| modelyard.git_commit | abc123 |
"""


def _ledger(tmp_path: Path) -> AuditLedger:
    return AuditLedger(tmp_path / "audit" / "ledger.jsonl",
                       keys=CheckpointKeys(tmp_path / "creds" / "checkpoint.key", tmp_path / "keys" / "checkpoint.pub"))


def _version(env: str, model: str, version: str, **tags: str) -> dict:
    return {"environment": env, "registered_model": model, "version": version, "run_id": "run1",
            "created_at": "2026-12-01T10:00:00+00:00", "aliases": [], "copied_from": None, "tags": tags}


def _chain() -> list[dict]:
    lineage = {TAG_ARTIFACT_SHA256: "d" * 64, TAG_SIGNER: "s" * 64, TAG_SIGNATURE_SHA256: "g" * 64,
               TAG_TEAM: "risk-ml", TAG_AUTHOR: "alice", "modelyard.data_fingerprint": "f" * 64,
               "modelyard.git_commit": "abc123", "modelyard.lock_sha256": "l" * 64}
    dev = _version("dev", "fraud-detector", "3", **lineage)
    staging = _version("staging", "fraud-detector-staging", "1", **lineage)
    staging["tags"] |= {TAG_ORIGIN: "fraud-detector/3", TAG_SOURCE_MODEL: "fraud-detector", TAG_SOURCE_VERSION: "3"}
    staging["copied_from"] = "fraud-detector/3"
    return [dev, staging]


def _facts(chain: list[dict], card: str | None = CARD, complete: bool = True) -> dict:
    subject = {"model": "fraud-detector", "registered_model": "fraud-detector-staging", "version": "1",
               "environment": "staging"}
    if not complete:
        return {"subject": subject, "chain": chain, "run": None, "spec": None, "artifacts": {},
                "validation_run": None, "monitoring_runs": []}
    return {
        "subject": subject, "chain": chain,
        "run": {"run_id": "run1", "url": "http://mlflow/#/runs/run1",
                "metrics": {"holdout_roc_auc": 0.97, "champion_roc_auc": 0.95, "p95_single_row_latency_ms": 1.2}},
        "spec": {"name": "fraud-detector", "team": "risk-ml", "task": "binary_classification",
                 "data": {"target": "is_fraud"}, "estimator": {"kind": "gradient_boosting"},
                 "metrics": {"primary": "roc_auc", "slices": ["channel"]},
                 "policy": {"min_metrics": {"roc_auc": 0.9}, "max_regression": {"roc_auc": 0.01}},
                 "card": {"intended_use": "Scoring card transactions."}},
        "artifacts": {"decision": {"passed": True, "champion_version": "2", "reasons": [],
                                   "checks": [{"name": "min:roc_auc", "passed": True, "detail": "ok"}]},
                      "slices": [{"slice": "channel", "value": "web", "rows": 120, "roc_auc": 0.96}],
                      "validation_summary": {"success": True, "evaluated": 12, "failed": [], "suite": "champion's suite",
                                             "fingerprint": "f" * 64, "mlflow_run_id": "val1"},
                      "model_card": card},
        "validation_run": {"run_id": "val1", "expectations": [
            {"expectation": "expect_column_values_to_not_be_null", "column": "amount", "success": True,
             "observed": "0.0"}]},
        "monitoring_runs": [{"environment": "staging", "registered_model": "fraud-detector-staging", "version": "1",
                             "run_id": "mon1", "started_at": "2026-12-01T11:00:00+00:00", "status": "ok",
                             "metrics": {"drift_share": 0.1, "error_rate": 0.0}, "url": "http://mlflow/x"}],
    }


def _append_history(ledger: AuditLedger) -> None:
    """A version's life as the flows write it, among records about other versions."""
    ledger.append("flow:validate", Action.DATA_VALIDATED, "fraud-detector", {"mlflow_run_id": "val1", "success": True})
    ledger.append("flow:build", Action.MODEL_REGISTERED, "fraud-detector/3", {"artifact_sha256": "d" * 64})
    ledger.append("flow:build", Action.MODEL_REGISTERED, "other-model/1", {})
    ledger.append("flow:promote", Action.POLICY_DECIDED, "fraud-detector-staging/1",
                  {"environment": "staging", "allowed": True, "denials": []})
    ledger.append("flow:promote", Action.PROMOTION_COPIED, "fraud-detector-staging/1",
                  {"source_model": "fraud-detector", "source_version": "3", "environment": "staging"})
    ledger.append("flow:deploy", Action.DEPLOY_SUCCEEDED, "fraud-detector-staging/1", {"strategy": "blue_green"})
    ledger.append("flow:monitor", Action.MONITOR_DRIFT, "fraud-detector-staging/1", {"reason": "drift 0.6"})
    ledger.append("flow:incidents", Action.INCIDENT_OPENED, "fraud-detector-staging/1",
                  {"incident_id": "inc-1", "kind": "drift"})
    # resolved by the recovery: a rollback to another version, whose subject is that version
    ledger.append("flow:rollback", Action.AUTOMATIC_ROLLBACK, "fraud-detector-staging/2",
                  {"from_version": "1", "reason": "drift"})
    ledger.append("flow:incidents", Action.INCIDENT_RESOLVED, "fraud-detector-staging/2",
                  {"incident_id": "inc-1", "by": "recovery", "how": "rollback"})
    ledger.append("flow:deploy", Action.DEPLOY_SUCCEEDED, "fraud-detector-staging/2", {"strategy": "blue_green"})


def _document(tmp_path: Path, facts: dict | None = None) -> tuple[dict, AuditLedger]:
    ledger = _ledger(tmp_path)
    _append_history(ledger)
    records = ledger.records()
    chain = _chain()
    cited = cited_records(records, chain, "val1")
    proofs = prove_records(ledger, records, [r["seq"] for r in cited])
    status = {"ok": True, "records": len(records), "problem": None, "checkpoint": None, "witnessed": None}
    return assemble_document(facts or _facts(chain), cited, proofs, status, "2026-12-01T12:00:00+00:00"), ledger


class _Tags(HTMLParser):
    """Every start tag and its attributes, to see what a browser would run."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data) -> None:
        self.text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_records_follow_the_version_through_its_environments(tmp_path: Path):
    ledger = _ledger(tmp_path)
    _append_history(ledger)
    cited = cited_records(ledger.records(), _chain(), "val1")
    shown = [(r["action"], r["subject"]) for r in cited]
    assert shown == [
        (Action.DATA_VALIDATED, "fraud-detector"),  # its validation run
        (Action.MODEL_REGISTERED, "fraud-detector/3"),  # dev
        (Action.POLICY_DECIDED, "fraud-detector-staging/1"),
        (Action.PROMOTION_COPIED, "fraud-detector-staging/1"),
        (Action.DEPLOY_SUCCEEDED, "fraud-detector-staging/1"),
        (Action.MONITOR_DRIFT, "fraud-detector-staging/1"),
        (Action.INCIDENT_OPENED, "fraud-detector-staging/1"),
        (Action.AUTOMATIC_ROLLBACK, "fraud-detector-staging/2"),  # rolled back away from it
        (Action.INCIDENT_RESOLVED, "fraud-detector-staging/2"),  # its incident's resolution
    ]  # not other-model/1, not v2's own deploy


def test_every_annex_iv_section_is_in_the_document_and_the_page(tmp_path: Path):
    document, _ = _document(tmp_path)
    assert [s["title"] for s in document["sections"]] == list(ANNEX_IV_TITLES)
    json.dumps(document)  # a JSON document as it is written
    page = _parse(render_html(document))
    headings = [t for t in page.text if t.strip()]
    for title in ANNEX_IV_TITLES:
        assert title in headings
    # the table of contents links every section
    links = {attrs.get("href") for tag, attrs in page.tags if tag == "a"}
    assert {f"#{s['id']}" for s in document["sections"]} <= links
    # no external resource is needed to view it
    assert not [attrs for tag, attrs in page.tags if tag in ("link", "script", "img", "iframe")]


def test_lineage_evaluation_and_lifecycle_are_in_their_sections(tmp_path: Path):
    document, _ = _document(tmp_path)
    sections = {s["id"]: s for s in document["sections"]}
    lineage = next(b for b in sections["annex-iv-2"]["blocks"] if b["title"] == "Identity and lineage")
    values = {row["name"]: row["value"] for row in lineage["rows"]}
    assert values["Artifact digest (sha256)"] == "d" * 64
    assert values["Signature signer (key sha256)"] == "s" * 64
    assert values["Signature"] == "signed"
    slices = next(b for b in sections["annex-iv-2"]["blocks"] if b["title"] == "roc_auc by slice")
    assert slices["rows"] == [["channel", "web", "120", "0.9600"]]
    deploys = next(b for b in sections["annex-iv-6"]["blocks"] if b["title"] == "Deploys")
    assert [(r["action"], r["subject"], r["environment"]) for r in deploys["rows"]] == [
        (Action.DEPLOY_SUCCEEDED, "fraud-detector-staging/1", "staging")]
    assert deploys["rows"][0]["time"]
    incidents = next(b for b in sections["annex-iv-3"]["blocks"] if b["title"] == "Incidents")
    assert incidents["rows"][0][0] == "inc-1" and incidents["rows"][0][5] != "open"
    limitations = next(b for b in sections["annex-iv-5"]["blocks"] if b["title"].startswith("Known limitations"))
    assert [r["value"] for r in limitations["rows"]] == ["Not evaluated on merchants outside the EU.",
                                                         "Degrades when the channel mix shifts."]


def test_missing_evidence_is_said_not_recorded(tmp_path: Path):
    dev = _version("dev", "fraud-detector", "1")  # no tags at all: unsigned, no lineage
    dev["run_id"] = None
    facts = _facts([dev], complete=False)
    facts["subject"] = {"model": "fraud-detector", "registered_model": "fraud-detector", "version": "1",
                        "environment": "dev"}
    status = {"ok": True, "records": 0, "problem": None, "checkpoint": None, "witnessed": None}
    document = assemble_document(facts, [], {}, status)
    blocks = {(s["id"], b["title"]): b for s in document["sections"] for b in s["blocks"]}
    lineage = {r["name"]: r for r in blocks[("annex-iv-2", "Identity and lineage")]["rows"]}
    assert lineage["Signature"]["value"].startswith("not signed")
    for name in ("Artifact digest (sha256)", "Signature signer (key sha256)", "Code commit", "Data fingerprint"):
        assert lineage[name]["value"].startswith(NOT_RECORDED) and not lineage[name]["recorded"]
    for key in [("annex-iv-3", "Human oversight: approvals"), ("annex-iv-5", "Policy decisions (organisation and spec policy)"),
                ("annex-iv-6", "Deploys"), ("annex-iv-6", "Rollbacks"), ("annex-iv-2", "Model card"),
                ("annex-iv-2", "Expectations checked"), ("annex-iv-2", "Metrics on the holdout")]:
        assert blocks[key]["empty"].startswith(NOT_RECORDED), key
    monitoring = blocks[("annex-iv-3", "Monitoring runs (post-market monitoring, Annex IV §9)")]
    assert monitoring["empty"] == "not recorded (no monitoring run of this version in MLflow)"
    # Every section still there, and the page says it in words.
    assert [s["title"] for s in document["sections"]] == list(ANNEX_IV_TITLES)
    text = " ".join(_parse(render_html(document)).text)
    assert "not recorded (no approval was requested or given for this version)" in text
    assert "not recorded (this version was never deployed)" in text


def test_hostile_model_card_and_records_are_escaped(tmp_path: Path):
    hostile = ("# Card <script>alert('card')</script>\n\n<img src=x onerror=alert(1)>\n\n"
               "[click](javascript:alert(2)) <iframe src='http://evil'></iframe>\n\n## Limitations\n"
               "- <b onmouseover=alert(3)>bold</b>\n")
    chain = _chain()
    facts = _facts(chain, card=hostile)
    facts["spec"]["card"]["intended_use"] = "</td><script>alert('use')</script>"
    ledger = _ledger(tmp_path)
    ledger.append("flow:approve", Action.APPROVAL_REJECTED, "fraud-detector-staging/1",
                  {"identity": "mallory", "comment": "<script>alert('comment')</script>"})
    records = ledger.records()
    proofs = prove_records(ledger, records, [1])
    page = render_html(assemble_document(facts, records, proofs, {"ok": True}))
    parsed = _parse(page)
    assert not [tag for tag, _ in parsed.tags if tag in ("script", "img", "iframe", "b")]
    assert not [attrs for _, attrs in parsed.tags if any(name.startswith("on") for name in attrs)]
    assert not [attrs for _, attrs in parsed.tags if str(attrs.get("href", "")).startswith("javascript:")]
    text = "".join(parsed.text)
    assert "<script>alert('comment')</script>" in text  # shown as text, not run
    assert "<img src=x onerror=alert(1)>" in text
    assert "</td><script>alert('use')</script>" in text


def test_each_cited_record_carries_a_proof_that_verifies(tmp_path: Path):
    document, ledger = _document(tmp_path)
    assert document["records"]
    trusted = ledger.keys.trusted()
    for record in document["records"]:
        proof = record["proof"]
        assert proof["verified"], proof["verification"]
        assert verify_proof(proof, trusted) == (True, proof["verification"])
        assert proof["record"]["hash"] == record["hash"]
        assert proof["tree_size"] == proof["checkpoint"]["size"] >= record["seq"]
    rows = [r for s in document["sections"] for b in s["blocks"] if b["kind"] == "records" for r in b["rows"]]
    assert rows and all(r["proof"]["verified"] for r in rows)
    page = _parse(render_html(document))
    verified_cells = [attrs for tag, attrs in page.tags if tag == "td" and "proof verified" in attrs.get("class", "")]
    assert len(verified_cells) >= len(rows)


def test_a_proof_of_an_edited_record_or_a_forged_checkpoint_is_marked_not_verified(tmp_path: Path):
    ledger = _ledger(tmp_path)
    _append_history(ledger)
    records = ledger.records()
    proof = prove_records(ledger, records, [5])[5]
    trusted = ledger.keys.trusted()
    edited = {**proof, "record": {**proof["record"], "details": {"source_model": "someone-else"}}}
    assert verify_proof(edited, trusted) == (False, "the record's hash does not match its content")
    forged = {**proof, "checkpoint": {**proof["checkpoint"], "root": "0" * 64}}
    ok, why = verify_proof(forged, trusted)
    assert not ok and "signature" in why
    # A record edited in the copy the report reads (not in the signed tree) is marked, not hidden.
    tampered = [dict(r) for r in records]
    tampered[4] = {**tampered[4], "details": {"environment": "production"}}
    marked = prove_records(ledger, tampered, [5])[5]
    assert marked["verified"] is False and "hash" in marked["verification"]


def test_a_record_newer_than_every_checkpoint_gets_one_signed(tmp_path: Path):
    ledger = _ledger(tmp_path)
    _append_history(ledger)
    ledger.append("flow:monitor", Action.MONITOR_SERVICE, "fraud-detector-staging/1", {"reason": "p99"})
    records = ledger.records()
    assert max(c.size for c in ledger.checkpoints()) < len(records)  # a monitor record signs no checkpoint
    proof = prove_records(ledger, records, [len(records)])[len(records)]
    assert proof["verified"] and proof["tree_size"] == len(records)


def test_card_limitations_are_read_from_the_card():
    assert card_limitations(CARD) == ["Not evaluated on merchants outside the EU.",
                                      "Degrades when the channel mix shifts."]
    assert card_limitations(None) == []


def test_subject_names_are_checked_and_environments_resolved():
    assert resolve_subject("fraud-detector", "3") == {"model": "fraud-detector", "registered_model": "fraud-detector",
                                                      "version": "3", "environment": "dev"}
    assert resolve_subject("fraud-detector", "1", "production")["registered_model"] == "fraud-detector-production"
    assert resolve_subject("fraud-detector-staging", "2")["environment"] == "staging"
    with pytest.raises(InvalidName, match="^model:"):
        resolve_subject("../etc", "1")
    with pytest.raises(InvalidName, match="^version:"):
        resolve_subject("fraud-detector", "1; rm")
    with pytest.raises(InvalidName, match="^env:"):
        resolve_subject("fraud-detector", "1", "qa")
    with pytest.raises(InvalidName, match="^env:.*staging registered model"):
        resolve_subject("fraud-detector-staging", "1", "production")


def _cli() -> typer.Typer:
    from modelyard.cli.report import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # two commands, so that typer keeps `report` as a subcommand
        pass

    return app


@pytest.mark.parametrize(("arguments", "named"), [
    (["report", "bad/name", "1"], "MODEL"),
    (["report", "fraud-detector", "v1"], "VERSION"),
    (["report", "fraud-detector", "1", "--env", "qa"], "--env"),
])
def test_report_command_refuses_bad_names_before_touching_the_stack(arguments: list[str], named: str):
    result = CliRunner().invoke(_cli(), arguments)
    assert result.exit_code == 2
    assert named in result.output
