"""The audit Merkle tree of RFC 9162 §2.1 (URS §7): hashes, stored subtrees and proofs.

The tree is never rebuilt. A node store keeps the hash of every *perfect* subtree that the
log has completed, addressed by ``(level, index)``: the subtree of ``2**level`` leaves that
starts at leaf ``index * 2**level``. Any subtree the RFC talks about, ``MTH(D[start:end])``,
is then the right fold of at most ``log2(n)`` perfect subtrees, so appends, tree heads and
proofs all cost O(log n) stored hashes.

Each operation comes in two halves so that a database can answer it in one query: a
``*_coords`` function plans which ``(level, index)`` nodes are needed, and the function of
the same name without the suffix fetches them with one ``NodeStore.get_nodes`` call and
assembles the result. Pure: standard library only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

Coord = tuple[int, int]
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class MissingNodeError(LookupError):
    """The node store lacks a subtree hash that a tree of the requested size must have."""


class NodeStore(Protocol):
    """Where the hashes of completed perfect subtrees live (a dict, a database table)."""

    def get_nodes(self, coords: Iterable[Coord]) -> Mapping[Coord, bytes]:
        """Return the stored hash of each requested ``(level, index)``; absent ones omitted.

        Called once per operation with every coordinate it needs, so that a database
        store can answer with a single query.
        """
        ...


class MemoryNodeStore:
    """A dict-backed node store, for tests, benchmarks and small in-process logs."""

    def __init__(self, nodes: Mapping[Coord, bytes] | None = None) -> None:
        """Start empty, or from nodes already fetched (e.g. by one database query)."""
        self._nodes: dict[Coord, bytes] = dict(nodes or {})

    def get_nodes(self, coords: Iterable[Coord]) -> dict[Coord, bytes]:
        """Return the stored hash of each requested coordinate that is present."""
        nodes = self._nodes
        return {coord: nodes[coord] for coord in coords if coord in nodes}

    def put_nodes(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        """Store ``(level, index, hash)`` triples, as returned by ``nodes_for_append``."""
        for level, index, digest in nodes:
            self._nodes[(level, index)] = digest

    def __len__(self) -> int:
        """The number of stored nodes (about twice the number of leaves)."""
        return len(self._nodes)


def leaf_hash(entry_bytes: bytes) -> bytes:
    """``SHA-256(0x00 || entry bytes)``: the Merkle leaf of one entry's canonical bytes."""
    return hashlib.sha256(_LEAF_PREFIX + entry_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree head ``MTH`` computed recursively from all leaf hashes (RFC 9162 §2.1.1).

    The reference definition: linear in memory and time, for tests and small inputs.
    """
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _largest_power_of_two_below(n)
    return node_hash(root_from_leaves(leaf_hashes[:k]), root_from_leaves(leaf_hashes[k:]))


class CompactRange:
    """The running tree head of a stream of leaves, in O(log n) memory.

    Keeps only the perfect subtrees that make up ``[0, size)`` (the "frontier", one per 1 bit
    of ``size``, largest first: the nodes at ``root_coords(size)``), so a verifier can read a
    million-entry export once and still get the root at every checkpoint size it meets along
    the way, and the service can append, and sign the new root, without reading the tree.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Start at the empty tree, or at ``size`` leaves given their frontier hashes."""
        if size < 0:
            raise ValueError("tree size must be non-negative")
        if len(frontier) != size.bit_count() or any(len(h) != HASH_SIZE for h in frontier):
            raise ValueError(
                f"a tree of size {size} has a frontier of {size.bit_count()} 32-byte hashes"
            )
        self.size = size
        # Perfect subtree hashes of the frontier, largest (leftmost) first.
        self._frontier: list[bytes] = list(frontier)

    @classmethod
    def from_bytes(cls, size: int, packed: bytes) -> CompactRange:
        """The compact range of ``size`` leaves from ``to_bytes()``'s concatenated hashes."""
        if len(packed) != HASH_SIZE * size.bit_count():
            raise ValueError(
                f"a tree of size {size} has a frontier of {size.bit_count()} 32-byte hashes,"
                f" not {len(packed)} bytes"
            )
        return cls(size, [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)])

    @property
    def frontier(self) -> list[bytes]:
        """The frontier hashes, largest subtree first (the nodes at ``root_coords(size)``)."""
        return list(self._frontier)

    def to_bytes(self) -> bytes:
        """The frontier hashes concatenated, largest subtree first (32 bytes per 1 bit)."""
        return b"".join(self._frontier)

    def copy(self) -> CompactRange:
        """An independent copy (appending to it leaves this one as it is)."""
        return CompactRange(self.size, self._frontier)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the next leaf hash; amortised O(1).

        Returns the ``(level, index, hash)`` nodes the leaf completes (the leaf itself at
        ``(0, size)`` first), exactly what ``nodes_for_append`` gives, without a store.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf is a 32-byte leaf hash: pass leaf_hash(entry_bytes)")
        digest, level, index = leaf, 0, self.size
        created = [(0, index, digest)]
        # Each trailing 1 bit of the old size is a perfect subtree the new leaf completes.
        while index & 1:
            digest = node_hash(self._frontier.pop(), digest)
            level, index = level + 1, index >> 1
            created.append((level, index, digest))
        self._frontier.append(digest)
        self.size += 1
        return created

    def root(self) -> bytes:
        """The tree head ``MTH`` of the leaves appended so far; O(log n)."""
        frontier = self._frontier
        if not frontier:
            return EMPTY_ROOT
        # _fold_right written out: a verifier takes the root at every checkpoint size.
        digest, sha256 = frontier[-1], hashlib.sha256
        for left in frontier[-2::-1]:
            digest = sha256(_NODE_PREFIX + left + digest).digest()
        return digest


