"""The Merkle tree of URS §7 against RFC 9162 §2.1, written out recursively here as reference."""

import hashlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.entry import ZERO_HASH, canonical_bytes, make_entry
from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryNodeStore,
    MissingNodeError,
    compact_range,
    consistency_coords,
    consistency_proof,
    inclusion_coords,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_for_append,
    nodes_for_append_batch,
    root_coords,
    root_from_leaves,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

SMALL = 70
LARGE = 5000


# --- the RFC 9162 definitions, verbatim in recursive form ------------------------------------


def _k(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m, leaves):
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m, leaves, b):
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_proof(m, leaves):
    return ref_subproof(m, leaves, True)


# --- fixtures ----------------------------------------------------------------------------------


def make_leaves(count):
    return [leaf_hash(f"entry {i}".encode()) for i in range(count)]


def build_store(leaves):
    store = MemoryNodeStore()
    for size, leaf in enumerate(leaves):
        store.put_nodes(nodes_for_append(size, leaf, store))
    return store


class CountingStore:
    """Wraps a store and records every get_nodes call, to check what an operation reads."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def get_nodes(self, coords):
        coords = list(coords)
        self.calls.append(coords)
        return self.inner.get_nodes(coords)


SMALL_LEAVES = make_leaves(SMALL)
SMALL_STORE = build_store(SMALL_LEAVES)
LARGE_LEAVES = make_leaves(LARGE)
LARGE_STORE = build_store(LARGE_LEAVES)


def flipped(proof, i):
    changed = bytearray(proof[i])
    changed[0] ^= 1
    return [*proof[:i], bytes(changed), *proof[i + 1 :]]


# --- hashes and roots --------------------------------------------------------------------------


def test_leaf_hash_of_the_urs_appendix_a_entry_is_the_published_one():
    entry = make_entry(
        seq=0,
        time=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        actor="system",
        role="system",
        action="trial.initialised",
        subject="RECLAIIM",
        data={"trial": "RECLAIIM", "weight_kg": "70.5"},
        prev=ZERO_HASH,
    )
    assert leaf_hash(canonical_bytes(entry)).hex() == (
        "5a0c199c61becf904ab898569258b4ae4f30ae54e4d7ecd42e7038e821bca07d"
    )


def test_hashes_use_the_rfc_9162_domain_separation_prefixes():
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(SMALL + 1))
def test_stored_root_equals_the_recursive_definition_at_every_size(size):
    expected = ref_mth(SMALL_LEAVES[:size])
    assert root_from_leaves(SMALL_LEAVES[:size]) == expected
    assert root_hash(size, SMALL_STORE) == expected
    assert root_hash(size, build_store(SMALL_LEAVES[:size])) == expected


def test_compact_range_gives_the_root_at_every_size():
    tree = CompactRange()
    assert tree.root() == EMPTY_ROOT
    for size, leaf in enumerate(SMALL_LEAVES, start=1):
        tree.append(leaf)
        assert (tree.size, tree.root()) == (size, ref_mth(SMALL_LEAVES[:size]))


@given(st.integers(min_value=0, max_value=LARGE), st.integers(min_value=0, max_value=40))
def test_a_compact_range_is_the_tree_computed_from_scratch(size, more):
    """Issue 9: the head keeps only the frontier, and appends and roots come from it alone."""
    leaves = LARGE_LEAVES[:size]
    # Rebuilt from its stored form at ``size``, as the service reads the head row...
    tree = CompactRange.from_bytes(size, compact_range(size, LARGE_STORE).to_bytes())
    assert tree.frontier == [LARGE_STORE.get_nodes([c])[c] for c in root_coords(size)]
    assert tree.root() == root_from_leaves(leaves) == ref_mth(leaves)
    # ... then grown: each append gives the nodes nodes_for_append would store, and the root
    # of every later size is that of the whole tree recomputed from its leaves.
    store = build_store(leaves)
    for leaf in make_leaves(size + more)[size:]:
        expected = nodes_for_append(tree.size, leaf, store)
        assert tree.append(leaf) == expected
        store.put_nodes(expected)
        leaves = [*leaves, leaf]
        assert tree.root() == ref_mth(leaves)
    assert tree.frontier == [store.get_nodes([c])[c] for c in root_coords(tree.size)]
    assert CompactRange.from_bytes(tree.size, tree.to_bytes()).root() == tree.root()


@pytest.mark.parametrize(("size", "hashes"), [(0, 1), (1, 0), (5, 1), (5, 3), (2**20, 2)])
def test_a_frontier_of_the_wrong_length_is_refused(size, hashes):
    with pytest.raises(ValueError, match="frontier"):
        CompactRange.from_bytes(size, b"\x07" * 32 * hashes)
    with pytest.raises(ValueError, match="frontier"):
        CompactRange(size, [b"\x07" * 32] * hashes)


def test_the_compact_range_of_a_store_missing_a_frontier_node_is_an_error():
    store = build_store(SMALL_LEAVES[:4])
    with pytest.raises(MissingNodeError):
        compact_range(5, store)  # leaf 4 was never stored


def test_an_operation_never_reads_nodes_beyond_its_tree_size():
    for size in range(1, SMALL + 1):
        wanted = list(root_coords(size))
        for index in range(size):
            wanted += inclusion_coords(index, size)
        for first in range(1, size + 1):
            wanted += consistency_coords(first, size)
        assert all((index + 1) << level <= size for level, index in wanted)


# --- appending ---------------------------------------------------------------------------------


def test_append_stores_the_leaf_and_every_perfect_subtree_it_completes():
    store = build_store(SMALL_LEAVES[:7])
    nodes = nodes_for_append(7, SMALL_LEAVES[7], store)
    assert [(level, index) for level, index, _ in nodes] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert nodes[-1][2] == ref_mth(SMALL_LEAVES[:8])


@pytest.mark.parametrize("size", [*range(0, 300), 2**20 - 1, 2**20, 10**6 + 12345])
def test_append_reads_only_log_n_nodes_in_one_call(size):
    # A store that pretends to hold every node: only what is asked for matters here.
    class Everything:
        def get_nodes(self, coords):
            return {coord: b"\x07" * 32 for coord in coords}

    counting = CountingStore(Everything())
    nodes = nodes_for_append(size, b"\x01" * 32, counting)
    reads = [coord for call in counting.calls for coord in call]
    assert len(counting.calls) <= 1
    assert len(reads) <= max(1, size.bit_length())
    assert len(reads) == len(nodes) - 1  # one left sibling per completed subtree


@pytest.mark.parametrize("size", [0, 1, 5, 8, 63])
@pytest.mark.parametrize("count", [1, 2, 3, 9, 17])
def test_batch_append_equals_one_by_one_and_keeps_new_nodes_in_an_overlay(size, count):
    leaves = LARGE_LEAVES[: size + count]
    before = build_store(leaves[:size])
    counting = CountingStore(before)
    batch = nodes_for_append_batch(size, leaves[size:], counting)
    assert len(counting.calls) <= 1
    reads = [coord for call in counting.calls for coord in call]
    assert all((index + 1) << level <= size for level, index in reads)  # old nodes only
    assert len(before) == len(build_store(leaves[:size]))  # nothing written to the store

    one_by_one = build_store(leaves[:size])
    expected = []
    for i in range(size, size + count):
        nodes = nodes_for_append(i, leaves[i], one_by_one)
        one_by_one.put_nodes(nodes)
        expected += nodes
    assert batch == expected
    before.put_nodes(batch)
    assert root_hash(size + count, before) == ref_mth(leaves)


def test_append_refuses_entry_bytes_instead_of_a_leaf_hash():
    with pytest.raises(ValueError, match="leaf_hash"):
        nodes_for_append(0, b'{"seq":0}', MemoryNodeStore())


def test_a_store_missing_a_node_is_an_error_not_a_wrong_answer():
    store = MemoryNodeStore()
    store.put_nodes(nodes_for_append(0, SMALL_LEAVES[0], store))
    with pytest.raises(MissingNodeError):
        nodes_for_append(3, SMALL_LEAVES[3], store)  # needs leaf 2, never stored
    with pytest.raises(MissingNodeError):
        root_hash(5, store)


# --- inclusion proofs --------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, SMALL + 1))
def test_inclusion_proof_for_every_index_equals_the_rfc_path_and_verifies(size):
    leaves = SMALL_LEAVES[:size]
    root = ref_mth(leaves)
    for index in range(size):
        counting = CountingStore(SMALL_STORE)
        proof = inclusion_proof(index, size, counting)
        assert proof == ref_path(index, leaves)
        assert len(counting.calls) == 1
        assert verify_inclusion(leaves[index], index, size, proof, root)


@pytest.mark.parametrize("size", range(1, SMALL + 1))
def test_inclusion_fails_for_any_change(size):
    leaves = SMALL_LEAVES[:size]
    root = ref_mth(leaves)
    other_root = ref_mth(LARGE_LEAVES[: size + 1])
    for index in range(size):
        proof = inclusion_proof(index, size, SMALL_STORE)
        leaf = leaves[index]
        for i in range(len(proof)):
            assert not verify_inclusion(leaf, index, size, flipped(proof, i), root)
        assert not verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)
        assert not verify_inclusion(leaf, index, size, proof, other_root)
        for wrong_index in {index - 1, index + 1, index ^ 1, size, -1} - {index}:
            assert not verify_inclusion(leaf, wrong_index, size, proof, root)
        # A verifier takes size and root together from a checkpoint: a proof made for one
        # size must not verify against the tree head of another.
        for wrong_size in (size - 1, size + 1, 2 * size):
            wrong_root = ref_mth(LARGE_LEAVES[:wrong_size])
            assert not verify_inclusion(leaf, index, wrong_size, proof, wrong_root)
        assert not verify_inclusion(leaf, index, 0, proof, EMPTY_ROOT)
        assert not verify_inclusion(leaf, index, size, [*proof, leaf], root)
        if proof:
            assert not verify_inclusion(leaf, index, size, proof[:-1], root)
            assert not verify_inclusion(leaf, index, size, proof[1:], root)
        assert not verify_inclusion(leaf, index, size, [*proof, b"short"], root)


def test_inclusion_proof_refuses_an_index_outside_the_tree():
    for index, size in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            inclusion_proof(index, size, SMALL_STORE)


# --- consistency proofs ------------------------------------------------------------------------


@pytest.mark.parametrize("second", range(1, SMALL + 1))
def test_consistency_proof_for_every_pair_equals_the_rfc_proof_and_verifies(second):
    for first in range(1, second + 1):
        counting = CountingStore(SMALL_STORE)
        proof = consistency_proof(first, second, counting)
        assert proof == ref_proof(first, SMALL_LEAVES[:second])
        assert len(counting.calls) == 1
        first_root, second_root = ref_mth(SMALL_LEAVES[:first]), ref_mth(SMALL_LEAVES[:second])
        assert verify_consistency(first, second, first_root, second_root, proof)
    assert consistency_proof(second, second, SMALL_STORE) == []


@pytest.mark.parametrize("second", range(1, SMALL + 1))
def test_consistency_fails_for_any_change(second):
    second_root = ref_mth(SMALL_LEAVES[:second])
    forked = [*SMALL_LEAVES[: second - 1], leaf_hash(b"rewritten")]
    for first in range(1, second + 1):
        first_root = ref_mth(SMALL_LEAVES[:first])
        proof = consistency_proof(first, second, SMALL_STORE)
        assert verify_consistency(first, second, first_root, second_root, proof)
        for i in range(len(proof)):
            assert not verify_consistency(first, second, first_root, second_root, flipped(proof, i))
        assert not verify_consistency(first, second, first_root, ref_mth(forked), proof)
        if first < second:
            assert not verify_consistency(first, second, second_root, second_root, proof)
        for wrong_first in (first - 1, first + 1):
            if 0 < wrong_first <= second and wrong_first != first:
                assert not verify_consistency(wrong_first, second, first_root, second_root, proof)
        for wrong_second in (second - 1, second + 1):
            if wrong_second >= first:
                wrong_root = ref_mth(LARGE_LEAVES[:wrong_second])
                assert not verify_consistency(first, wrong_second, first_root, wrong_root, proof)
        assert not verify_consistency(first, second, first_root, second_root, [*proof, second_root])
        if proof:
            assert not verify_consistency(first, second, first_root, second_root, proof[:-1])
            assert not verify_consistency(first, second, first_root, second_root, proof[1:])


def test_consistency_of_equal_sizes_needs_an_empty_proof_and_equal_roots():
    root = ref_mth(SMALL_LEAVES[:9])
    assert verify_consistency(9, 9, root, root, [])
    assert not verify_consistency(9, 9, root, ref_mth(SMALL_LEAVES[:8]), [])
    assert not verify_consistency(9, 9, root, root, [root])


def test_consistency_needs_0_lt_first_le_second():
    root = ref_mth(SMALL_LEAVES[:4])
    for first, second in [(0, 4), (5, 4), (-1, 4), (0, 0)]:
        with pytest.raises(ValueError):
            consistency_proof(first, second, SMALL_STORE)
        assert not verify_consistency(first, second, EMPTY_ROOT, root, [])


# --- larger random trees -----------------------------------------------------------------------


@given(st.data())
def test_inclusion_at_random_sizes_up_to_5000(data):
    size = data.draw(st.integers(1, LARGE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    leaves = LARGE_LEAVES[:size]
    proof = inclusion_proof(index, size, LARGE_STORE)
    assert proof == ref_path(index, leaves)
    assert len(proof) <= (size - 1).bit_length()
    root = root_hash(size, LARGE_STORE)
    assert root == root_from_leaves(leaves)
    assert verify_inclusion(leaves[index], index, size, proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="flip")
        assert not verify_inclusion(leaves[index], index, size, flipped(proof, i), root)


@given(st.data())
def test_consistency_at_random_sizes_up_to_5000(data):
    second = data.draw(st.integers(1, LARGE), label="second")
    first = data.draw(st.integers(1, second), label="first")
    proof = consistency_proof(first, second, LARGE_STORE)
    assert proof == ref_proof(first, LARGE_LEAVES[:second])
    first_root = root_hash(first, LARGE_STORE)
    second_root = root_hash(second, LARGE_STORE)
    assert verify_consistency(first, second, first_root, second_root, proof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="flip")
        assert not verify_consistency(first, second, first_root, second_root, flipped(proof, i))


@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_batches_of_any_sizes_build_the_same_tree(batch_sizes):
    store = MemoryNodeStore()
    size = 0
    for count in batch_sizes:
        leaves = LARGE_LEAVES[size : size + count]
        store.put_nodes(nodes_for_append_batch(size, leaves, store))
        size += count
    assert root_hash(size, store) == root_from_leaves(LARGE_LEAVES[:size])


def test_nodes_fetched_in_one_query_can_be_wrapped_as_a_store():
    coords = inclusion_coords(17, 70)
    fetched = SMALL_STORE.get_nodes(coords)  # what a database would return for the plan
    assert len(fetched) == len(coords)
    assert inclusion_proof(17, 70, MemoryNodeStore(fetched)) == ref_path(17, SMALL_LEAVES)
