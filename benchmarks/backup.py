"""Backup and restore figures (R-NF-7): how long `sealroom backup` and `sealroom restore` take.

    .venv/bin/python benchmarks/backup.py [--entries N] [--database-url URL]

Builds a fresh demo trial (SQLite in a temporary directory, or a new database on the
PostgreSQL server of --database-url, dropped afterwards), grows its audit log to about N
entries (users added 500 to a transaction: one checkpoint each), then times, in one run:
  * the backup (SQLite online backup API, or pg_dump), with the size of the copy;
  * the restore into a new empty database: checks, copy, the verification of the whole
    log, the database.restored entry, the verification again;
  * `audit verify` of the restored log alone, the yardstick of the two verifications.
Not part of CI: it prints figures for a person to read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from randomize import demo_trial, scratch_database  # (sets sys.path)

from audit.checkpoint import verifier_key_from_private
from keys import load_signing_key
from randomizer.db import Database
from randomizer.roles import SYSTEM
from randomizer.services import users
from randomizer.services.backup import create_backup, restore_backup
from randomizer.services.context import load_trial_context
from randomizer.services.verification import verify_stored_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "source").mkdir()
        (root / "target").mkdir()
        with (
            scratch_database(args.database_url, root / "source") as url,
            scratch_database(args.database_url, root / "target") as target,
        ):
            run(url, target, root, args.entries)


def run(url: str, target_url: str, root: Path, entries: int) -> None:
    settings, database, _tokens, _kits = demo_trial(url, root, 12)
    with database.reading() as session:
        ctx = load_trial_context(session, settings.keys_dir)
    with database.reading() as session:
        size = ctx.audit.size(session)
    number = 0
    while size < entries:
        with database.transaction() as session:
            for _ in range(min(500, entries - size)):
                users.add_user(session, ctx, SYSTEM, f"bench{number}", "auditor", None, None)
                number += 1
                size += 1
    out = root / "backup"
    started = time.perf_counter()
    manifest = create_backup(database, out, settings.keys_dir)
    backup_seconds = time.perf_counter() - started
    copy_bytes = sum(p.stat().st_size for p in out.iterdir())
    target = Database(target_url)
    started = time.perf_counter()
    result = restore_backup(target, out, settings.keys_dir)
    restore_seconds = time.perf_counter() - started
    key = verifier_key_from_private(ctx.audit.origin, load_signing_key(settings.keys_dir))
    started = time.perf_counter()
    with target.reading() as session:
        report, _ = verify_stored_log(session, key)
    verify_seconds = time.perf_counter() - started
    assert report.ok and result.report.ok
    database.dispose()
    target.dispose()

    print(f"{manifest.backend}: {manifest.audit_entries} audit entries, copy {copy_bytes:,} bytes")
    print(f"backup ({manifest.method}): {backup_seconds:.2f} s")
    print(
        f"restore (copy, verify, announce, verify): {restore_seconds:.2f} s, "
        f"x{restore_seconds / verify_seconds:.1f} one audit verify of the result "
        f"({verify_seconds:.2f} s, {report.size / verify_seconds:,.0f} entries/s)"
    )


if __name__ == "__main__":
    main()