def compact_range(size: int, store: NodeStore) -> CompactRange:
    """The compact range of the tree of ``size`` leaves, from its stored frontier nodes."""
    coords = root_coords(size)
    nodes = store.get_nodes(coords)
    missing = [coord for coord in coords if coord not in nodes]
    if missing:
        raise MissingNodeError(f"node store has no subtree hash at {missing[0]}")
    return CompactRange(size, [nodes[coord] for coord in coords])


# --- ranges and their perfect subtrees -----------------------------------------------------------


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162: the largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_coords(start: int, end: int) -> list[Coord]:
    """The perfect subtrees whose right fold is ``MTH(D[start:end])``, left to right.

    Valid for the ranges RFC 9162 recursion produces: ``start`` is a multiple of a power
    of two at least ``end - start``, so each piece, taken largest first, is aligned.
    """
    coords = []
    position = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            coords.append((level, position >> level))
            position += 1 << level
    return coords


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """``node(h0, node(h1, ... node(h_{k-2}, h_{k-1})))``: how MTH joins its perfect parts."""
    digest = hashes[-1]
    for left in reversed(hashes[:-1]):
        digest = node_hash(left, digest)
    return digest


def _range_hash(start: int, end: int, nodes: Mapping[Coord, bytes]) -> bytes:
    parts = []
    for coord in _range_coords(start, end):
        try:
            parts.append(nodes[coord])
        except KeyError:
            raise MissingNodeError(f"node store has no subtree hash at {coord}") from None
    return _fold_right(parts)


def _coords_of(ranges: Iterable[tuple[int, int]]) -> list[Coord]:
    """Every coordinate the ranges need, each once, in a stable order."""
    return list(dict.fromkeys(c for start, end in ranges for c in _range_coords(start, end)))


def _assemble(ranges: list[tuple[int, int]], store: NodeStore) -> list[bytes]:
    nodes = store.get_nodes(_coords_of(ranges))
    return [_range_hash(start, end, nodes) for start, end in ranges]


# --- appending -----------------------------------------------------------------------------------


def nodes_for_append(size: int, leaf: bytes, store: NodeStore) -> list[tuple[int, int, bytes]]:
    """The ``(level, index, hash)`` nodes to store when leaf hash ``leaf`` becomes leaf ``size``.

    That is the leaf itself at ``(0, size)`` and each perfect subtree it completes. Reads
    only the left siblings it joins (one per trailing 1 bit of ``size``), in one call.
    """
    return nodes_for_append_batch(size, [leaf], store)


