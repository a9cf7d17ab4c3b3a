"""Audit trail figures: verifying a large export, proofs and appends at that size.

    .venv/bin/python benchmarks/audit.py [--entries N] [--checkpoint-every K]

Builds a synthetic export of N realistic entries (default 1,000,000; 400-600 bytes each, the
shapes URS §7 prescribes) in a temporary directory, with a signed checkpoint every K entries,
then prints:
  * entries/s verifying the export with audit.verify.verify_export_stream (canonical form,
    seq, chain, Merkle tree, checkpoint signatures), and entries/s for bare SHA-256 over the
    same lines in the same run, with their ratio;
  * checkpoints/s verified, to cost a log with one checkpoint per transaction;
  * the time to produce and to check an inclusion proof at that size from a MemoryNodeStore,
    and to append one entry (nodes_for_append).
Not part of CI: it prints figures for a person to read.
"""

import argparse
import hashlib
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# This script is itself named audit.py and Python puts its directory first on the path, where
# it would shadow the audit package: put the repository root there instead.
_REPOSITORY = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == _REPOSITORY / "benchmarks":
    sys.path[0] = str(_REPOSITORY)

from audit.checkpoint import (  # noqa: E402 (after the path fix above)
    Checkpoint,
    sign_checkpoint,
    verifier_key_from_private,
    verify_checkpoint,
)
from audit.entry import ZERO_HASH, canonical_bytes, entry_hash  # noqa: E402
from audit.merkle import (  # noqa: E402
    CompactRange,
    MemoryNodeStore,
    inclusion_proof,
    leaf_hash,
    nodes_for_append,
    verify_inclusion,
)
from audit.verify import verify_export_stream  # noqa: E402
from benchmarks.synthetic import synthetic_entry  # noqa: E402

ORIGIN = "sealroom/RECLAIIM"


def build_export(path, count, every, key):
    """Write the export; return (checkpoint notes, MemoryNodeStore, head hash, bytes written)."""
    rng = random.Random(20261129)
    tree, store = CompactRange(), MemoryNodeStore()
    notes, prev, written = [], ZERO_HASH, 0
    moment = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    with open(path, "wb") as export:
        for seq in range(count):
            moment += timedelta(microseconds=rng.randrange(1, 90_000_000))
            raw = canonical_bytes(synthetic_entry(rng, seq, moment, prev))
            export.write(raw + b"\n")
            written += len(raw)
            prev = entry_hash(raw)
            leaf = leaf_hash(raw)
            tree.append(leaf)
            store.put_nodes(nodes_for_append(seq, leaf, store))
            if tree.size % every == 0 or tree.size == count:
                notes.append(
                    sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), key, ORIGIN)
                )
    return notes, store, prev, written


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    args = parser.parse_args()
    n = args.entries
    key = Ed25519PrivateKey.generate()
    verifier = verifier_key_from_private(ORIGIN, key)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        (notes, store, head, written), build_s = timed(
            build_export, path, n, args.checkpoint_every, key
        )
        print(
            f"built {n:,} entries ({written / n:.0f} bytes on average, {len(notes):,} checkpoints)"
            f" in {build_s:.1f} s"
        )

        with open(path, "rb") as lines:
            report, verify_s = timed(verify_export_stream, lines, notes, verifier, head_hash=head)
        assert report.ok, report.problems
        with open(path, "rb") as lines:
            _, sha_s = timed(lambda: [hashlib.sha256(line).digest() for line in lines])
        print(f"verify_export_stream: {n / verify_s:,.0f} entries/s ({verify_s:.1f} s)")
        print(f"bare SHA-256 per line: {n / sha_s:,.0f} entries/s ({sha_s:.2f} s)")
        print(f"ratio: verification costs {verify_s / sha_s:.0f}x one bare SHA-256 per entry")

    sample = notes[: min(len(notes), 2000)]
    _, cp_s = timed(lambda: [verify_checkpoint(note, verifier) for note in sample])
    per_cp = cp_s / len(sample)
    print(
        f"verify_checkpoint: {1 / per_cp:,.0f} checkpoints/s; with one checkpoint per entry,"
        f" verification would run at about {1 / (verify_s / n + per_cp):,.0f} entries/s"
    )

    rng = random.Random(1)
    indexes = [rng.randrange(n) for _ in range(1000)]
    proofs, proof_s = timed(lambda: [inclusion_proof(i, n, store) for i in indexes])
    root = report.latest.root
    leaves = store.get_nodes((0, i) for i in indexes)
    _, check_s = timed(
        lambda: [
            verify_inclusion(leaves[(0, i)], i, n, p, root)
            for i, p in zip(indexes, proofs, strict=True)
        ]
    )
    print(
        f"inclusion_proof at size {n:,}: {proof_s / len(indexes) * 1e6:.1f} us per proof"
        f" ({len(proofs[0])} hashes); verify_inclusion: {check_s / len(indexes) * 1e6:.1f} us"
    )

    def append_many(count):
        for size in range(n, n + count):
            store.put_nodes(nodes_for_append(size, leaf_hash(b"%d" % size), store))

    _, append_s = timed(append_many, 1000)
    print(
        f"nodes_for_append at size {n:,}: {append_s / 1000 * 1e6:.1f} us per entry (with put_nodes)"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak_mb:,.0f} MB (the MemoryNodeStore holds {len(store):,} nodes)")


if __name__ == "__main__":
    main()
