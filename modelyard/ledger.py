"""The audit ledger: an append-only JSON-lines file that proves itself, and that any number of
threads and processes may append to at once (under an fcntl lock).

- Each record is hash-chained to the one before it (``prev_hash``, ``hash``), so a bad line is
  named precisely, and is a leaf of an RFC 9162 Merkle tree: leaf = SHA-256(0x00 || the record's
  canonical bytes), the canonical bytes being the record without ``hash`` as compact sorted JSON.
- Signed checkpoints (origin, tree size, root, time; ed25519) go to ``ledger.checkpoints.jsonl``
  on every deploy, rollback and promotion record, on the first record, and at least every
  ``CHECKPOINT_EVERY`` records. The signing key is made at first use (0600) and its public key
  published for verifiers (``CheckpointKeys``).
- Each checkpoint is also handed to the ledger's witnesses, which keep it where deleting or
  restoring the ledger's directory cannot reach (another directory, MLflow tags, Prefect
  artifacts: ``modelyard.resources.witness``). A witness that fails never fails the append; it is
  retried with the next checkpoint and its failure is kept in ``ledger.witness.json``.
- ``verify`` checks every record, every checkpoint's signature and its consistency with the
  current tree, every record's inclusion in the latest signed tree, and every witnessed
  checkpoint: cutting, rewriting, restoring or deleting the ledger is caught.
- Appending is O(log n): the right edge of the tree is kept in ``ledger.state.json`` (a cache,
  rebuilt from the ledger when missing). A torn last line (a crash mid-write) is moved to
  ``quarantine/`` and the repair recorded, by ``repair`` or by the next append.

docs/ledger.md shows the files, the commands and the standalone proof checker.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.catalog import ROLLBACK_ACTIONS, Action
from modelyard.merkle import Frontier, MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from modelyard.redaction import REDACTED, redact

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from modelyard.settings import Settings

__all__ = [
    "CHECKPOINT_ACTIONS", "CHECKPOINT_EVERY", "GENESIS_HASH", "LEDGER_REPAIRED", "REDACTED", "AuditLedger",
    "Checkpoint", "CheckpointKeys", "CheckpointWitness", "FileWitness", "LedgerError", "Problem",
    "Verification", "Witnessed", "checkpoint_keys", "checkpoint_message", "file_witness", "key_id",
    "ledger_from_settings", "record_hash", "record_leaf", "redact", "signature_ok",
]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
CHECKPOINT_EVERY = 64
DEFAULT_ORIGIN = "modelyard"
CHECKPOINT_FORMAT = "modelyard-ledger-checkpoint/v1"
LEDGER_REPAIRED = str(Action.LEDGER_REPAIRED)  # a torn last line was quarantined
# Records after which the tree is signed at once: whatever moves a model into or out of service.
CHECKPOINT_ACTIONS = frozenset(str(action) for action in (
    Action.MODEL_PROMOTED, Action.DEPLOY_STARTED, Action.DEPLOY_SUCCEEDED,
    Action.AUTOMATIC_ROLLBACK_FAILED, Action.MANUAL_ROLLBACK_FAILED, *ROLLBACK_ACTIONS,
)) | {LEDGER_REPAIRED}
RECORD_FIELDS = frozenset({"seq", "time", "actor", "action", "subject", "details", "prev_hash", "hash"})


class LedgerError(RuntimeError):
    """The ledger cannot be appended to or proven from as it is."""


def _canonical(record: Mapping[str, Any]) -> bytes:
    body = {key: record[key] for key in record if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """The sha256 that a record's ``hash`` field must hold."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def record_leaf(record: Mapping[str, Any]) -> bytes:
    """The record's leaf in the Merkle tree: SHA-256(0x00 || canonical bytes)."""
    return leaf_hash(_canonical(record))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_message(origin: str, size: int, root: str, time: str, key_id: str) -> bytes:
    """The bytes a checkpoint's signature covers (infra/scripts/verify_inclusion.py rebuilds them)."""
    return f"{CHECKPOINT_FORMAT}\norigin {origin}\nsize {size}\nroot {root}\ntime {time}\nkey {key_id}\n".encode()


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the ledger ``origin`` held ``size`` records with tree head ``root``."""

    origin: str
    size: int
    root: str  # hex
    time: str
    key_id: str
    signature: str  # base64 ed25519 over ``checkpoint_message``

    def message(self) -> bytes:
        return checkpoint_message(self.origin, self.size, self.root, self.time, self.key_id)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        """Raises ValueError when ``raw`` is not a checkpoint."""
        try:
            checkpoint = cls(origin=str(raw["origin"]), size=int(raw["size"]), root=str(raw["root"]),
                             time=str(raw["time"]), key_id=str(raw["key_id"]), signature=str(raw["signature"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a checkpoint: {error}") from error
        if checkpoint.size < 0 or len(checkpoint.root) != 64:
            raise ValueError("not a checkpoint: bad size or root")
        return checkpoint

    def describe(self) -> str:
        return f"size {self.size}, root {self.root[:16]}…, signed {self.time}"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _new_private_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


class CheckpointKeys:
    """The ed25519 key pair that signs checkpoints: the private key made at first use (0600, in a
    0700 directory), the public key published where verifiers read it. A replaced key's public
    key stays published as ``<stem>.<key id>.pub``, so older checkpoints still verify."""

    def __init__(self, private_path: Path, public_path: Path) -> None:
        self.private_path = Path(private_path)
        self.public_path = Path(public_path)
        self._private: Ed25519PrivateKey | None = None

    def signing_key(self) -> Ed25519PrivateKey:
        """The private key (made now if there is none), its public key published."""
        if self._private is None:
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            from modelyard.settings import kept_secret

            self.private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = kept_secret(self.private_path, _new_private_pem)
            private = load_pem_private_key(pem.encode(), password=None)
            self._publish(private.public_key())  # type: ignore[arg-type]
            self._private = private  # type: ignore[assignment]
        return self._private  # type: ignore[return-value]

    def _publish(self, public_key: Ed25519PublicKey) -> None:
        pem = _public_pem(public_key)
        current = self.public_path.read_bytes() if self.public_path.exists() else None
        if current == pem:
            return
        self.public_path.parent.mkdir(parents=True, exist_ok=True)
        if current is not None:
            retired = _load_public(current)
            if retired is not None:
                self._retired_path(key_id(retired)).write_bytes(current)
        draft = self.public_path.with_name(f".{self.public_path.name}.{os.getpid()}")
        draft.write_bytes(pem)
        os.replace(draft, self.public_path)

    def _retired_path(self, kid: str) -> Path:
        return self.public_path.with_name(f"{self.public_path.stem}.{kid}{self.public_path.suffix}")

    def published(self) -> bool:
        """Whether a checkpoint was ever signed here (its public key is published at first signing)."""
        return self.public_path.exists()

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The published public keys (current and retired), by key id."""
        keys = {}
        for path in [self.public_path, *sorted(self.public_path.parent.glob(f"{self.public_path.stem}.*.pub"))]:
            try:
                public = _load_public(path.read_bytes())
            except OSError:
                continue
            if public is not None:
                keys[key_id(public)] = public
        return keys