def nodes_for_append_batch(
    size: int, leaves: Sequence[bytes], store: NodeStore
) -> list[tuple[int, int, bytes]]:
    """The nodes to store when the leaf hashes ``leaves`` become leaves ``size``, ``size + 1``...

    For one transaction that appends several entries: nodes created for earlier leaves of
    the batch are kept in a local overlay (they are not in the store yet). The only stored
    nodes read are frontier subtrees of the old tree that the batch completes a parent of,
    fetched with one ``get_nodes`` call.
    """
    if size < 0:
        raise ValueError("tree size must be non-negative")
    for leaf in leaves:
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf is a 32-byte leaf hash: pass leaf_hash(entry_bytes)")
    new_size = size + len(leaves)
    # A frontier node (level, i) of the old tree (i is always even) is needed exactly when
    # the batch completes its parent, i.e. when its right sibling ends within the new size.
    needed = [(lvl, i) for lvl, i in root_coords(size) if (i + 2) << lvl <= new_size]
    overlay: dict[Coord, bytes] = dict(store.get_nodes(needed)) if needed else {}
    created: list[tuple[int, int, bytes]] = []
    for offset, leaf in enumerate(leaves):
        index, level, digest = size + offset, 0, leaf
        overlay[(0, index)] = digest
        created.append((0, index, digest))
        # While this node is a right child, its left sibling is complete: join them.
        while index & 1:
            sibling = (level, index - 1)
            if sibling not in overlay:
                raise MissingNodeError(f"node store has no subtree hash at {sibling}")
            digest = node_hash(overlay[sibling], digest)
            level, index = level + 1, index >> 1
            overlay[(level, index)] = digest
            created.append((level, index, digest))
    return created


# --- tree heads ----------------------------------------------------------------------------------


def root_coords(size: int) -> list[Coord]:
    """The perfect subtrees whose right fold is the tree head at ``size``, left to right."""
    if size < 0:
        raise ValueError("tree size must be non-negative")
    return _range_coords(0, size)


def root_hash(size: int, store: NodeStore) -> bytes:
    """The tree head ``MTH(D[0:size])`` from stored subtrees; ``EMPTY_ROOT`` for size 0."""
    if size == 0:
        return EMPTY_ROOT
    return _assemble([(0, size)], store)[0]


# --- inclusion proofs (RFC 9162 §2.1.3) ----------------------------------------------------------


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form ``PATH(index, D[0:size])``, in PATH order.

    PATH recurses from the root down and appends each sibling on the way back up, so the
    sibling nearest the leaf comes first: collect top-down, then reverse.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    ranges = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def inclusion_coords(index: int, size: int) -> list[Coord]:
    """The stored nodes ``inclusion_proof(index, size, ...)`` reads."""
    return _coords_of(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, store: NodeStore) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` (RFC 9162 §2.1.3.1 order)."""
    return _assemble(_inclusion_ranges(index, size), store)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root`` of ``size``.

    RFC 9162 §2.1.3.2, step by step. ``leaf`` is the 32-byte leaf hash
    (``leaf_hash(entry_bytes)``). Any malformed input is simply a failed proof.
    """
    if not 0 <= index < size or any(len(h) != HASH_SIZE for h in (leaf, root, *proof)):
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip the levels where this node has no right sibling (the tree's right edge).
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# --- consistency proofs (RFC 9162 §2.1.4) --------------------------------------------------------


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form ``PROOF(first, D[0:second])``, in PROOF order.

    SUBPROOF appends its node after recursing, so as with PATH the deepest node comes
    first; the ``b`` flag says whether the old tree's own head may be omitted (it may,
    while the old tree is still the left edge of the range being described).
    """
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    ranges = []
    m, start, end, complete = first, 0, second, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            complete = False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def consistency_coords(first: int, second: int) -> list[Coord]:
    """The stored nodes ``consistency_proof(first, second, ...)`` reads."""
    return _coords_of(_consistency_ranges(first, second))


def consistency_proof(first: int, second: int, store: NodeStore) -> list[bytes]:
    """The proof that the tree of ``first`` is a prefix of the tree of ``second``.

    RFC 9162 §2.1.4.1 order; empty when ``first == second``. ``0 < first <= second``,
    else ValueError.
    """
    return _assemble(_consistency_ranges(first, second), store)


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree ``first_root`` of ``first`` extends to ``second_root``.

    RFC 9162 §2.1.4.2, step by step, plus the case the RFC leaves to the caller:
    ``first == second`` holds iff the proof is empty and the roots are equal. Sizes
    outside ``0 < first <= second`` and malformed hashes are a failed proof.
    """
    if not 0 < first <= second:
        return False
    if any(len(h) != HASH_SIZE for h in (first_root, second_root, *proof)):
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        # The old tree is a perfect subtree of the new one, so the proof omits its head.
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
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
    return fr == first_root and sr == second_root and sn == 0
