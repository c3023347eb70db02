#!/usr/bin/env python3
"""Check an inclusion proof from `modelyard audit prove SEQ` with nothing but the ledger's public
checkpoint key: Python's standard library and `cryptography`, no modelyard.

    modelyard audit prove 42 > proof.json
    python verify_inclusion.py proof.json --public-key ledger-checkpoint.pub

It checks that the checkpoint is signed by that key (ed25519), that the record hashes to the
proof's leaf (RFC 9162: SHA-256(0x00 || canonical JSON of the record without "hash")), and that
the audit path leads from that leaf to the signed tree head (RFC 9162 §2.1.3.2). Exit 0: proven.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

FORMAT = "modelyard-ledger-checkpoint/v1"


def canonical(record: dict) -> bytes:
    body = {key: value for key, value in record.items() if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """The tree head the audit path leads to (RFC 9162 §2.1.3.2), or None if it cannot be one."""
    if not 0 <= index < size:
        return None
    fn, sn, head = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            head = node(sibling, head)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            head = node(head, sibling)
        fn >>= 1
        sn >>= 1
    return head if sn == 0 else None


def check(proof: dict, public_key: Ed25519PublicKey) -> str:
    """What the proof proves; raises ValueError naming the first thing that does not hold."""
    if proof.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} proof")
    cp = proof["checkpoint"]
    raw_key = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if cp["key_id"] != hashlib.sha256(raw_key).hexdigest()[:16]:
        raise ValueError(f"the checkpoint is signed by key {cp['key_id']}, not by this public key")
    message = (f"{FORMAT}\norigin {cp['origin']}\nsize {cp['size']}\nroot {cp['root']}\n"
               f"time {cp['time']}\nkey {cp['key_id']}\n").encode()
    try:
        public_key.verify(base64.b64decode(cp["signature"], validate=True), message)
    except (InvalidSignature, ValueError) as error:
        raise ValueError("the checkpoint's signature is not valid for this public key") from error
    leaf = bytes.fromhex(proof["leaf_hash"])
    record = proof.get("record")
    if record is not None:
        if hashlib.sha256(b"\x00" + canonical(record)).digest() != leaf:
            raise ValueError("the record does not hash to the proof's leaf")
        if hashlib.sha256(canonical(record)).hexdigest() != record.get("hash"):
            raise ValueError("the record's own hash field does not match its content")
        if record.get("seq") != proof["leaf_index"] + 1:
            raise ValueError(f"the record is seq {record.get('seq')}, the proof is for leaf {proof['leaf_index']}")
    if proof["tree_size"] != cp["size"]:
        raise ValueError(f"the proof is for a tree of {proof['tree_size']}, the checkpoint signs {cp['size']}")
    root = root_from_path(leaf, proof["leaf_index"], proof["tree_size"], [bytes.fromhex(h) for h in proof["audit_path"]])
    if root is None or root.hex() != cp["root"]:
        raise ValueError("the audit path does not lead to the signed tree head")
    return (f"record {proof['leaf_index'] + 1} is in ledger {cp['origin']!r} as signed at {cp['time']} "
            f"({cp['size']} records, root {cp['root'][:16]}…, key {cp['key_id']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("proof", help="the proof JSON from `modelyard audit prove`, or - for stdin")
    parser.add_argument("--public-key", required=True, help="the ledger's ed25519 public key (PEM)")
    args = parser.parse_args(argv)
    with open(args.public_key, "rb") as handle:
        public_key = load_pem_public_key(handle.read())
    if not isinstance(public_key, Ed25519PublicKey):
        print("FAILED: the public key is not an ed25519 key", file=sys.stderr)
        return 1
    text = sys.stdin.read() if args.proof == "-" else open(args.proof, encoding="utf-8").read()
    try:
        proven = check(json.loads(text), public_key)
    except KeyError as error:
        print(f"FAILED: the proof has no {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"OK: {proven}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
