"""RFC 9162 Merkle tree hashing (the Certificate Transparency log's): tree heads, inclusion
and consistency proofs and their verification, and the right edge of a growing tree.

Hashes are 32-byte ``bytes``. A leaf's input is the entry's bytes: ``leaf_hash`` adds the 0x00
prefix, ``node_hash`` the 0x01 prefix, so that no leaf can pass for an inner node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}): the head of a tree with no leaves


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than ``n`` (n > 1), where MTH splits D[n]."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of leaf hashes, by the RFC's recursive definition (the reference)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


class Frontier:
    """The right edge of a tree: the heads of its perfect subtrees, largest first, one per set
    bit of its size. Adding a leaf and taking the head are O(log n), so a growing log never
    rehashes its past."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"a tree of {size} leaves has {bin(size).count('1')} edge hashes, not {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        self.hashes.append(leaf)
        size = self.size
        while size & 1:  # each carry merges two perfect subtrees of the same height
            right = self.hashes.pop()
            self.hashes[-1] = node_hash(self.hashes[-1], right)
            size >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        head = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            head = node_hash(left, head)
        return head

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)


class MerkleTree:
    """A tree over leaf hashes with every perfect subtree's head kept, so that any head,
    inclusion proof or consistency proof takes O(log n) hashes."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end])."""
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        height = n.bit_length() - 1
        if n == 1 << height and start % n == 0:
            return self.levels[height][start >> height]
        k = _split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The head of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree of size {size} among {self.size} leaves")
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]) (RFC 9162 §2.1.3.1): the audit path of leaf ``index`` in the tree of
        the first ``size`` leaves."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")

        def path(m: int, start: int, end: int) -> list[bytes]:
            n = end - start
            if n == 1:
                return []
            k = _split(n)
            if m < k:
                return [*path(m, start, start + k), self.subtree(start + k, end)]
            return [*path(m - k, start + k, end), self.subtree(start, start + k)]

        return path(index, 0, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) (RFC 9162 §2.1.4.1): that the tree of ``old_size`` leaves is a prefix
        of the tree of ``new_size`` leaves."""
        new_size = self.size if new_size is None else new_size
        if not 0 <= old_size <= new_size <= self.size:
            raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
        if old_size in (0, new_size):
            return []

        def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
            n = end - start
            if m == n:
                return [] if complete else [self.subtree(start, end)]
            k = _split(n)
            if m <= k:
                return [*subproof(m, start, start + k, complete), self.subtree(start + k, end)]
            return [*subproof(m - k, start + k, end, False), self.subtree(start, start + k)]

        return subproof(old_size, 0, new_size, True)


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove that ``leaf`` is leaf ``index`` of the tree of
    ``size`` leaves whose head is ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, head = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            head = node_hash(sibling, head)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            head = node_hash(head, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and head == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show that the tree of ``old_size`` leaves with head
    ``old_root`` is a prefix of the tree of ``new_size`` leaves with head ``new_root``?"""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:  # the empty tree is a prefix of every tree
        return not proof and old_root == EMPTY_ROOT
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old head is a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
