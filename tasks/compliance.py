"""The compliance report of one model version: the evidence an auditor asks for, laid out as the
EU AI Act's Annex IV technical documentation, gathered from the registry, the version's MLflow run
and the audit ledger — every ledger record cited with its Merkle inclusion proof, checked before
it is shown.

Fetching (MLflow, the ledger) and assembling (facts → document) are apart: ``assemble_document``
is a pure function of plain dicts, so the document's shape is testable without a stack.
``tasks.compliance_template`` renders the document as one self-contained HTML page. What is not
known is said ("not recorded"), never left out.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelyard.audit import append_audit_record, flow_actor
from modelyard.catalog import TAG_ARTIFACT_SHA256, TAG_DEPLOY_DETAIL, TAG_DEPLOY_STATUS, Action
from modelyard.environments import (
    ENVIRONMENTS, TAG_AUTHOR, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, TAG_TEAM, environment_model,
    split_environment,
)
from modelyard.ledger import CHECKPOINT_FORMAT, AuditLedger, Checkpoint, record_hash, record_leaf, signature_ok
from modelyard.merkle import MerkleTree, verify_inclusion
from modelyard.names import InvalidName, check_model_name, check_version
from modelyard.resources import get_resources
from modelyard.resources.registry import SPEC_ARTIFACT, artifact_url
from modelyard.settings import Settings
from modelyard.signing import TAG_SIGNATURE_SHA256, TAG_SIGNER

REPORT_FORMAT = "modelyard-compliance-report/v1"
NOT_RECORDED = "not recorded"
REPORT_FOLDER = "compliance"  # on the version's MLflow run
# What the pipeline logs on a version's run (tasks/registry.py, tasks/model_pipeline.py).
DECISION_ARTIFACT = "evaluation/decision.json"
SLICES_ARTIFACT = "evaluation/slice_metrics.json"
VALIDATION_SUMMARY_ARTIFACT = "validation/summary.json"
MODEL_CARD_ARTIFACT = "model_card.md"
GX_RESULT_ARTIFACT = "validation/gx_result.json"  # on the validation run
MONITORING_EXPERIMENT_SUFFIX = "-monitoring"  # tasks/monitor_steps.py log_monitoring_task
MAX_MONITORING_RUNS = 1000

# Which ledger actions go where in the report.
APPROVAL_ACTIONS = frozenset({Action.APPROVAL_REQUESTED, Action.APPROVAL_GIVEN, Action.APPROVAL_REJECTED,
                              Action.APPROVAL_REFUSED, Action.APPROVAL_TIMED_OUT, Action.APPROVAL_SUPERSEDED})
POLICY_ACTIONS = frozenset({Action.POLICY_DECIDED})
MONITOR_ACTIONS = frozenset({Action.MONITOR_DRIFT, Action.MONITOR_PERFORMANCE, Action.MONITOR_SERVICE,
                             Action.MONITOR_INVALID_DATA})
INCIDENT_ACTIONS = frozenset({Action.INCIDENT_OPENED, Action.INCIDENT_ACKNOWLEDGED, Action.INCIDENT_RESOLVED})
SERVING_ACTIONS = frozenset({Action.SERVING_REPLICA_DOWN, Action.SERVING_REPLICA_RESTORED, Action.SERVING_RESTORED,
                             Action.SERVING_REPAIRED, Action.SERVING_RESTORE_FAILED})
PROMOTION_ACTIONS = frozenset({Action.DATA_VALIDATED, Action.DATA_REJECTED, Action.MODEL_REGISTERED,
                               Action.MODEL_EVALUATED, Action.MODEL_PROMOTED, Action.PROMOTION_REQUESTED,
                               Action.PROMOTION_COPIED, Action.PROMOTION_REFUSED})
DEPLOY_ACTIONS = frozenset({Action.IMAGE_BUILT, Action.DEPLOY_STARTED, Action.DEPLOY_SUCCEEDED})
ROLLBACK_ACTIONS = frozenset({Action.DEPLOY_ROLLED_BACK, Action.AUTOMATIC_ROLLBACK, Action.AUTOMATIC_ROLLBACK_FAILED,
                              Action.MANUAL_ROLLBACK, Action.MANUAL_ROLLBACK_FAILED})
RISK_ACTIONS = frozenset({Action.MODEL_SIGNATURE_REFUSED, Action.PROMOTION_REFUSED})
# Details worth a glance in a record's one-line summary, in this order.
SUMMARY_KEYS = ("environment", "decision", "allowed", "identity", "comment", "reason", "denials", "strategy",
                "endpoint", "from_version", "source_model", "source_version", "incident_id", "kind", "by", "how",
                "note", "alias", "previous", "passed", "success", "deadline", "url")


class VersionNotFound(LookupError):
    """The model version a report was asked for is not in the registry."""


# --- naming the subject ------------------------------------------------------------------------


def resolve_subject(model: str, version: str, env: str | None = None) -> dict[str, str]:
    """The spec's model, the registered model, the version and its environment a report is
    about. ``model`` is the spec's name (``env`` picks the environment, default dev) or an
    environment's registered model (``fraud-detector-production``); InvalidName names the field."""
    check_model_name(model, "model")
    version = check_version(version, "version")
    base, named_env = split_environment(model)
    if env is not None and env not in ENVIRONMENTS:
        raise InvalidName(f"env: {env!r} is not one of {', '.join(ENVIRONMENTS)}")
    if env is None or env == named_env:
        return {"model": base, "registered_model": model, "version": version, "environment": named_env}
    if named_env != "dev":
        raise InvalidName(f"env: {model!r} is the {named_env} registered model; it has no {env} versions "
                          f"(ask for {base!r} with --env {env})")
    return {"model": model, "registered_model": environment_model(model, env), "version": version,
            "environment": env}


