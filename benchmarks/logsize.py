"""Randomisation cost against the audit log's size (issue 9: logarithmic in the log).

    .venv/bin/python benchmarks/logsize.py [--small 1000] [--large 1000000]
        [--database-url URL] [--rounds 5] [--per-round 20]

For SQLite (always) and the PostgreSQL server of --database-url (if given), builds two demo
trials whose audit logs are grown to --small and --large entries: valid entries chained to
the demo's own, their tree nodes, a signed checkpoint every 1,000 entries and at the end, and
the head, all made with the code's own hashing and signing, bulk-inserted (not a million
requests). Each trial gets a worker process serving it in process (Flask's test client);
participants are screened first, then the workers randomise in interleaved rounds (small,
large, large, small, ...) so that the machine's load falls on both alike. Prints each
worker's median randomisation time, the ratio large / small, and each worker's peak
memory. Not part of CI; quote the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

_REPOSITORY = Path(__file__).resolve().parents[1]
# benchmarks/audit.py would shadow the audit package: the repository comes first.
sys.path.insert(0, str(_REPOSITORY))

from sqlalchemy import select, update  # noqa: E402

from audit.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from audit.entry import canonical_bytes, entry_hash, format_time, make_entry, parse_entry  # noqa: E402
from audit.merkle import CompactRange, leaf_hash  # noqa: E402
from benchmarks.randomize import (  # noqa: E402
    demo_trial,
    peak_memory_mib,
    randomise_timed,
    scratch_database,
    screen_numbered,
)
from benchmarks.synthetic import synthetic_entry  # noqa: E402
from keys import load_signing_key  # noqa: E402
from randomizer.db import Database  # noqa: E402
from randomizer.domain import parse_trial  # noqa: E402
from randomizer.locks import HEAD_ID  # noqa: E402
from randomizer.models import (  # noqa: E402
    AuditCheckpoint,
    AuditEntry,
    AuditHead,
    AuditNode,
    Trial,
)

CHECKPOINT_EVERY = 1000
CHUNK = 20_000


def grow_log(
    database: Database, keys_dir: Path, target: int, checkpoint_every: int = CHECKPOINT_EVERY
) -> float:
    """Append synthetic entries until the log holds ``target``, with a signed checkpoint
    every ``checkpoint_every`` entries and at the end; return the seconds it took."""
    import random

    started = time.perf_counter()
    signing_key = load_signing_key(keys_dir)
    with database.reading() as session:
        origin = parse_trial(session.scalars(select(Trial.definition_toml)).one()).audit_origin
        head = session.get_one(AuditHead, HEAD_ID)
        size, prev = head.size, head.last_hash
        tree = CompactRange.from_bytes(size, bytes(head.frontier))
        last = session.scalar(select(AuditEntry.canonical).where(AuditEntry.seq == size - 1))
    moment = datetime.fromisoformat(parse_entry(last.encode())["time"].replace("Z", "+00:00"))
    # A thousand entry shapes, each checked by make_entry once; every entry takes one of
    # them with its own seq, time and prev (valid, chained, canonical, 400-600 bytes).
    rng = random.Random(20261129)
    shapes = [
        make_entry(**{**synthetic_entry(rng, 0, moment, prev), "time": moment}) for _ in range(1000)
    ]
    while size < target:
        entries, nodes, checkpoints = [], [], []
        for seq in range(size, min(target, size + CHUNK)):
            moment += timedelta(microseconds=1)
            entry = {**shapes[seq % len(shapes)], "seq": seq, "time": format_time(moment)}
            entry["prev"] = prev
            canonical = canonical_bytes(entry)
            site = entry["data"].get("site")
            entries.append((seq, canonical.decode(), entry["action"], entry["subject"], site))
            nodes.extend(tree.append(leaf_hash(canonical)))
            prev = entry_hash(canonical)
            if tree.size % checkpoint_every == 0 or tree.size == target:
                body = Checkpoint(origin, tree.size, tree.root())
                checkpoints.append((tree.size, sign_checkpoint(body, signing_key, origin), moment))
        with database.transaction() as session:
            bulk_insert(
                session, AuditEntry, ("seq", "canonical", "action", "subject", "site_id"), entries
            )
            bulk_insert(session, AuditNode, ("level", "node_index", "hash"), nodes)
            bulk_insert(session, AuditCheckpoint, ("size", "note", "created_at"), checkpoints)
            session.execute(
                update(AuditHead)
                .where(AuditHead.id == HEAD_ID)
                .values(size=tree.size, last_hash=prev, frontier=tree.to_bytes())
            )
        size = tree.size
    return time.perf_counter() - started


def bulk_insert(session: Any, model: Any, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert ``rows`` into ``model``'s table: COPY on PostgreSQL, executemany on SQLite."""
    if not rows:
        return
    table = model.__table__
    connection = session.connection().connection.dbapi_connection
    if session.bind.dialect.name == "postgresql":
        with connection.cursor().copy(
            f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
        connection.cursor().executemany(sql, rows)


def serve(connection: Any, url: str, root: str, token: str, participants: int) -> None:
    """A worker: screens ``participants``, then randomises a round of them per request."""

    from randomizer import create_app
    from randomizer.config import Settings

    directory = Path(root)
    settings = Settings.from_env(
        {}, database_url=url, instance_dir=directory, keys_dir=directory / "keys"
    )
    client = create_app({"settings": settings}).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    screen_numbered(client, headers, participants)
    first = 0
    while (count := connection.recv()) is not None:
        connection.send(randomise_timed(client, headers, range(first, first + count)))
        first += count
    connection.send(peak_memory_mib())


def run(server_url: str | None, sizes: list[int], rounds: int, per_round: int) -> None:
    backend = "postgresql" if server_url else "sqlite"
    participants = rounds * per_round + 1
    spawn = multiprocessing.get_context("spawn")
    with ExitStack() as stack:
        workers = []
        for size in sizes:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(scratch_database(server_url, root))
            settings, database, tokens, _kits = demo_trial(url, root, 2 * participants)
            built = grow_log(database, settings.keys_dir, size)
            database.dispose()
            print(f"{backend}: grew the log to {size:,} entries in {built:.1f} s", flush=True)
            ours, theirs = spawn.Pipe()
            process = spawn.Process(
                target=serve, args=(theirs, url, str(root), tokens["coordinator-101"], participants)
            )
            process.start()
            workers.append((size, ours, process, []))
        for _size, ours, _process, _times in workers:
            ours.send(1)  # warm up: imports, caches, the first checkpoint verified
            ours.recv()
        for number in range(rounds):
            order = workers if number % 2 == 0 else workers[::-1]
            for _size, ours, _process, times in order:
                ours.send(per_round)
                times.extend(ours.recv())
        medians = {}
        for size, ours, process, times in workers:
            ours.send(None)
            peak = ours.recv()
            process.join()
            medians[size] = statistics.median(times)
            print(
                f"{backend}: {size:>9,} entries: randomisation median {medians[size] * 1e3:6.2f} ms"
                f" over {len(times)}; worker peak memory {peak:,.0f} MB"
            )
        small, large = min(sizes), max(sizes)
        print(
            f"{backend}: ratio {large:,} / {small:,} entries: "
            f"{medians[large] / medians[small]:.2f}x (goal: at most 1.5x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (also measured)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()
    sizes = [args.small, args.large]
    run(None, sizes, args.rounds, args.per_round)
    if args.database_url:
        run(args.database_url, sizes, args.rounds, args.per_round)


if __name__ == "__main__":
    main()