def _load_public(pem: bytes) -> Ed25519PublicKey | None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        public = load_pem_public_key(pem)
    except ValueError:
        return None
    return public if isinstance(public, Ed25519PublicKey) else None


def signature_ok(checkpoint: Checkpoint, trusted: Mapping[str, Ed25519PublicKey]) -> bool:
    from cryptography.exceptions import InvalidSignature

    public = trusted.get(checkpoint.key_id)
    if public is None:
        return False
    try:
        public.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.message())
    except (InvalidSignature, ValueError):
        return False
    return True


# --- witnesses -------------------------------------------------------------------------------


class CheckpointWitness(Protocol):
    """Somewhere outside the ledger's files that keeps its checkpoints."""

    name: str

    def publish(self, checkpoint: Checkpoint, subject: str) -> None:
        """Keep ``checkpoint`` (made after a record about ``subject``); raise when it could not."""

    def read(self) -> list[tuple[str, Mapping[str, Any]]]:
        """Every checkpoint kept, as (where it was read, the checkpoint's dict); raise when unreadable."""


class FileWitness:
    """Checkpoints appended to a file in another directory than the ledger's."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def publish(self, checkpoint: Checkpoint, subject: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash: never a checkpoint
                tail = os.pread(fd, min(size, 1 << 16), max(size - (1 << 16), 0))
                os.ftruncate(fd, size - len(tail) + tail.rfind(b"\n") + 1)
            os.write(fd, (json.dumps(checkpoint.as_dict(), sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[tuple[str, Mapping[str, Any]]]:
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        lines.pop()  # b"", or a line torn by a crash mid-write: never a kept checkpoint
        out = []
        for number, line in enumerate(lines, start=1):
            try:
                out.append((f"{self.path}:{number}", json.loads(line)))
            except ValueError:
                out.append((f"{self.path}:{number}", {}))
        return out


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint as a witness kept it."""

    source: str
    checkpoint: Checkpoint


