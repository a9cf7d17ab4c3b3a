"""`sealroom audit verify` against its floor on this machine (issue 9: within 1.5x).

    .venv/bin/python benchmarks/verify.py [--entries 300000] [--rounds 2]

Builds a demo trial on SQLite whose audit log is grown to --entries valid entries with one
signed checkpoint per entry (what one checkpoint per transaction gives), then in interleaved
rounds times:
  * `sealroom audit verify --verifier-key KEY`, the real command in a process of its own;
  * bare SHA-256 over the same entry bytes, in one process;
  * one Ed25519 verification per stored checkpoint, with a process per core (a pool started
    and warmed up beforehand: only the verifications are timed).
The floor is the larger of the last two; prints each, entries/s and the ratio verify / floor.
Not part of CI; quote the ratio (the coordinator reruns it on a quiet machine).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parents[1]
# benchmarks/audit.py would shadow the audit package: the repository comes first.
sys.path.insert(0, str(_REPOSITORY))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from sqlalchemy import select  # noqa: E402

from audit.checkpoint import parse_checkpoint, verifier_key_from_private  # noqa: E402
from benchmarks.logsize import grow_log  # noqa: E402
from benchmarks.randomize import demo_trial  # noqa: E402
from keys import load_signing_key  # noqa: E402
from randomizer.domain import parse_trial  # noqa: E402
from randomizer.models import AuditCheckpoint, AuditEntry, Trial  # noqa: E402

SEALROOM = Path(sys.executable).with_name("sealroom")


def verify_signatures(public: bytes, pairs: list[tuple[bytes, bytes]]) -> int:
    """Check each (signature, body) with the raw Ed25519 public key: the floor's unit of work."""
    key = Ed25519PublicKey.from_public_bytes(public)
    for signature, body in pairs:
        key.verify(signature, body)
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        url = f"sqlite:///{root / 'verify.db'}"
        settings, database, _tokens, _kits = demo_trial(url, root, 20)
        built = grow_log(database, settings.keys_dir, args.entries, checkpoint_every=1)
        with database.reading() as session:
            origin = parse_trial(session.scalars(select(Trial.definition_toml)).one()).audit_origin
            lines = [c.encode() for c in session.scalars(select(AuditEntry.canonical))]
            notes = list(session.scalars(select(AuditCheckpoint.note)))
        database.dispose()
        key = verifier_key_from_private(origin, load_signing_key(settings.keys_dir))
        print(
            f"built {len(lines):,} entries ({sum(map(len, lines)) / len(lines):.0f} bytes on"
            f" average) and {len(notes):,} checkpoints in {built:.0f} s; {cores} cores"
        )
        pairs = []
        for note in notes:
            checkpoint, signatures = parse_checkpoint(note)
            pairs.append((signatures[0].signature, checkpoint.body().encode()))
        chunk = -(-len(pairs) // (4 * cores))
        chunks = [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]
        environment = {
            **os.environ,
            "SEALROOM_DATABASE_URL": url,
            "SEALROOM_KEYS_DIR": str(settings.keys_dir),
        }
        command = [str(SEALROOM), "audit", "verify", "--verifier-key", key.line()]

        times: dict[str, list[float]] = {"verify": [], "sha256": [], "ed25519": []}
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(verify_signatures, [key.public_key] * cores, [pairs[:10]] * cores))
            for number in range(args.rounds):
                for name in ("verify", "sha256", "ed25519")[:: 1 if number % 2 == 0 else -1]:
                    started = time.perf_counter()
                    if name == "verify":
                        result = subprocess.run(
                            command, env=environment, capture_output=True, text=True
                        )
                        if result.returncode != 0:
                            raise SystemExit(f"audit verify failed: {result.stderr}")
                    elif name == "sha256":
                        for line in lines:
                            hashlib.sha256(line).digest()
                    else:
                        done = pool.map(verify_signatures, [key.public_key] * len(chunks), chunks)
                        assert sum(done) == len(pairs)
                    times[name].append(time.perf_counter() - started)

    best = {name: statistics.median(values) for name, values in times.items()}
    n = len(lines)
    floor_name = max(("sha256", "ed25519"), key=lambda name: best[name])
    for name, label in (("verify", "sealroom audit verify"), ("sha256", "bare SHA-256")):
        print(f"{label:<28}  {best[name]:6.2f} s  {n / best[name]:>9,.0f} entries/s")
    print(
        f"{'Ed25519, one per checkpoint':<28}  {best['ed25519']:6.2f} s  "
        f"{len(pairs) / best['ed25519']:>9,.0f} checkpoints/s on {cores} cores"
    )
    print(
        f"ratio: audit verify takes {best['verify'] / best[floor_name]:.2f}x its floor"
        f" ({floor_name}; goal: at most 1.5x); medians of {args.rounds} interleaved rounds"
    )


if __name__ == "__main__":
    main()
