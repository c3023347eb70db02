"""The audit ledger: chained records, tamper detection that names the first bad record,
safe concurrent appends, and no secrets inside."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from modelyard.ledger import REDACTED, AuditLedger


def _ledger_with(tmp_path: Path, n: int = 6, key: str | None = None) -> AuditLedger:
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl", key=key)
    for i in range(n):
        ledger.append("tester", "model.registered", f"model-{i % 2}", {"version": i})
    return ledger


def _lines(ledger: AuditLedger) -> list[str]:
    return ledger.path.read_text().splitlines(keepends=True)


def _write(ledger: AuditLedger, lines: list[str]) -> None:
    ledger.path.write_text("".join(lines))


def test_untouched_ledger_verifies(tmp_path):
    ledger = _ledger_with(tmp_path)
    result = ledger.verify()
    assert result.ok and result.records == 6
    records = ledger.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(records, records[1:]))


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
    from modelyard.ledger import record_hash

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
    from modelyard.ledger import record_hash

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


def test_truncated_tail_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    _write(ledger, _lines(ledger)[:4])
    problem = ledger.verify().problem
    assert problem.kind == "truncated" and problem.line == 5
    assert "holds 6 records, it holds 4" in problem.message


def test_record_cut_mid_line_is_named(tmp_path):
    ledger = _ledger_with(tmp_path)
    text = ledger.path.read_text()
    ledger.path.write_text(text[: len(text) - 40])
    problem = ledger.verify().problem
    assert problem.kind == "truncated" and problem.line == 6


def test_forged_head_is_detected_when_signed(tmp_path):
    ledger = _ledger_with(tmp_path, key="k3y")
    assert ledger.verify().ok
    _write(ledger, _lines(ledger)[:4])
    last = json.loads(_lines(ledger)[-1])
    ledger.head_path.write_text(json.dumps({"seq": 4, "hash": last["hash"], "mac": "0" * 64}))
    problem = ledger.verify().problem
    assert problem.kind == "head-forged"


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


def _append_many(path: str, worker: int, count: int) -> None:
    ledger = AuditLedger(Path(path))
    for i in range(count):
        ledger.append(f"worker-{worker}", "load.append", f"subject-{worker}", {"i": i})


def test_four_processes_appending_at_once_leave_a_valid_ledger(tmp_path):
    path = tmp_path / "ledger.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 500)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
        assert process.exitcode == 0
    ledger = AuditLedger(path)
    result = ledger.verify()
    assert result.ok, result.problem
    assert result.records == 2000
    records = ledger.records()
    assert [r["seq"] for r in records] == list(range(1, 2001))
    for worker in range(4):
        mine = [r["details"]["i"] for r in records if r["actor"] == f"worker-{worker}"]
        assert mine == list(range(500))


@pytest.mark.parametrize("subject,count", [("model-0", 3), ("model-1", 3), ("nothing", 0)])
def test_records_filter_by_subject(tmp_path, subject, count):
    assert len(_ledger_with(tmp_path).records(subject=subject)) == count