# --- fetching: the registry and the version's runs -------------------------------------------


def _millis_iso(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds") if millis else None


def _get_version(client: MlflowClient, registered: str, version: str):
    try:
        return client.get_model_version(registered, version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise VersionNotFound(f"{registered} v{version} is not in the registry "
                                  f"(see the versions of {registered!r} in MLflow)") from None
        raise


def version_facts(mv: Any, environment: str) -> dict[str, Any]:
    """One registered version as the report shows it."""
    tags = dict(mv.tags or {})
    source = f"{tags[TAG_SOURCE_MODEL]}/{tags.get(TAG_SOURCE_VERSION, '?')}" if TAG_SOURCE_MODEL in tags else None
    return {"environment": environment, "registered_model": mv.name, "version": str(mv.version),
            "run_id": mv.run_id or None, "created_at": _millis_iso(mv.creation_timestamp),
            "aliases": sorted(getattr(mv, "aliases", None) or []), "copied_from": source, "tags": tags}


def lineage_chain(client: MlflowClient, registered: str, version: str) -> list[dict[str, Any]]:
    """The version in every environment it went through: the version first registered (its
    ``modelyard.origin``) and every copy of it, dev first. VersionNotFound when it is not there."""
    start = _get_version(client, registered, version)
    origin = start.tags.get(TAG_ORIGIN) or f"{registered}/{version}"
    origin_model, _, origin_version = origin.rpartition("/")
    base = split_environment(origin_model)[0]
    chain: list[dict[str, Any]] = []
    for env in ENVIRONMENTS:
        try:
            name = environment_model(base, env)
        except InvalidName:
            continue
        found = [mv for mv in client.search_model_versions(f"name='{name}'")
                 if mv.tags.get(TAG_ORIGIN) == origin or (name == origin_model and str(mv.version) == origin_version)]
        # search_model_versions leaves out aliases; get_model_version fills them in.
        chain += [version_facts(client.get_model_version(name, mv.version), env)
                  for mv in sorted(found, key=lambda mv: int(mv.version))]
    if not any(c["registered_model"] == registered and c["version"] == version for c in chain):
        chain.append(version_facts(start, split_environment(registered)[1]))  # tags edited by hand: still reported
    return chain


def run_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of an artifact a run logged, None when it did not log it (MLflow errors raise)."""
    folder = path.rpartition("/")[0] or None
    if path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _json_artifact(client: MlflowClient, run_id: str, path: str) -> Any:
    text = run_artifact(client, run_id, path)
    return json.loads(text) if text is not None else None


def expectation_rows(gx_result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each expectation GX checked: its type, column, outcome and what it observed."""
    rows = []
    for result in gx_result.get("results") or []:
        config = result.get("expectation_config") or {}
        kwargs = config.get("kwargs") or {}
        outcome = result.get("result") or {}
        observed = outcome.get("observed_value", outcome.get("unexpected_percent"))
        rows.append({"expectation": config.get("type") or config.get("expectation_type"),
                     "column": kwargs.get("column"), "success": bool(result.get("success")),
                     "observed": None if observed is None else str(observed)[:120]})
    return rows


def validation_run_id(summary: Mapping[str, Any] | None, tags: Mapping[str, str]) -> str | None:
    """The validation run of a version: its summary's, else the one its lineage tag names."""
    if summary and summary.get("mlflow_run_id"):
        return str(summary["mlflow_run_id"])
    found = re.search(r"\(run ([0-9a-f]+)\)", tags.get("modelyard.validation", ""))
    return found[1] if found else None


def fetch_validation_run(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    gx = _json_artifact(client, run_id, GX_RESULT_ARTIFACT)
    return {"run_id": run_id, "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": dict(run.data.metrics), "expectations": expectation_rows(gx) if gx else None}


def fetch_monitoring_runs(client: MlflowClient, settings: Settings, chain: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The monitor's MLflow runs of the version, in every environment, oldest first."""
    rows: list[dict[str, Any]] = []
    for facts in chain:
        model, version = facts["registered_model"], facts["version"]
        names = dict.fromkeys([f"{model}{MONITORING_EXPERIMENT_SUFFIX}",
                               f"{split_environment(model)[0]}{MONITORING_EXPERIMENT_SUFFIX}"])
        for name in names:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                continue
            runs = client.search_runs([experiment.experiment_id], f"tags.`modelyard.version` = '{version}'",
                                      max_results=MAX_MONITORING_RUNS, order_by=["attributes.start_time ASC"])
            for run in runs:
                if run.data.tags.get("modelyard.model", model) != model:
                    continue
                rows.append({"environment": facts["environment"], "registered_model": model, "version": version,
                             "run_id": run.info.run_id, "started_at": _millis_iso(run.info.start_time),
                             "status": run.data.tags.get("modelyard.status"), "metrics": dict(run.data.metrics),
                             "url": artifact_url(settings.mlflow_url, run.info.run_id, "verdict.json")})
    return sorted(rows, key=lambda r: r["started_at"] or "")


def fetch_facts(settings: Settings, client: MlflowClient, subject: Mapping[str, str]) -> dict[str, Any]:
    """Everything the registry and MLflow know of the version: the input of ``assemble_document``."""
    chain = lineage_chain(client, subject["registered_model"], subject["version"])
    reported = next(c for c in chain if c["registered_model"] == subject["registered_model"]
                    and c["version"] == subject["version"])
    run_id = reported["run_id"]
    facts: dict[str, Any] = {"subject": dict(subject), "chain": chain, "run": None, "spec": None,
                             "artifacts": {}, "validation_run": None, "mlflow_url": settings.mlflow_url}
    if run_id:
        run = client.get_run(run_id)
        facts["run"] = {"run_id": run_id, "metrics": dict(run.data.metrics), "params": dict(run.data.params),
                        "url": f"{settings.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run_id}"}
        facts["spec"] = _json_artifact(client, run_id, SPEC_ARTIFACT)
        slices = _json_artifact(client, run_id, SLICES_ARTIFACT)
        summary = _json_artifact(client, run_id, VALIDATION_SUMMARY_ARTIFACT)
        facts["artifacts"] = {"decision": _json_artifact(client, run_id, DECISION_ARTIFACT),
                              "slices": slices.get("slices") if isinstance(slices, dict) else None,
                              "validation_summary": summary,
                              "model_card": run_artifact(client, run_id, MODEL_CARD_ARTIFACT)}
        validation_id = validation_run_id(summary, reported["tags"])
        if validation_id:
            facts["validation_run"] = fetch_validation_run(client, validation_id) or {"run_id": validation_id}
    facts["monitoring_runs"] = fetch_monitoring_runs(client, settings, chain)
    return facts


# --- the ledger: which records, and their proofs -----------------------------------------------


def incident_id(record: Mapping[str, Any]) -> str | None:
    details = record.get("details") if isinstance(record.get("details"), Mapping) else {}
    for key in ("incident_id", "incident", "id"):
        if details.get(key) is not None:
            return str(details[key])
    return None


def cited_records(records: Iterable[Mapping[str, Any]], chain: Sequence[Mapping[str, Any]],
                  validation_run: str | None = None) -> list[dict[str, Any]]:
    """The ledger records about the version in any of its environments, oldest first: those whose
    subject is it; a rollback away from it; a promotion from it; a model-wide record naming it;
    the validation of its data; and every transition of an incident opened on it."""
    versions = {(c["registered_model"], c["version"]) for c in chain}
    names = {name for name, _ in versions}
    records = list(records)

    def about(record: Mapping[str, Any]) -> bool:
        model, _, version = str(record.get("subject", "")).partition("/")
        details = record.get("details") if isinstance(record.get("details"), Mapping) else {}
        if (model, version) in versions:
            return True
        if model in names and (model, str(details.get("from_version"))) in versions:
            return True
        if (str(details.get("source_model")), str(details.get("source_version"))) in versions:
            return True
        if not version and model in names and (model, str(details.get("version"))) in versions:
            return True
        return (record.get("action") in (Action.DATA_VALIDATED, Action.DATA_REJECTED) and validation_run is not None
                and details.get("mlflow_run_id") == validation_run)

    chosen = [r for r in records if about(r)]
    incidents = {incident_id(r) for r in chosen if r.get("action") in INCIDENT_ACTIONS} - {None}
    seqs = {r["seq"] for r in chosen}
    chosen += [r for r in records if r["seq"] not in seqs and r.get("action") in INCIDENT_ACTIONS
               and incident_id(r) in incidents]
    return sorted((dict(r) for r in chosen), key=lambda r: r["seq"])


def verify_proof(proof: Mapping[str, Any], trusted: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether an inclusion proof holds, as infra/scripts/verify_inclusion.py checks it: the
    checkpoint's signature by a published key, the record's own hash, its leaf, and the audit
    path from that leaf to the signed tree head."""
    try:
        checkpoint = Checkpoint.from_dict(proof["checkpoint"])
        record = proof["record"]
        if not signature_ok(checkpoint, trusted):
            return False, f"the checkpoint's signature does not verify with a published key ({checkpoint.key_id})"
        if record_hash(record) != record.get("hash"):
            return False, "the record's hash does not match its content"
        leaf = record_leaf(record)
        if leaf.hex() != proof["leaf_hash"] or record.get("seq") != proof["leaf_index"] + 1:
            return False, "the record is not the proof's leaf"
        if proof["tree_size"] != checkpoint.size:
            return False, "the proof is for another tree size than its checkpoint's"
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        if not verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, bytes.fromhex(checkpoint.root)):
            return False, "the audit path does not lead to the signed tree head"
    except (KeyError, TypeError, ValueError) as error:
        return False, f"not a proof: {error}"
    return True, (f"leaf {proof['leaf_index']} of the tree of {checkpoint.size} records signed "
                  f"{checkpoint.time} by key {checkpoint.key_id}")


def prove_records(ledger: AuditLedger, records: Sequence[Mapping[str, Any]], seqs: Iterable[int]) -> dict[int, dict]:
    """An inclusion proof of each record ``seqs`` names, all in one signed tree head (the newest
    signed checkpoint holding them all; one is signed now when none does, as `audit prove`
    does), each verified and marked. ``records``: the whole ledger, as read."""
    seqs = sorted(set(seqs))
    if not seqs:
        return {}
    if ledger.keys is None:
        raise ValueError("ledger: it has no checkpoint key, so no record can be proven")
    trusted = ledger.keys.trusted()
    covering = [c for c in ledger.checkpoints() if seqs[-1] <= c.size <= len(records) and c.origin == ledger.origin
                and signature_ok(c, trusted)]
    if covering:
        checkpoint = covering[-1]
    else:
        checkpoint = ledger.checkpoint(subject=str(records[seqs[-1] - 1].get("subject", "ledger")))
        records, trusted = ledger.records(), ledger.keys.trusted()
    leaves = [record_leaf(r) for r in records[:checkpoint.size]]
    tree = MerkleTree(leaves)
    proofs = {}
    for seq in seqs:
        record = dict(records[seq - 1])
        if record.get("seq") != seq:
            raise ValueError(f"records: record {seq} is not at its place: pass the whole ledger, oldest first")
        proof = {"format": CHECKPOINT_FORMAT, "seq": seq, "leaf_index": seq - 1, "tree_size": checkpoint.size,
                 "record": record, "leaf_hash": leaves[seq - 1].hex(),
                 "audit_path": [h.hex() for h in tree.inclusion_proof(seq - 1, checkpoint.size)],
                 "checkpoint": checkpoint.as_dict()}
        verified, why = verify_proof(proof, trusted)
        proofs[seq] = {**proof, "verified": verified, "verification": why}
    return proofs


def ledger_status(ledger: AuditLedger) -> dict[str, Any]:
    """``audit verify`` of the whole ledger (with its witnesses), as the report shows it."""
    result = ledger.verify()
    return {"ok": result.ok, "records": result.records, "problem": str(result.problem) if result.problem else None,
            "checkpoint": result.checkpoint.as_dict() if result.checkpoint else None,
            "witnessed": ({"source": result.witnessed.source, "checkpoint": result.witnessed.checkpoint.as_dict()}
                          if result.witnessed else None),
            "unvouched": result.unvouched, "witness_errors": list(result.witness_errors)}


# --- assembling: facts → the document (pure) ---------------------------------------------------


def _missing(why: str | None = None) -> str:
    return f"{NOT_RECORDED} ({why})" if why else NOT_RECORDED


def _fact(name: str, value: Any, why: str | None = None) -> dict[str, Any]:
    """One named fact; an absent value says so."""
    if value is None or value == "" or value == [] or value == {}:
        return {"name": name, "value": _missing(why), "recorded": False}
    if isinstance(value, float):
        value = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        value = "; ".join(str(v) for v in value)
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    return {"name": name, "value": str(value), "recorded": True}


def _facts(title: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "facts", "title": title, "rows": rows}


def _table(title: str, columns: list[str], rows: list[list[Any]], empty: str, collapsed: bool = False) -> dict:
    cells = [["" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row] for row in rows]
    return {"kind": "table", "title": title, "columns": columns, "rows": cells,
            "empty": empty if not rows else None, "collapsed": collapsed}


def record_summary(record: Mapping[str, Any], limit: int = 160) -> str:
    """The details of a record worth a glance, on one line."""
    details = record.get("details") if isinstance(record.get("details"), Mapping) else {}
    decision = details.get("decision") if isinstance(details.get("decision"), Mapping) else {}
    parts = []
    for key in SUMMARY_KEYS:
        value = details.get(key, decision.get(key))
        if value is None or value == "" or isinstance(value, Mapping):
            continue
        if key == "denials" and isinstance(value, list):
            value = "; ".join(str(d.get("reason", d)) if isinstance(d, Mapping) else str(d) for d in value) or "none"
        text = str(value).replace("\n", " ")
        parts.append(f"{key}: {text[:limit]}")
    return ", ".join(parts)


def _records(title: str, records: list[dict[str, Any]], proofs: Mapping[int, Mapping[str, Any]], empty: str) -> dict:
    rows = []
    for record in records:
        proof = proofs.get(record["seq"])
        rows.append({"seq": record["seq"], "time": record.get("time"), "actor": record.get("actor"),
                     "action": record.get("action"), "subject": record.get("subject"),
                     "environment": split_environment(str(record.get("subject", "")).partition("/")[0])[1],
                     "summary": record_summary(record),
                     "proof": {"verified": bool(proof and proof["verified"]),
                               "text": (proof["verification"] if proof else "no inclusion proof")}})
    return {"kind": "records", "title": title, "rows": rows, "empty": empty if not rows else None}


def incidents(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each incident among ``records``, with the time of each of its transitions."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("action") not in INCIDENT_ACTIONS:
            continue
        key = incident_id(record) or f"seq {record['seq']}"
        details = record.get("details") if isinstance(record.get("details"), Mapping) else {}
        entry = found.setdefault(key, {"id": key, "kind": None, "subject": record.get("subject"), "opened": None,
                                       "acknowledged": None, "resolved": None, "resolved_by": None})
        entry["kind"] = entry["kind"] or details.get("kind")
        if record["action"] == Action.INCIDENT_OPENED:
            entry["opened"] = record.get("time")
        elif record["action"] == Action.INCIDENT_ACKNOWLEDGED:
            entry["acknowledged"] = record.get("time")
        else:
            entry["resolved"] = record.get("time")
            entry["resolved_by"] = details.get("how") or details.get("by") or details.get("identity")
    return list(found.values())


def card_limitations(card: str | None) -> list[str]:
    """The items of the model card's "Limitations" section."""
    if not card:
        return []
    items, inside = [], False
    for line in card.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip().lower() == "limitations"
        elif inside and line.lstrip().startswith(("- ", "* ")):
            items.append(line.lstrip()[2:].strip())
    return items


def _of(records: list[dict[str, Any]], actions: frozenset) -> list[dict[str, Any]]:
    return [r for r in records if r.get("action") in actions]


def _section(section_id: str, title: str, annex: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": section_id, "title": title, "annex_iv": annex, "blocks": blocks}


def _general(facts: Mapping[str, Any], reported: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    tags = reported["tags"]
    card = spec.get("card") or {}
    data = spec.get("data") or {}
    chain = facts["chain"]
    return _section("annex-iv-1", "Annex IV §1 General description of the AI system", "1", [
        _facts("The AI system", [
            _fact("Model", facts["subject"]["model"]),
            _fact("Version reported", f"{reported['registered_model']} v{reported['version']} "
                                      f"({reported['environment']})"),
            _fact("Intended use", card.get("intended_use"), "the spec's card has no intended use"),
            _fact("Task", spec.get("task"), "no spec recorded with the version"),
            _fact("Target", data.get("target"), "no spec recorded with the version"),
            _fact("Estimator", (spec.get("estimator") or {}).get("kind"), "no spec recorded with the version"),
            _fact("Owning team", tags.get(TAG_TEAM) or spec.get("team"), "no team tag or spec"),
            _fact("Owner (model card)", card.get("owner"), "the card names no owner"),
            _fact("Author (who trained or requested it)", tags.get(TAG_AUTHOR), "no author tag on the version"),
            _fact("Serving format", tags.get("modelyard.serving_format")),
            _fact("Registered at", chain[0]["created_at"] if chain else None),
            _fact("Deploy status", " — ".join(filter(None, [tags.get(TAG_DEPLOY_STATUS), tags.get(TAG_DEPLOY_DETAIL)])),
                  "never deployed"),
        ]),
        _table("The version in each environment",
               ["environment", "registered model", "version", "registered at", "copied from", "aliases", "deploy status"],
               [[c["environment"], c["registered_model"], c["version"], c["created_at"],
                 c["copied_from"] or "— (first registered here)", ", ".join(c["aliases"]) or "—",
                 c["tags"].get(TAG_DEPLOY_STATUS) or NOT_RECORDED] for c in chain],
               _missing("the version is in no environment")),
    ])


def _lineage_block(reported: Mapping[str, Any], run: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    tags = reported["tags"]
    signer, signature = tags.get(TAG_SIGNER), tags.get(TAG_SIGNATURE_SHA256)
    status = "signed" if signer and signature else "not signed: no signature recorded on the version"
    try:
        packages = json.loads(tags.get("modelyard.packages") or "{}")
    except ValueError:
        packages = {}
    return [
        _facts("Identity and lineage", [
            _fact("Data fingerprint", tags.get("modelyard.data_fingerprint")),
            _fact("Data source", tags.get("modelyard.data_source")),
            _fact("Code commit", tags.get("modelyard.git_commit")),
            _fact("Dependency lock sha256", tags.get("modelyard.lock_sha256")),
            _fact("Artifact digest (sha256)", tags.get(TAG_ARTIFACT_SHA256)),
            _fact("Signature", status),
            _fact("Signature signer (key sha256)", signer, "unsigned"),
            _fact("Signature sha256", signature, "unsigned"),
            _fact("MLflow run", run and run.get("run_id"), "the version has no MLflow run"),
            _fact("MLflow run link", run and run.get("url"), "the version has no MLflow run"),
        ]),
        _table("Packages the version was built with", ["package", "version"], sorted(packages.items()),
               _missing("no package list on the version"), collapsed=True),
    ]


def _validation_blocks(facts: Mapping[str, Any], reported: Mapping[str, Any]) -> list[dict[str, Any]]:
    summary = facts["artifacts"].get("validation_summary") or {}
    run = facts.get("validation_run") or {}
    failed = summary.get("failed")
    rows = run.get("expectations") or []
    return [
        _facts("Data validation (Great Expectations)", [
            _fact("Result", ("passed" if summary["success"] else "failed") if "success" in summary else None,
                  "no validation summary on the version's run"),
            _fact("Expectations evaluated", summary.get("evaluated")),
            _fact("Expectations failed", (", ".join(failed) or "none") if failed is not None else None),
            _fact("Suite", summary.get("suite")),
            _fact("Data fingerprint validated", summary.get("fingerprint")),
            _fact("Validation run", run.get("run_id"), "no validation run recorded"),
            _fact("Lineage tag", reported["tags"].get("modelyard.validation")),
        ]),
        _table("Expectations checked", ["expectation", "column", "result", "observed"],
               [[r["expectation"], r["column"] or "—", "passed" if r["success"] else "FAILED", r["observed"] or "—"]
                for r in rows],
               _missing("the validation run's GX result is not in MLflow"), collapsed=True),
    ]


def _evaluation_blocks(facts: Mapping[str, Any], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    decision = facts["artifacts"].get("decision")
    metrics = (facts.get("run") or {}).get("metrics") or {}
    mine = {k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")}
    champion = {k.removeprefix("champion_"): v for k, v in metrics.items() if k.startswith("champion_")}
    primary = (spec.get("metrics") or {}).get("primary") or "primary metric"
    slices = facts["artifacts"].get("slices")
    configured = (spec.get("metrics") or {}).get("slices")
    champion_version = decision.get("champion_version") if decision else None
    rows = []
    for name in sorted(mine):
        theirs = champion.get(name)
        rows.append([name, mine[name], theirs if theirs is not None else "—",
                     f"{mine[name] - theirs:+.4f}" if theirs is not None else "—"])
    return [
        _facts("Evaluation against the champion", [
            _fact("Decision", ("passed" if decision["passed"] else "rejected") if decision else None,
                  "no evaluation/decision.json on the version's run"),
            _fact("Champion compared with", f"v{champion_version}" if champion_version else (
                "none: no champion at the time (the first version to pass)" if decision else None)),
            _fact("Reasons", (decision.get("reasons") or ["all checks passed"]) if decision else None),
            _fact("p95 single-row latency (ms)", metrics.get("p95_single_row_latency_ms")),
        ]),
        _table("Metrics on the holdout", ["metric", "this version", "champion", "difference"], rows,
               _missing("no holdout metrics on the version's run")),
        _table("Checks of the promotion policy", ["check", "result", "detail"],
               [[c.get("name"), "passed" if c.get("passed") else "FAILED", c.get("detail")]
                for c in (decision or {}).get("checks", [])],
               _missing("no evaluation decision recorded")),
        _table(f"{primary} by slice", ["slice", "value", "rows", primary],
               [[r.get("slice"), r.get("value"), r.get("rows"), r.get(primary)] for r in slices or []],
               _missing("the spec configures no slices" if configured == [] or (spec and not configured)
                        else "no slice metrics on the version's run")),
    ]


def _development(facts: Mapping[str, Any], reported: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    card = facts["artifacts"].get("model_card")
    return _section("annex-iv-2", "Annex IV §2 Development process and data", "2", [
        *_lineage_block(reported, facts.get("run")),
        *_validation_blocks(facts, reported),
        *_evaluation_blocks(facts, spec),
        {"kind": "markdown", "title": "Model card", "text": card,
         "empty": None if card else _missing("no model_card.md on the version's run")},
    ])


def _monitoring(facts: Mapping[str, Any], records: list[dict], proofs: Mapping[int, Mapping]) -> dict[str, Any]:
    runs = facts.get("monitoring_runs") or []
    found = incidents(records)
    return _section("annex-iv-3", "Annex IV §3 Monitoring, functioning and control", "3", [
        _records("Human oversight: approvals", _of(records, APPROVAL_ACTIONS), proofs,
                 _missing("no approval was requested or given for this version")),
        _table("Monitoring runs (post-market monitoring, Annex IV §9)",
               ["started", "environment", "version", "status", "drift share", "drifted columns", "live metric",
                "error rate", "p99 ms", "MLflow"],
               [[r["started_at"], r["environment"], r["version"], r["status"] or NOT_RECORDED,
                 r["metrics"].get("drift_share", "—"), r["metrics"].get("drifted_columns", "—"),
                 ", ".join(f"{k.removeprefix('live_')}={v:.4f}" for k, v in r["metrics"].items()
                           if k.startswith("live_")) or "—",
                 r["metrics"].get("error_rate", "—"), r["metrics"].get("p99_ms", "—"), r["url"]] for r in runs],
               _missing("no monitoring run of this version in MLflow")),
        _records("Monitoring alerts (drift, performance, data, service)", _of(records, MONITOR_ACTIONS), proofs,
                 _missing("no monitoring alert on this version")),
        _table("Incidents", ["incident", "kind", "subject", "opened", "acknowledged", "resolved", "resolved by"],
               [[i["id"], i["kind"] or NOT_RECORDED, i["subject"], i["opened"] or NOT_RECORDED,
                 i["acknowledged"] or "—", i["resolved"] or "open", i["resolved_by"] or "—"] for i in found],
               _missing("no incident on this version")),
        _records("Incident records", _of(records, INCIDENT_ACTIONS), proofs, _missing("no incident on this version")),
        _records("Serving events (replicas down, restored, repaired)", _of(records, SERVING_ACTIONS), proofs,
                 _missing("no serving event of this version")),
    ])


def _metrics_section(spec: Mapping[str, Any]) -> dict[str, Any]:
    policy = spec.get("policy") or {}
    metrics = spec.get("metrics") or {}
    environments = spec.get("environments") or {}
    why = "no spec recorded with the version"
    return _section("annex-iv-4", "Annex IV §4 Appropriateness of the performance metrics", "4", [
        _facts("Metrics and thresholds", [
            _fact("Primary metric", metrics.get("primary"), why),
            _fact("Minimum metrics", [f"{k} ≥ {v}" for k, v in (policy.get("min_metrics") or {}).items()]
                  or ("none set" if spec else None), why),
            _fact("Largest regression allowed against the champion",
                  [f"{k}: {v}" for k, v in (policy.get("max_regression") or {}).items()] or ("none set" if spec else None),
                  why),
            _fact("Largest p95 latency (ms)", policy.get("max_p95_latency_ms") or ("none set" if spec else None), why),
            _fact("Slices evaluated", metrics.get("slices") or ("none configured" if spec else None), why),
        ]),
        _table("Environments, their promotion and gates", ["environment", "promotion", "approvals", "strategy", "gates"],
               [[env, e.get("promotion"), e.get("approvals"), e.get("strategy"),
                 json.dumps(e.get("gates"), sort_keys=True) if e.get("gates") else "—"]
                for env, e in environments.items() if isinstance(e, Mapping)],
               _missing("the spec declares no environments (dev only)" if spec else why)),
    ])


def _risk(facts: Mapping[str, Any], records: list[dict], proofs: Mapping[int, Mapping]) -> dict[str, Any]:
    open_incidents = [i for i in incidents(records) if not i["resolved"]]
    limitations = card_limitations(facts["artifacts"].get("model_card"))
    return _section("annex-iv-5", "Annex IV §5 Risk management", "5", [
        _records("Policy decisions (organisation and spec policy)", _of(records, POLICY_ACTIONS), proofs,
                 _missing("no policy decision on this version in any environment")),
        _records("Refusals (promotions refused, signatures refused)", _of(records, RISK_ACTIONS), proofs,
                 "none recorded: no promotion or load of this version was refused"),
        _table("Open incidents", ["incident", "kind", "subject", "opened", "acknowledged"],
               [[i["id"], i["kind"] or NOT_RECORDED, i["subject"], i["opened"] or NOT_RECORDED,
                 i["acknowledged"] or "not acknowledged"] for i in open_incidents],
               "none open" if _of(records, INCIDENT_ACTIONS) else _missing("no incident on this version")),
        _facts("Known limitations (from the model card)",
               [_fact(f"Limitation {n}", item) for n, item in enumerate(limitations, start=1)]
               or [_fact("Limitations", None, "the model card lists none")]),
    ])


def _lifecycle(records: list[dict], proofs: Mapping[int, Mapping]) -> dict[str, Any]:
    listed = (APPROVAL_ACTIONS | POLICY_ACTIONS | MONITOR_ACTIONS | INCIDENT_ACTIONS | SERVING_ACTIONS | PROMOTION_ACTIONS
              | DEPLOY_ACTIONS | ROLLBACK_ACTIONS | RISK_ACTIONS)
    return _section("annex-iv-6", "Annex IV §6 Lifecycle changes", "6", [
        _records("Validation, registration, evaluation and promotions", _of(records, PROMOTION_ACTIONS), proofs,
                 _missing("no promotion of this version")),
        _records("Deploys", _of(records, DEPLOY_ACTIONS), proofs, _missing("this version was never deployed")),
        _records("Rollbacks", _of(records, ROLLBACK_ACTIONS), proofs, _missing("no rollback to or from this version")),
        _records("Other records about this version", [r for r in records if r.get("action") not in listed], proofs,
                 "none"),
    ])


def _integrity(records: list[dict], proofs: Mapping[int, Mapping], status: Mapping[str, Any]) -> dict[str, Any]:
    checkpoint = next(iter(proofs.values()))["checkpoint"] if proofs else None
    witnessed = status.get("witnessed")
    verified = sum(1 for p in proofs.values() if p["verified"])
    return _section("record-integrity", "Record integrity", "—", [
        _facts("Audit ledger verification (modelyard audit verify)", [
            _fact("Result", "OK: every record, checkpoint and witness verifies" if status.get("ok") else
                  f"BROKEN: {status.get('problem')}", None),
            _fact("Records verified", status.get("records")),
            _fact("Latest signed checkpoint", status.get("checkpoint") and
                  f"size {status['checkpoint']['size']}, root {status['checkpoint']['root']}, "
                  f"signed {status['checkpoint']['time']}", "no signed checkpoint"),
            _fact("Latest witnessed checkpoint", witnessed and
                  f"size {witnessed['checkpoint']['size']} at {witnessed['source']}", "no witnessed checkpoint read"),
            _fact("Witnesses unreadable", status.get("witness_errors") or "none"),
            _fact("Records cited in this report", len(records)),
            _fact("Inclusion proofs verified", f"{verified} of {len(proofs)}" if proofs else None,
                  "no record cited"),
        ]),
        _facts("The signed tree head every proof verifies against", [
            _fact("Origin", checkpoint and checkpoint["origin"], "no record cited"),
            _fact("Tree size", checkpoint and checkpoint["size"], "no record cited"),
            _fact("Root (sha256)", checkpoint and checkpoint["root"], "no record cited"),
            _fact("Signed at", checkpoint and checkpoint["time"], "no record cited"),
            _fact("Key id (ed25519)", checkpoint and checkpoint["key_id"], "no record cited"),
            _fact("Signature (base64)", checkpoint and checkpoint["signature"], "no record cited"),
        ]),
        {"kind": "proofs", "title": "Inclusion proofs (RFC 9162), one per record cited",
         "rows": [{"seq": p["seq"], "action": p["record"].get("action"), "subject": p["record"].get("subject"),
                   "time": p["record"].get("time"), "leaf_index": p["leaf_index"], "tree_size": p["tree_size"],
                   "leaf_hash": p["leaf_hash"], "audit_path": p["audit_path"], "verified": p["verified"],
                   "verification": p["verification"]} for p in proofs.values()],
         "empty": None if proofs else _missing("no ledger record cites this version")},
        {"kind": "text", "title": "Checking a proof yourself",
         "text": "Each proof is in the JSON document (records → proof). `modelyard audit prove SEQ` prints one; "
                 "infra/scripts/verify_inclusion.py checks it with only the ledger's public checkpoint key "
                 "(state_dir/keys/ledger-checkpoint.pub)."},
    ])


def assemble_document(facts: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                      proofs: Mapping[int, Mapping[str, Any]], status: Mapping[str, Any],
                      generated_at: str | None = None, generated_by: str = "cli") -> dict[str, Any]:
    """The report as a JSON document: Annex IV sections of blocks (facts, tables, ledger records
    with their proof status, the model card) and the records with their full proofs. A pure
    function of what ``fetch_facts``, ``cited_records``, ``prove_records`` and ``ledger_status`` return."""
    subject = facts["subject"]
    reported = next((c for c in facts["chain"] if c["registered_model"] == subject["registered_model"]
                     and c["version"] == subject["version"]), None)
    if reported is None:
        raise ValueError(f"facts: {subject['registered_model']} v{subject['version']} is not in its own lineage chain")
    spec = facts.get("spec") or {}
    records = sorted((dict(r) for r in records), key=lambda r: r["seq"])
    proofs = {int(seq): proof for seq, proof in proofs.items()}
    return {
        "format": REPORT_FORMAT,
        "generated_at": generated_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "generated_by": generated_by,
        "subject": dict(subject),
        "lineage": list(facts["chain"]),
        "sections": [
            _general(facts, reported, spec),
            _development(facts, reported, spec),
            _monitoring(facts, records, proofs),
            _metrics_section(spec),
            _risk(facts, records, proofs),
            _lifecycle(records, proofs),
            _integrity(records, proofs, status),
        ],
        "records": [{**r, "proof": proofs.get(r["seq"])} for r in records],
        "ledger_verification": dict(status),
        "monitoring_runs": list(facts.get("monitoring_runs") or []),
    }


def collect_evidence(settings: Settings, client: MlflowClient, records: Sequence[Mapping[str, Any]], model: str,
                     version: str, env: str | None = None) -> dict[str, Any]:
    """The compliance document of ``model`` ``version`` (any environment's registered model, or
    the spec's name with ``env``): registry and MLflow facts, the ledger ``records`` about it with
    verified inclusion proofs, and the ledger's verification. InvalidName on a bad name,
    VersionNotFound when the version is not registered."""
    subject = resolve_subject(model, version, env)
    facts = fetch_facts(settings, client, subject)
    validation = (facts.get("validation_run") or {}).get("run_id")
    cited = cited_records(records, facts["chain"], validation)
    ledger = get_resources(settings).ledger
    proofs = prove_records(ledger, records, [r["seq"] for r in cited])
    return assemble_document(facts, cited, proofs, ledger_status(ledger), generated_by=flow_actor())


# --- publishing --------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact_markdown(document: Mapping[str, Any], html_url: str | None, json_url: str | None,
                      sha256: Mapping[str, str]) -> str:
    """The Prefect artifact: where the report is, its digests, and what it found at a glance."""
    subject = document["subject"]
    proofs = [r["proof"] for r in document["records"] if r.get("proof")]
    verified = sum(1 for p in proofs if p["verified"])
    status = document["ledger_verification"]
    lines = [f"# Compliance report: {subject['registered_model']} v{subject['version']} ({subject['environment']})", "",
             f"- HTML: {f'[open]({html_url})' if html_url else NOT_RECORDED + ' (no MLflow run to attach it to)'}",
             f"- JSON: {f'[open]({json_url})' if json_url else NOT_RECORDED}",
             f"- sha256: html `{sha256['html']}`, json `{sha256['json']}`",
             f"- ledger: {'verified' if status.get('ok') else 'BROKEN: ' + str(status.get('problem'))}; "
             f"{len(document['records'])} records cited, {verified} of {len(proofs)} inclusion proofs verified",
             "", "| section | Annex IV |", "|---|---|"]
    lines += [f"| {s['title']} | {s['annex_iv']} |" for s in document["sections"]]
    return "\n".join(lines) + "\n"


def publish_artifact(settings: Settings, key: str, markdown: str, description: str) -> str | None:
    """A markdown artifact on the running flow or task run, or standalone outside one (through
    the client: Prefect's helper warns outside a run); its id."""
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.settings import temporary_settings
    from prefect.utilities.context import get_task_and_flow_run_ids

    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    with temporary_settings(settings.prefect_client_settings()), get_client(sync_client=True) as prefect:
        created = prefect.create_artifact(ArtifactCreate(key=key, type="markdown", data=markdown,
                                                         description=description, flow_run_id=flow_run_id,
                                                         task_run_id=task_run_id))
    return str(created.id) if created else None


def publish_compliance_report(model: str, version: str, env: str | None = None, out_dir: Path | None = None) -> dict:
    """Write ``compliance-<registered model>-v<version>.html`` and ``.json``, attach both to the
    version's MLflow run under ``compliance/``, publish the ``<model>-compliance`` Prefect
    artifact and record COMPLIANCE_REPORTED. Returns the paths, the MLflow URLs (None when the
    version has no run), ``sha256`` (of the HTML) and ``json_sha256``, the artifact's key."""
    from tasks.compliance_template import render_html
    from tasks.reporting import artifact_key

    resources = get_resources()
    settings, client = resources.settings, resources.registry
    document = collect_evidence(settings, client, resources.ledger.records(), model, version, env)
    subject = document["subject"]
    registered, number = subject["registered_model"], subject["version"]
    out = Path(out_dir) if out_dir is not None else settings.state_dir / "reports" / REPORT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compliance-{registered}-v{number}"
    json_path, html_path = out / f"{stem}.json", out / f"{stem}.html"
    json_path.write_text(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    html_path.write_text(render_html(document))
    sha256 = {"html": _sha256(html_path), "json": _sha256(json_path)}
    run_id = next(c["run_id"] for c in document["lineage"]
                  if c["registered_model"] == registered and c["version"] == number)
    html_url = json_url = None
    if run_id:
        for path in (html_path, json_path):
            client.log_artifact(run_id, str(path), REPORT_FOLDER)
        html_url = artifact_url(settings.mlflow_url, run_id, f"{REPORT_FOLDER}/{html_path.name}")
        json_url = artifact_url(settings.mlflow_url, run_id, f"{REPORT_FOLDER}/{json_path.name}")
    key = artifact_key(registered, "compliance")
    artifact_id = publish_artifact(settings, key, artifact_markdown(document, html_url, json_url, sha256),
                                   f"Annex IV compliance report of {registered} v{number}")
    proofs = [r["proof"] for r in document["records"] if r.get("proof")]
    append_audit_record(Action.COMPLIANCE_REPORTED, f"{registered}/{number}", {
        "environment": subject["environment"], "html_sha256": sha256["html"], "json_sha256": sha256["json"],
        "html_url": html_url, "json_url": json_url, "prefect_artifact": key, "mlflow_run_id": run_id,
        "records_cited": len(document["records"]), "proofs_verified": sum(1 for p in proofs if p["verified"]),
        "ledger_ok": bool(document["ledger_verification"].get("ok"))})
    return {"html": html_path, "json": json_path, "html_url": html_url, "json_url": json_url,
            "sha256": sha256["html"], "json_sha256": sha256["json"], "artifact_key": key,
            "artifact_id": artifact_id, "environment": subject["environment"]}