# --- verification ----------------------------------------------------------------------------


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
    """What ``verify`` found: how many records verify, the first problem (None: all is well), the
    latest signed checkpoint and the latest witnessed one, and what could not be read."""

    records: int
    problem: Problem | None
    checkpoint: Checkpoint | None = None
    witnessed: Witnessed | None = None
    unvouched: int = 0  # records after the latest signed checkpoint (vouched for by the chain only)
    witness_errors: tuple[str, ...] = ()
    witness_status: Mapping[str, Any] = field(default_factory=dict)
    repairs: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _State:
    """The ledger's tail as the last append left it: record count, bytes, last hash, the tree's
    right edge, and the size of the last checkpoint."""

    size: int = 0
    offset: int = 0
    last_hash: str = GENESIS_HASH
    frontier: Frontier = field(default_factory=Frontier)
    checkpointed: int = 0

    def add(self, leaf: bytes, record_hash_: str, nbytes: int) -> None:
        self.frontier.append(leaf)
        self.size += 1
        self.offset += nbytes
        self.last_hash = record_hash_

    def as_json(self) -> str:
        return json.dumps({"size": self.size, "offset": self.offset, "last_hash": self.last_hash,
                           "frontier": [h.hex() for h in self.frontier.hashes], "checkpointed": self.checkpointed})

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw = json.loads(text)
        frontier = Frontier(int(raw["size"]), [bytes.fromhex(h) for h in raw["frontier"]])
        return cls(size=int(raw["size"]), offset=int(raw["offset"]), last_hash=str(raw["last_hash"]),
                   frontier=frontier, checkpointed=int(raw.get("checkpointed", 0)))


def _append_line(path: Path, line: str) -> int:
    """Append ``line`` in one write, durably; return its length in bytes."""
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


