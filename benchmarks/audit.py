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
import base64
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
from audit.entry import ZERO_HASH, canonical_bytes, entry_hash, format_time  # noqa: E402
from audit.merkle import (  # noqa: E402
    CompactRange,
    MemoryNodeStore,
    inclusion_proof,
    leaf_hash,
    nodes_for_append,
    verify_inclusion,
)
from audit.verify import verify_export_stream  # noqa: E402

ORIGIN = "sealroom/RECLAIIM"
SITES = ["101", "102", "201"]
STAFF = {"101": "coord101", "102": "coord102", "201": "coord201"}
STRATA = [
    f"region={region}|prior_ig={prior}"
    for region in ("north_america", "europe", "rest_of_world")
    for prior in ("yes", "no")
]


def b64(rng, size):
    return base64.b64encode(rng.randbytes(size)).decode()


def synthetic_entry(rng, seq, moment, prev):
    """One entry shaped like the service's: mostly screenings, randomisations and kit moves."""
    site = rng.choice(SITES)
    sn = f"{site}-{rng.randrange(10000):04d}"
    kind = rng.random()
    if kind < 0.3:
        action, subject, role = "participant.randomized", sn, "investigator"
        data = {
            "randomization_number": f"R-{seq:07d}",
            "stratum": rng.choice(STRATA),
            "kits": [f"K-{rng.randrange(10**6):06d}" for _ in range(rng.randint(2, 4))],
            "weight_kg": f"{rng.randint(40, 140)}.{rng.randrange(10)}",
            "eligibility": {
                "age_years": rng.randint(18, 85),
                "consent_signed": True,
                "diagnosis_confirmed": True,
                "prior_ig": rng.choice(["yes", "no"]),
                "pregnant": False,
                "egfr_ml_min": rng.randint(30, 120),
            },
            "sealed_arm": {
                "key_id": "dk-2026-01",
                "nonce": b64(rng, 12),
                "ciphertext": b64(rng, 40),
            },
        }
    elif kind < 0.55:
        action, subject, role = "participant.screened", sn, "coordinator"
        data = {
            "site": site,
            "screened_on": (moment.date() - timedelta(days=rng.randrange(3))).isoformat(),
            "strata": {"region": rng.choice(["north_america", "europe"]), "prior_ig": "yes"},
            "window_days": 28,
            "screening_form": {
                "version": "3.1",
                "checksum": hashlib.sha256(sn.encode()).hexdigest(),
            },
        }
    elif kind < 0.85:
        kit = f"K-{rng.randrange(10**6):06d}"
        action, subject, role = "kit.status_changed", kit, "pharmacist"
        data = {
            "kit": kit,
            "site": site,
            "from": "available",
            "to": rng.choice(["dispensed", "damaged", "returned"]),
            "participant": sn,
            "visit": rng.choice(["baseline", "week4", "week8", "week12"]),
            "reason": "dispensed at visit per protocol section 6.2; temperature log checked",
            "replacement_kits": [],
        }
    else:
        action, subject, role = "participant.randomization_refused", sn, "coordinator"
        data = {
            "failed_rules": ["INC-3", "EXC-7"],
            "reason": "ineligible: eGFR below threshold and prior IG within 90 days",
            "eligibility": {"age_years": rng.randint(18, 85), "egfr_ml_min": rng.randint(10, 29)},
            "weight_kg": f"{rng.randint(40, 140)}.{rng.randrange(10)}",
        }
    return {
        "seq": seq,
        "time": format_time(moment),
        "actor": STAFF[site] if role != "investigator" else f"inv{site}",
        "role": role,
        "action": action,
        "subject": subject,
        "data": data,
        "prev": prev,
    }


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
