"""The `modelyard audit` commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modelyard.ledger import AuditLedger


def _modelyard(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "MODELYARD_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_audit_verify_passes_then_names_the_tampered_record(tmp_path):
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl")
    for version in range(1, 4):
        ledger.append("cli", "model.promoted", "fraud", {"version": version})
    ok = _modelyard(tmp_path, "audit", "verify")
    assert ok.returncode == 0 and "3 records verified" in ok.stdout

    lines = ledger.path.read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["details"]["version"] = 7
    lines[1] = json.dumps(record) + "\n"
    ledger.path.write_text("".join(lines))
    broken = _modelyard(tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert "line 2 (seq 2): edited" in broken.stderr


def test_audit_show_filters_by_subject(tmp_path):
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl")
    ledger.append("cli", "model.promoted", "fraud", {"version": 1})
    ledger.append("cli", "model.promoted", "churn", {"version": 1})
    shown = _modelyard(tmp_path, "audit", "show", "--subject", "churn", "--json")
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["subject"] for r in records] == ["churn"]