class AuditLedger:
    """Appends to, proves from and verifies the audit ledger at ``path``. Without ``keys`` it
    signs no checkpoints (a hash chain and tree only)."""

    def __init__(self, path: Path, keys: CheckpointKeys | None = None,
                 witnesses: Sequence[CheckpointWitness] = (), origin: str = DEFAULT_ORIGIN,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        if not origin or any(c.isspace() for c in origin):
            raise ValueError(f"a ledger origin is one word, not {origin!r}")
        self.path = Path(path)
        self.state_path = self.path.with_suffix(".state.json")
        self.checkpoints_path = self.path.with_suffix(".checkpoints.jsonl")
        self.witness_status_path = self.path.with_suffix(".witness.json")
        self.lock_path = self.path.with_suffix(".lock")
        self.quarantine_dir = self.path.parent / "quarantine"
        self.keys = keys
        self.witnesses = tuple(witnesses)
        self.origin = origin
        self.checkpoint_every = checkpoint_every

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive among every thread and process (the lock file itself is never removed)."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def _appending(self) -> Iterator[int]:
        """Under the lock: the state file, open to read and rewrite."""
        with self._locked():
            fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                yield fd
            finally:
                os.close(fd)

    # --- appending ---------------------------------------------------------------------------

    def append(
        self,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record (secrets redacted) and return it as written. A torn last line left
        by a crash is quarantined first, and that repair recorded."""
        details = redact(dict(details or {}))
        with self._appending() as state_fd:
            state, torn = self._load_state(state_fd)
            made: list[tuple[Checkpoint, str]] = []
            if torn:
                state = self._quarantine(state, torn, str(actor), made)
            record = self._write(state, str(actor), str(action), str(subject), details)
            self._maybe_checkpoint(state, record, made)
            self._save_state(state_fd, state)
        self._witness(made)
        return record

    def _load_state(self, state_fd: int) -> tuple[_State, bytes]:
        """The state caught up with every complete line, and the torn bytes after the last one."""
        try:
            file_size = os.stat(self.path).st_size
        except FileNotFoundError:
            file_size = 0
        state = None
        saved = os.pread(state_fd, 1 << 16, 0)
        if saved:
            try:
                state = _State.from_json(saved.decode())
            except (ValueError, KeyError, TypeError):
                log.warning("the ledger state %s is unreadable; rebuilding it from the ledger", self.state_path)
        if state is not None and state.offset > file_size:
            raise LedgerError(
                f"the audit ledger {self.path} holds {file_size} bytes, but {state.offset} were written to it: "
                "it was cut or replaced. Run `modelyard audit verify`, and restore it from a copy; only delete "
                f"{self.state_path.name} to append to it as it is")
        if state is None:
            state = _State(checkpointed=self._last_checkpoint_size())
        if state.offset == file_size:
            return state, b""
        with open(self.path, "rb") as handle:
            handle.seek(state.offset)
            tail = handle.read(file_size - state.offset)
        complete = tail.rfind(b"\n") + 1
        for raw in tail[:complete].split(b"\n")[:-1]:
            try:
                record = json.loads(raw)
                digest = record["hash"]
            except (ValueError, TypeError, KeyError) as error:
                raise LedgerError(f"the audit ledger {self.path} has a line that is not a record at byte "
                                  f"{state.offset}: run `modelyard audit verify`") from error
            state.add(record_leaf(record), digest, len(raw) + 1)
        return state, tail[complete:]

    def _write(self, state: _State, actor: str, action: str, subject: str, details: Any) -> dict[str, Any]:
        body = {"seq": state.size + 1, "time": _now(), "actor": actor, "action": action, "subject": subject,
                "details": details, "prev_hash": state.last_hash}
        body = json.loads(json.dumps(body, ensure_ascii=False))  # exactly what a reader will parse
        canonical = _canonical(body)
        record = {**body, "hash": hashlib.sha256(canonical).hexdigest()}
        nbytes = _append_line(self.path, json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        state.add(leaf_hash(canonical), record["hash"], nbytes)
        return record

    @staticmethod
    def _save_state(state_fd: int, state: _State) -> None:
        # Rewritten in place, not fsynced: after a crash an older state is caught up from the
        # ledger, and a torn one rebuilt from it.
        data = state.as_json().encode()
        os.pwrite(state_fd, data, 0)
        os.ftruncate(state_fd, len(data))

    # --- checkpoints -------------------------------------------------------------------------

    def _maybe_checkpoint(self, state: _State, record: Mapping[str, Any],
                          made: list[tuple[Checkpoint, str]]) -> None:
        due = (state.checkpointed == 0 or record["action"] in CHECKPOINT_ACTIONS
               or state.size - state.checkpointed >= self.checkpoint_every)
        if self.keys is None or not due:
            return
        try:
            made.append((self._sign(state), record["subject"]))
        except Exception as error:  # noqa: BLE001 - a process that cannot sign leaves it to the next append
            log.warning("the audit ledger could not sign a checkpoint at size %d: %s", state.size, error)

    def _sign(self, state: _State) -> Checkpoint:
        assert self.keys is not None
        private = self.keys.signing_key()
        root, time, kid = state.frontier.root().hex(), _now(), key_id(private.public_key())
        signature = private.sign(checkpoint_message(self.origin, state.size, root, time, kid))
        checkpoint = Checkpoint(self.origin, state.size, root, time, kid, base64.b64encode(signature).decode())
        _append_line(self.checkpoints_path, json.dumps(checkpoint.as_dict(), sort_keys=True) + "\n")
        state.checkpointed = state.size
        return checkpoint

    def checkpoint(self, subject: str = "ledger") -> Checkpoint:
        """Sign, store and witness a checkpoint of the ledger as it is now."""
        if self.keys is None:
            raise LedgerError("this ledger has no checkpoint key")
        made: list[tuple[Checkpoint, str]] = []
        with self._appending() as state_fd:
            state, torn = self._load_state(state_fd)
            if torn:
                state = self._quarantine(state, torn, "ledger", made)
            made.append((self._sign(state), subject))
            self._save_state(state_fd, state)
        self._witness(made)
        return made[-1][0]

    def checkpoints(self) -> list[Checkpoint]:
        """The stored checkpoints, oldest first (a torn or malformed line is skipped)."""
        return [c for _, c in self._stored_checkpoints(self._read(self.checkpoints_path))[0]]

    def _last_checkpoint_size(self) -> int:
        stored = self.checkpoints()
        return stored[-1].size if stored else 0

    def _stored_checkpoints(self, data: bytes | None) -> tuple[list[tuple[int, Checkpoint]], list[int]]:
        """(line, checkpoint) of each stored checkpoint, and the lines that are not checkpoints."""
        if not data:
            return [], []
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        good, bad = [], []
        for number, raw in enumerate(lines, start=1):
            try:
                good.append((number, Checkpoint.from_dict(json.loads(raw))))
            except (ValueError, TypeError):
                bad.append(number)
        if torn:  # a crash mid-write of a checkpoint: it never counted
            log.warning("ignoring the torn last line of %s", self.checkpoints_path)
        return good, bad

    def _witness(self, made: list[tuple[Checkpoint, str]]) -> None:
        """Hand the newest checkpoint to every witness; a failure is logged and kept, never raised
        (the next checkpoint, which covers this one, is the retry)."""
        if not made or not self.witnesses:
            return
        checkpoint, subject = made[-1]
        outcomes: dict[str, dict[str, Any]] = {}
        for witness in self.witnesses:
            try:
                witness.publish(checkpoint, subject)
                outcomes[witness.name] = {"ok": True, "size": checkpoint.size, "time": _now()}
            except Exception as error:  # noqa: BLE001 - a witness never fails the audited operation
                log.warning("ledger witness %s could not keep checkpoint %d: %s", witness.name, checkpoint.size, error)
                outcomes[witness.name] = {"ok": False, "size": checkpoint.size, "time": _now(),
                                          "error": redact(f"{type(error).__name__}: {error}")[:500]}
        try:
            with self._locked():
                status = self.witness_status()
                for name, outcome in outcomes.items():
                    entry = status.setdefault(name, {})
                    entry["last_ok" if outcome.pop("ok") else "last_failure"] = outcome
                    if "error" not in outcome and entry.get("last_failure", {}).get("size", 0) <= checkpoint.size:
                        entry.pop("last_failure", None)
                draft = self.witness_status_path.with_name(f".{self.witness_status_path.name}.{os.getpid()}")
                draft.write_text(json.dumps(status, indent=1, sort_keys=True))
                os.replace(draft, self.witness_status_path)
        except OSError as error:
            log.warning("could not record the ledger witnesses' status: %s", error)

    def witness_status(self) -> dict[str, Any]:
        """Per witness: the last checkpoint it kept, and its last failure since (if any)."""
        try:
            return json.loads(self.witness_status_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    # --- repair ------------------------------------------------------------------------------

    def repair(self, actor: str = "cli") -> dict[str, Any] | None:
        """Quarantine a torn last line and record that; the repair record, or None when the
        ledger ends with a complete line."""
        made: list[tuple[Checkpoint, str]] = []
        with self._appending() as state_fd:
            state, torn = self._load_state(state_fd)
            if not torn:
                return None
            state = self._quarantine(state, torn, actor, made)
            self._save_state(state_fd, state)
        self._witness(made)
        return self.records()[state.size - 1]

    def _quarantine(self, state: _State, torn: bytes, actor: str, made: list[tuple[Checkpoint, str]]) -> _State:
        """Move the torn bytes after ``state.offset`` to a quarantine file (kept for good), cut
        them from the ledger, and append a record of the repair. Under the lock."""
        digest = hashlib.sha256(torn).hexdigest()
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        kept = self.quarantine_dir / f"torn-at-byte-{state.offset}-{digest[:16]}.bin"
        if not (kept.exists() and kept.read_bytes() == torn):
            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, torn)
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, state.offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("quarantined a torn last line of the audit ledger (%d bytes) in %s", len(torn), kept)
        record = self._write(state, actor, LEDGER_REPAIRED, "ledger", {
            "reason": "the last line was incomplete (a write cut short)", "quarantined": str(kept),
            "at_byte": state.offset, "bytes": len(torn), "sha256": digest})
        self._maybe_checkpoint(state, record, made)
        return state

    # --- reading -----------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def records(self, subject: str | None = None) -> list[dict[str, Any]]:
        """All complete records (optionally only one subject's), oldest first."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a torn last line (perhaps cut inside a character) is not a record
                if line.strip():
                    record = json.loads(line)
                    if subject is None or record.get("subject") == subject:
                        out.append(record)
        return out

    # --- proofs ------------------------------------------------------------------------------

    def prove(self, seq: int) -> dict[str, Any]:
        """An inclusion proof of record ``seq`` in the tree of the latest signed checkpoint that
        holds it (one is signed now if none does): what infra/scripts/verify_inclusion.py checks."""
        records = self.records()
        if not 1 <= seq <= len(records):
            raise LedgerError(f"the ledger has no record {seq} (it holds {len(records)})")
        trusted = self.keys.trusted() if self.keys else {}
        covering = [c for c in self.checkpoints() if c.size >= seq and c.origin == self.origin
                    and signature_ok(c, trusted)]
        if covering:
            checkpoint = covering[-1]
        else:
            checkpoint = self.checkpoint(subject=records[seq - 1]["subject"])
            records = self.records()
        tree = MerkleTree([record_leaf(r) for r in records[:checkpoint.size]])
        if tree.size != checkpoint.size or tree.root().hex() != checkpoint.root:
            raise LedgerError(f"the ledger does not match its checkpoint ({checkpoint.describe()}): "
                              "run `modelyard audit verify`")
        record = records[seq - 1]
        return {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "leaf_index": seq - 1,
            "tree_size": checkpoint.size,
            "record": record,
            "leaf_hash": record_leaf(record).hex(),
            "audit_path": [h.hex() for h in tree.inclusion_proof(seq - 1, checkpoint.size)],
            "checkpoint": checkpoint.as_dict(),
        }

    # --- verification ------------------------------------------------------------------------

    def _read_witnesses(self) -> tuple[list[tuple[str, Mapping[str, Any]]], list[str]]:
        kept, errors = [], []
        for witness in self.witnesses:
            try:
                kept += witness.read()
            except Exception as error:  # noqa: BLE001 - reported: verify fails closed on it
                errors.append(f"{witness.name}: {redact(f'{type(error).__name__}: {error}')[:300]}")
        return kept, errors

    def verify(self) -> Verification:
        """Check every record, checkpoint and witnessed checkpoint; name the first problem."""
        # Witnesses first: a checkpoint witnessed after the ledger was read would look like a cut.
        raw_witnessed, witness_errors = self._read_witnesses()
        with self._locked():
            data = self._read(self.path)
            stored_data = self._read(self.checkpoints_path)
        result = _Verifier(self, data, stored_data, raw_witnessed, witness_errors).run()
        return result


class _Verifier:
    """One verification of one snapshot of the ledger's files and witnesses."""

    def __init__(self, ledger: AuditLedger, data: bytes | None, stored_data: bytes | None,
                 raw_witnessed: list[tuple[str, Mapping[str, Any]]], witness_errors: list[str]) -> None:
        self.ledger = ledger
        self.data = data
        self.stored_data = stored_data
        self.raw_witnessed = raw_witnessed
        self.witness_errors = tuple(witness_errors)
        self.trusted = ledger.keys.trusted() if ledger.keys else {}
        self.records: list[dict[str, Any]] = []
        self.latest: Checkpoint | None = None
        self.witnessed: Witnessed | None = None
        self.matched: list[int] = []  # sizes of the checkpoints that matched the tree

    def result(self, good: int, problem: Problem | None) -> Verification:
        unvouched = len(self.records) - (self.latest.size if self.latest else 0)
        repairs = sum(1 for r in self.records if r.get("action") == LEDGER_REPAIRED)
        return Verification(good, problem, self.latest, self.witnessed, max(unvouched, 0), self.witness_errors,
                            self.ledger.witness_status(), repairs)

    def run(self) -> Verification:
        problem = self.check_lines()
        if problem is not None:
            return self.result(problem.line - 1, problem)
        count = len(self.records)
        tree = MerkleTree([record_leaf(r) for r in self.records])
        stored, bad_lines = self.ledger._stored_checkpoints(self.stored_data)
        witnessed, malformed = self.parse_witnessed()
        self.witnessed = max(witnessed, key=lambda w: w.checkpoint.size, default=None)
        checks = (
            lambda: self.check_missing(count, stored, witnessed),
            lambda: self.check_stored(tree, stored, bad_lines),
            lambda: self.check_witnessed(tree, witnessed, malformed),
            lambda: self.check_inclusion(tree),
            lambda: self.check_witnesses_read(stored),
        )
        for check in checks:
            found = check()
            if found is not None:
                good, problem = found
                return self.result(good, problem)
        return self.result(count, None)

    def check_lines(self) -> Problem | None:
        """Every line a complete record with the right fields, hash and place in the chain."""
        if not self.data:
            return None
        lines = self.data.split(b"\n")
        torn = lines.pop()  # b"" when the ledger ends with a newline
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
            if record is None:
                return Problem(line_no, None, "malformed", "the line is not a JSON record")
            seq = record.get("seq")
            if set(record) != RECORD_FIELDS:
                missing = sorted(RECORD_FIELDS - set(record))
                extra = sorted(set(record) - RECORD_FIELDS)
                return Problem(line_no, seq, "edited", f"fields changed (missing {missing}, extra {extra})")
            if record_hash(record) != record["hash"]:
                return Problem(line_no, seq, "edited", "its content does not match its hash")
            if seq != index + 1 or record["prev_hash"] != expected_prev:
                return _diagnose_break(parsed, index, seen, seqs_present)
            seen.add(seq)
            expected_prev = record["hash"]
            self.records.append(record)
        if torn:
            return Problem(len(parsed) + 1, None, "torn",
                           f"the last line is incomplete ({len(torn)} bytes; a write cut short): "
                           "`modelyard audit repair` quarantines it")
        return None

    def parse_witnessed(self) -> tuple[list[Witnessed], list[str]]:
        """This ledger's witnessed checkpoints (others' are another origin's), and unreadable ones."""
        good, bad = [], []
        for source, raw in self.raw_witnessed:
            try:
                checkpoint = Checkpoint.from_dict(raw)
            except ValueError:
                bad.append(source)
                continue
            if checkpoint.origin == self.ledger.origin:
                good.append(Witnessed(source, checkpoint))
        return good, bad

    def check_missing(self, count: int, stored: list[tuple[int, Checkpoint]],
                      witnessed: list[Witnessed]) -> tuple[int, Problem] | None:
        """An empty or absent ledger that something says had records."""
        if count:
            if not stored and self.ledger.keys is not None and self.ledger.keys.published():
                return 0, Problem(1, None, "checkpoints-missing",
                                  f"{self.ledger.checkpoints_path.name} is gone, but checkpoints were signed "
                                  f"(the key is published at {self.ledger.keys.public_path})")
            return None
        evidence = [f"{w.source} kept a checkpoint of {w.checkpoint.size} records ({w.checkpoint.time})"
                    for w in sorted(witnessed, key=lambda w: -w.checkpoint.size) if w.checkpoint.size > 0]
        evidence += [f"{self.ledger.checkpoints_path.name} line {line} signed {c.size} records"
                     for line, c in sorted(stored, key=lambda item: -item[1].size) if c.size > 0]
        if not evidence and self.ledger.keys is not None and self.ledger.keys.published():
            evidence.append(f"its checkpoint key was published at {self.ledger.keys.public_path}, "
                            "which happens only when records are signed")
        if not evidence:
            return None
        state = "is empty" if self.data is not None else f"is missing ({self.ledger.path})"
        return 0, Problem(1, 1, "missing", f"the ledger {state}, but {evidence[0]}: its records were deleted")

    def check_one(self, tree: MerkleTree, checkpoint: Checkpoint, where: str, cut_kind: str) -> tuple[int, Problem] | None:
        """One checkpoint: this ledger's, signed by a published key, no larger than the ledger, and
        consistent with the current tree (RFC 9162 consistency proof)."""
        count = tree.size
        if checkpoint.origin != self.ledger.origin:
            return count, Problem(count, None, "foreign-checkpoint",
                                  f"{where} is a checkpoint of ledger {checkpoint.origin!r}, not {self.ledger.origin!r}")
        if not signature_ok(checkpoint, self.trusted):
            known = "no published key" if not self.trusted else f"the published key(s) {sorted(self.trusted)}"
            return count, Problem(count, None, "forged-checkpoint",
                                  f"{where} ({checkpoint.describe()}) is not signed by {known}")
        if checkpoint.size > count:
            what = ("records were cut from its end" if cut_kind == "truncated"
                    else "records were removed, or an older copy of the ledger restored")
            return count, Problem(count + 1, count + 1, cut_kind,
                                  f"{where} signed {checkpoint.size} records ({checkpoint.time}), "
                                  f"the ledger holds {count}: {what}")
        proof = tree.consistency_proof(checkpoint.size)
        if not verify_consistency(checkpoint.size, count, bytes.fromhex(checkpoint.root), tree.root(), proof):
            # The records in doubt: after the largest checkpoint that still matched, up to this one.
            good = max((size for size in self.matched if size < checkpoint.size), default=0)
            return good, Problem(good + 1, good + 1, "rewritten",
                                 f"the records between seq {good + 1} and {checkpoint.size} are not the ones "
                                 f"{where} signed ({checkpoint.describe()}): records were replaced, deleted or "
                                 "inserted and the chain recomputed")
        self.matched.append(checkpoint.size)
        return None

    def check_stored(self, tree: MerkleTree, stored: list[tuple[int, Checkpoint]],
                     bad_lines: list[int]) -> tuple[int, Problem] | None:
        if bad_lines:
            return tree.size, Problem(tree.size, None, "checkpoint-malformed",
                                      f"{self.ledger.checkpoints_path.name} line {bad_lines[0]} is not a checkpoint")
        for line, checkpoint in sorted(stored, key=lambda item: item[1].size):
            found = self.check_one(tree, checkpoint, f"checkpoint {self.ledger.checkpoints_path.name}:{line}",
                                   "truncated")
            if found is not None:
                return found
            self.latest = checkpoint
        return None

    def check_witnessed(self, tree: MerkleTree, witnessed: list[Witnessed],
                        malformed: list[str]) -> tuple[int, Problem] | None:
        if malformed:
            return tree.size, Problem(tree.size, None, "witness-malformed",
                                      f"{malformed[0]} holds something that is not a checkpoint")
        for w in sorted(witnessed, key=lambda w: w.checkpoint.size):
            found = self.check_one(tree, w.checkpoint, f"the checkpoint witnessed at {w.source}", "restored")
            if found is not None:
                return found
        return None

    def check_inclusion(self, tree: MerkleTree) -> tuple[int, Problem] | None:
        """Every record up to the latest signed checkpoint proves its inclusion in that tree."""
        if self.latest is None:
            return None
        size, root = self.latest.size, bytes.fromhex(self.latest.root)
        for index in range(size):
            if not verify_inclusion(tree.leaf(index), index, size, tree.inclusion_proof(index, size), root):
                return index, Problem(index + 1, index + 1, "rewritten",
                                      f"record {index + 1} is not included in the tree signed at {self.latest.time}")
        return None

    def check_witnesses_read(self, stored: list[tuple[int, Checkpoint]]) -> tuple[int, Problem] | None:
        """Fail closed: once checkpoints exist, a witness that cannot be read is a check not made."""
        if not self.witness_errors:
            return None
        signed = bool(stored) or (self.ledger.keys is not None and self.ledger.keys.published())
        if not signed:
            return None
        count = len(self.records)
        names = ", ".join(error.split(":", 1)[0] for error in self.witness_errors)
        return count, Problem(count, None, "unwitnessed",
                              f"could not read the witness(es) {names}: without them a restored or cut ledger "
                              "cannot be told from the current one")


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


def checkpoint_keys(settings: Settings) -> CheckpointKeys:
    """The stack's checkpoint key pair: private in the credentials directory, public in
    ``state_dir/keys``."""
    return CheckpointKeys(settings.credentials_dir / "ledger-checkpoint.key",
                          settings.state_dir / "keys" / "ledger-checkpoint.pub")


def file_witness(settings: Settings) -> FileWitness:
    """The stack's local witness: beside the ledger's directory, not in it."""
    return FileWitness(settings.state_dir / "witness" / "ledger-checkpoints.jsonl")


def ledger_from_settings(settings: Settings, witnesses: Sequence[CheckpointWitness] = (),
                         sign: bool = True) -> AuditLedger:
    """The ledger the stack in ``settings`` writes to: its checkpoints signed with the stack's
    key and kept by the local file witness and ``witnesses`` (MLflow, Prefect:
    ``modelyard.resources.witness.ledger_witnesses``). ``sign=False``: append only, never
    touching the signing key (a model server); the next trusted append signs what is due."""
    return AuditLedger(settings.ledger_path, keys=checkpoint_keys(settings) if sign else None,
                       witnesses=(file_witness(settings), *witnesses))
