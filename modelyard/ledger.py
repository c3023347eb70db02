"""The audit ledger: an append-only, hash-chained JSON-lines file that an auditor can verify and
that any number of threads and processes may append to at once. The record format and what the
chain and its signed head catch: README.md, "The audit ledger".
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.redaction import REDACTED, redact  # noqa: F401 - re-exported: ledger.redact

if TYPE_CHECKING:
    from modelyard.settings import Settings

GENESIS_HASH = "0" * 64
def _canonical(record: Mapping[str, Any]) -> bytes:
    body = {key: record[key] for key in record if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """The sha256 that a record's ``hash`` field must hold."""
    return hashlib.sha256(_canonical(record)).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first place where the ledger stops being trustworthy."""

    line: int
    seq: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class Verification:
    records: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class AuditLedger:
    """Appends and verifies the hash-chained audit ledger at ``path``."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head.json")
        self.lock_path = self.path.with_suffix(".lock")
        self._key = key.encode() if key else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _head_mac(self, seq: int, last_hash: str) -> str | None:
        if self._key is None:
            return None
        return hmac.new(self._key, f"{seq}:{last_hash}".encode(), hashlib.sha256).hexdigest()

    def read_head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None

    def _last_record(self) -> dict[str, Any] | None:
        """The last complete record, read from the end of the file (appends stay O(1))."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return None
        if size == 0:
            return None
        with open(self.path, "rb") as handle:
            block = 4096
            data = b""
            pos = size
            while pos > 0:
                step = min(block, pos)
                pos -= step
                handle.seek(pos)
                data = handle.read(step) + data
                lines = data.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    return json.loads(lines[-1])
                block *= 2
        return None

    def append(
        self,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record (secrets redacted) and return it as written."""
        with self._locked():
            last = self._last_record()
            record: dict[str, Any] = {
                "seq": (last["seq"] + 1) if last else 1,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                "actor": str(actor),
                "action": str(action),
                "subject": str(subject),
                "details": redact(dict(details or {})),
                "prev_hash": last["hash"] if last else GENESIS_HASH,
            }
            record["hash"] = record_hash(record)
            line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._write_head(record["seq"], record["hash"])
            return record

    def _write_head(self, seq: int, last_hash: str) -> None:
        head = {"seq": seq, "hash": last_hash}
        mac = self._head_mac(seq, last_hash)
        if mac:
            head["mac"] = mac
        tmp = self.head_path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(head, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.head_path)

    def records(self, subject: str | None = None) -> list[dict[str, Any]]:
        """All records (optionally only one subject's), oldest first."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    if subject is None or record.get("subject") == subject:
                        out.append(record)
        return out

    def verify(self) -> Verification:
        """Check every record and the head; name the first record that is not as written."""
        with self._locked():
            lines = self.path.read_bytes().split(b"\n") if self.path.exists() else []
            head = self.read_head()
        if lines and lines[-1] == b"":
            lines.pop()
        parsed: list[dict[str, Any] | None] = []
        for raw in lines:
            try:
                record = json.loads(raw)
                parsed.append(record if isinstance(record, dict) else None)
            except ValueError:
                parsed.append(None)
        seqs_present = {r.get("seq") for r in parsed if r is not None}
        expected_prev = GENESIS_HASH
        seen: set[int] = set()
        for index, record in enumerate(parsed):
            line_no = index + 1
            expected_seq = index + 1
            if record is None:
                kind = "truncated" if line_no == len(parsed) else "malformed"
                return Verification(
                    index, Problem(line_no, None, kind, "the line is not a complete JSON record")
                )
            seq = record.get("seq")
            fields = {"seq", "time", "actor", "action", "subject", "details", "prev_hash", "hash"}
            if set(record) != fields:
                missing = sorted(fields - set(record))
                extra = sorted(set(record) - fields)
                return Verification(
                    index,
                    Problem(line_no, seq, "edited", f"fields changed (missing {missing}, extra {extra})"),
                )
            if record_hash(record) != record["hash"]:
                return Verification(
                    index,
                    Problem(line_no, seq, "edited", "its content does not match its hash"),
                )
            if seq != expected_seq or record["prev_hash"] != expected_prev:
                problem = _diagnose_break(parsed, index, seen, seqs_present)
                return Verification(problem.line - 1, problem)
            seen.add(seq)
            expected_prev = record["hash"]
        count = len(parsed)
        if head is not None:
            if self._key is not None and head.get("mac") != self._head_mac(
                head.get("seq", -1), head.get("hash", "")
            ):
                return Verification(
                    count, Problem(count, None, "head-forged", "the head checkpoint's signature is wrong")
                )
            if head.get("seq", 0) > count:
                return Verification(
                    count,
                    Problem(
                        count + 1, count + 1, "truncated",
                        f"the head says the ledger holds {head['seq']} records, it holds {count}",
                    ),
                )
            if head.get("seq") == count and head.get("hash") != expected_prev:
                return Verification(
                    count,
                    Problem(count, count, "edited", "the last record differs from the head checkpoint"),
                )
        elif count:
            return Verification(
                count, Problem(1, None, "head-missing", "the head checkpoint is missing")
            )
        return Verification(count, None)


def _diagnose_break(
    parsed: list[dict[str, Any] | None], index: int, seen: set[int], seqs_present: set[Any]
) -> Problem:
    """Name the first bad record when the record at ``index`` does not follow the chain."""
    record = parsed[index]
    assert record is not None
    line_no, seq, expected_seq = index + 1, record.get("seq"), index + 1
    before = parsed[index - 1] if index >= 1 else None
    two_before = parsed[index - 2] if index >= 2 else None
    if isinstance(seq, int) and seq in seen and record in parsed[:index]:
        return Problem(line_no, seq, "inserted", f"a copy of record {seq} was replayed here")
    if (
        before is not None
        and (two_before["hash"] if two_before else GENESIS_HASH) == record["prev_hash"]
    ):
        return Problem(
            line_no - 1, before.get("seq"), "inserted",
            "the record after it chains to the record before it, so this one was slipped in",
        )
    if isinstance(seq, int) and seq in seen:
        return Problem(line_no, seq, "inserted", f"seq {seq} appears twice: a record was inserted")
    if isinstance(seq, int) and seq > expected_seq:
        if expected_seq in seqs_present:
            return Problem(line_no, seq, "reordered", f"seq {expected_seq} was expected here but comes later")
        return Problem(line_no, seq, "deleted", f"seq {expected_seq}..{seq - 1} are missing before it")
    if seq != expected_seq:
        return Problem(line_no, seq, "reordered", f"seq {seq} where {expected_seq} was expected")
    if before is not None:
        return Problem(
            line_no - 1, before.get("seq"), "edited",
            f"record {seq} chains to a different hash: this record was altered and re-hashed "
            "(or the next one replaced)",
        )
    return Problem(line_no, seq, "edited", "the first record does not start from the genesis hash")


def ledger_from_settings(settings: Settings) -> AuditLedger:
    """The ledger the stack in ``settings`` writes to."""
    key = settings.ledger_key.get_secret_value() if settings.ledger_key else None
    return AuditLedger(settings.ledger_path, key=key)
