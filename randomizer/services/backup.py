"""Backups and restores of the database (R-NF-7).

A backup is a directory (mode 0700) holding one consistent copy of the database, taken while
the service runs, and a manifest naming what the copy covers: the schema revision, the number
of audit entries and the signed checkpoint of exactly those entries, and the SHA-256 of every
file. SQLite is copied with its online backup API; PostgreSQL with ``pg_dump`` (custom
format) from a snapshot exported by the transaction that also reads the manifest's figures,
so both describe one state of the database.

The keys are never in a backup: a copy of the database holds only wrapped data keys and
sealed arms, and reveals no allocation without the master key, which is backed up apart
(README, Operations). A backup is refused inside the keys directory, and around it.

Why a backup writes no audit entry, and a restore does:

* A backup changes nothing in the trial's record, and it must work without the keys (a
  backup job needs the database only; the master key may reach the service alone, through
  ``SEALROOM_MASTER_KEY``) and on a database whose trail is damaged (the evidence is kept
  before anything is repaired), where an append would rightly be refused.
* A restore changes everything after the backup: it is announced in the restored log itself
  by a ``database.restored`` entry (which backup, the checkpoint it covers, what the restore
  replaced), signed into a new checkpoint. Whoever saw a later checkpoint sees a rollback
  (the restored log is shorter, or differs at the same size, or no longer extends what they
  saw): ``sealroom monitor`` raises its alarm until the monitor accepts the restore.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from audit.checkpoint import (
    CheckpointError,
    VerifierKey,
    parse_checkpoint,
    verifier_key_from_private,
    verify_checkpoint,
)
from audit.entry import format_time
from audit.verify import VerifyReport
from keys import load_signing_key
from keys.providers import load_master_key_provider
from randomizer.db import Database
from randomizer.files import (
    PRIVATE_DIR,
    create_private_file,
    make_private_dir,
    private_sqlite_files,
    write_private_file,
)
from randomizer.migrations import (
    check_schema_current,
    current_revision,
    head_revision,
    known_revisions,
    upgrade,
)
from randomizer.models import AuditCheckpoint, AuditEntry, DataKey, Trial
from randomizer.roles import SYSTEM
from randomizer.services.context import load_trial_context, utc_now
from randomizer.services.verification import read_snapshot, verify_stored_log

FORMAT = "sealroom-backup/1"
MANIFEST_FILE = "manifest.json"
#: The covered checkpoint, as its own file: what monitors are handed after a restore.
CHECKPOINT_FILE = "checkpoint.txt"
SQLITE_COPY = "sealroom.db"
POSTGRES_DUMP = "sealroom.pgdump"
DATA_FILES = {"sqlite": SQLITE_COPY, "postgresql": POSTGRES_DUMP}
RESTORED_ACTION = "database.restored"
#: Where Debian and Ubuntu install PostgreSQL's programs, one directory per major version.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BackupError(RuntimeError):
    """A backup or restore was refused or failed; the message says what and why."""


class RestoreNotVerified(BackupError):
    """The restored database does not verify: it must not be served."""

    def __init__(self, stage: str, problems: Sequence[str], warnings: Sequence[str] = ()) -> None:
        super().__init__(f"{stage} does not verify: {problems[0] if problems else '?'}")
        self.stage = stage
        self.problems = list(problems)
        self.warnings = list(warnings)


# What a backup covers -----------------------------------------------------------------------


@dataclass(frozen=True)
class CoveredCheckpoint:
    """A signed checkpoint as the audit stores it (its note), with its fields spelled out."""

    size: int
    root: str
    key_id: str
    signature: str
    note: str

    @classmethod
    def from_note(cls, note: str) -> CoveredCheckpoint:
        """Parse ``note`` (no signature is checked here); its first signature is shown."""
        try:
            checkpoint, signatures = parse_checkpoint(note)
        except CheckpointError as exc:
            raise BackupError(f"the covered checkpoint is malformed: {exc}") from None
        first = signatures[0]
        return cls(
            size=checkpoint.size,
            root=_b64(checkpoint.root),
            key_id=first.key_id.hex(),
            signature=_b64(first.signature),
            note=note,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": self.root,
            "key_id": self.key_id,
            "signature": self.signature,
            "note": self.note,
        }


@dataclass(frozen=True)
class LogState:
    """What a database holds, read in one snapshot: schema, trial, master key id, the log."""

    schema_revision: str | None
    trial: str | None
    master_key_id: str | None
    audit_entries: int
    checkpoint: CoveredCheckpoint | None

    def describe(self) -> str:
        """One phrase for a message, e.g. 'trial RECLAIIM, schema 0006, 21 audit entries'."""
        if self.trial is None:
            return f"no trial (schema revision {self.schema_revision or 'none'})"
        shown = (
            f"trial {self.trial}, schema revision {self.schema_revision or 'none'}, "
            f"{self.audit_entries} audit entries"
        )
        if self.checkpoint is not None:
            shown += (
                f", last signed checkpoint of size {self.checkpoint.size} "
                f"(root {self.checkpoint.root})"
            )
        return shown


def read_log_state(connection: Connection) -> LogState:
    """The schema revision, trial, master key id and audit extent behind ``connection``.

    The caller makes the connection a snapshot when it must be one.
    """
    tables = set(inspect(connection).get_table_names())
    revision = current_revision(connection)
    if Trial.__tablename__ not in tables:
        return LogState(revision, None, None, 0, None)
    trial = connection.execute(
        select(Trial.id, DataKey.master_key_id).join(DataKey, DataKey.id == Trial.data_key_id)
    ).one_or_none()
    entries = connection.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
    note = connection.execute(
        select(AuditCheckpoint.note).order_by(AuditCheckpoint.size.desc()).limit(1)
    ).scalar_one_or_none()
    return LogState(
        schema_revision=revision,
        trial=None if trial is None else trial.id,
        master_key_id=None if trial is None else trial.master_key_id,
        audit_entries=entries,
        checkpoint=None if note is None else CoveredCheckpoint.from_note(note),
    )


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what the copy covers and the SHA-256 of each of its files."""

    backend: str
    created_at: str
    method: str
    schema_revision: str
    trial: str
    master_key_id: str
    audit_entries: int
    checkpoint: CoveredCheckpoint
    files: dict[str, str]

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "backend": self.backend,
            "created_at": self.created_at,
            "method": self.method,
            "schema_revision": self.schema_revision,
            "trial": self.trial,
            "master_key_id": self.master_key_id,
            "audit": {"entries": self.audit_entries, "checkpoint": self.checkpoint.as_json()},
            "files": dict(sorted(self.files.items())),
            "keys": "not included: back the keys directory up apart (README, Operations)",
        }
        return json.dumps(body, indent=2, ensure_ascii=True) + "\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse a manifest strictly: every field present and of its type, known file names."""
        try:
            body = json.loads(raw.decode("utf-8"))
            if body.get("format") != FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, not {FORMAT!r}")
            backend = _string(body, "backend")
            if backend not in DATA_FILES:
                raise ValueError(f"unknown backend {backend!r}")
            audit = body["audit"]
            covered = audit["checkpoint"]
            checkpoint = CoveredCheckpoint.from_note(_string(covered, "note"))
            if checkpoint.as_json() != covered:
                raise ValueError("the checkpoint's fields do not match its note")
            entries = audit["entries"]
            if not isinstance(entries, int) or isinstance(entries, bool):
                raise ValueError("audit.entries is not a whole number")
            files = body["files"]
            expected = {DATA_FILES[backend], CHECKPOINT_FILE}
            if not isinstance(files, dict) or set(files) != expected:
                raise ValueError(f"files must be exactly {sorted(expected)}")
            for name, digest in files.items():
                if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                    raise ValueError(f"files.{name} is not a SHA-256")
            return cls(
                backend=backend,
                created_at=_string(body, "created_at"),
                method=_string(body, "method"),
                schema_revision=_string(body, "schema_revision"),
                trial=_string(body, "trial"),
                master_key_id=_string(body, "master_key_id"),
                audit_entries=entries,
                checkpoint=checkpoint,
                files=files,
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"{MANIFEST_FILE} is not a Sealroom backup manifest: {exc}") from None


def _string(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


# Backup -----------------------------------------------------------------------------------


def create_backup(
    db: Database, out: Path, keys_dir: Path, clock: Callable[[], datetime] = utc_now
) -> Manifest:
    """Write a consistent copy of ``db`` and its manifest into ``out`` (new or empty).

    Runs beside the service: SQLite's online backup copies one snapshot while writers go on;
    ``pg_dump`` reads the snapshot of the transaction that reads the manifest's figures.
    """
    _refuse_near_keys(out, keys_dir)
    created = not out.exists()
    if not created and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"--out {out} exists and is not an empty directory")
    make_private_dir(out)
    os.chmod(out, PRIVATE_DIR)
    written: list[Path] = []
    try:
        data = out / DATA_FILES[db.dialect]
        written.append(data)
        if db.dialect == "sqlite":
            state, method = _sqlite_backup(db, data), "SQLite online backup API"
        else:
            state, method = _pg_dump(db, data)
        if state.trial is None or state.checkpoint is None or state.master_key_id is None:
            raise BackupError("the database holds no trial: nothing to back up")
        checkpoint_file = out / CHECKPOINT_FILE
        written.append(checkpoint_file)
        write_private_file(checkpoint_file, state.checkpoint.note)
        manifest = Manifest(
            backend=db.dialect,
            created_at=format_time(clock()),
            method=method,
            schema_revision=state.schema_revision or "",
            trial=state.trial,
            master_key_id=state.master_key_id,
            audit_entries=state.audit_entries,
            checkpoint=state.checkpoint,
            files={path.name: _sha256(path) for path in (data, checkpoint_file)},
        )
        # The manifest comes last and whole: a directory without one is no backup.
        partial = out / f".{MANIFEST_FILE}.partial"
        written.append(partial)
        write_private_file(partial, manifest.to_json())
        os.replace(partial, out / MANIFEST_FILE)
        return manifest
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise


def _refuse_near_keys(out: Path, keys_dir: Path) -> None:
    """The keys are backed up apart: never into, nor around, the keys directory."""
    target, keys = out.resolve(), keys_dir.resolve()
    if target == keys or keys in target.parents:
        raise BackupError(
            f"--out {out} is inside the keys directory {keys_dir}: the database and the keys "
            "are backed up apart (README, Operations)"
        )
    if target in keys.parents:
        raise BackupError(
            f"--out {out} holds the keys directory {keys_dir}: the database and the keys are "
            "backed up apart (README, Operations); choose a directory of its own"
        )


def _sqlite_path(db: Database) -> Path:
    database = make_url(db.url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError("backup and restore need a SQLite database file")
    return Path(database)


def _sqlite_backup(db: Database, copy: Path) -> LogState:
    source = _sqlite_path(db)
    if not source.exists():
        raise BackupError(f"the database {source} does not exist")
    os.close(create_private_file(copy))
    with (
        closing(sqlite3.connect(source, timeout=30)) as live,
        closing(sqlite3.connect(copy)) as target,
    ):
        # One step: the copy is one snapshot of the source (in WAL mode the service's
        # writers go on meanwhile); stepping would restart on every write.
        live.backup(target)
        # A self-contained file: no -wal beside it.
        target.execute("PRAGMA journal_mode = DELETE")
    with _sqlite_reader(copy) as connection:
        return read_log_state(connection)


@contextmanager
def _sqlite_reader(path: Path) -> Iterator[Connection]:
    """A read-only connection to a SQLite file (a copy is never changed by reading it)."""
    engine = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    )
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _pg_dump(db: Database, dump: Path) -> tuple[LogState, str]:
    tool = find_pg_tool("pg_dump")
    version = _tool_version(tool)
    args, env = _libpq_target(db.url)
    with db.reading() as session:
        # pg_dump reads the very snapshot this transaction reads the manifest's figures in.
        read_snapshot(session)
        connection = session.connection()
        snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        with os.fdopen(create_private_file(dump), "wb") as handle:
            result = _run_tool(
                tool,
                ["--format=custom", f"--snapshot={snapshot}", "--no-password", *args],
                env,
                stdout=handle,
            )
        if result.returncode != 0:
            raise BackupError(f"pg_dump failed: {_tail(result.stderr)}")
        state = read_log_state(connection)
    return state, f"pg_dump, custom format ({version})"


# Reading a backup -------------------------------------------------------------------------


def read_backup(directory: Path) -> Manifest:
    """The backup's manifest, once every file it names has the SHA-256 it records."""
    try:
        raw = (directory / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise BackupError(
            f"{directory} holds no readable {MANIFEST_FILE}: {exc.strerror}"
        ) from None
    manifest = Manifest.from_json(raw)
    for name, digest in sorted(manifest.files.items()):
        path = directory / name
        if not path.is_file():
            raise BackupError(f"{path} is missing: the backup is incomplete")
        actual = _sha256(path)
        if actual != digest:
            raise BackupError(
                f"{path} has SHA-256 {actual}, not the {digest} its manifest records: the "
                "backup was altered or damaged; restore another one"
            )
    if (directory / CHECKPOINT_FILE).read_text(encoding="utf-8") != manifest.checkpoint.note:
        raise BackupError(f"{CHECKPOINT_FILE} is not the manifest's covered checkpoint")
    return manifest


def manifest_sha256(directory: Path) -> str:
    """The SHA-256 of the backup's manifest (which names every other file's)."""
    return _sha256(directory / MANIFEST_FILE)


# Restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    """A restore that verified: what it restored, replaced and appended."""

    manifest: Manifest
    replaced: LogState | None
    upgraded_from: str | None
    announcement_seq: int
    checkpoint: str
    report: VerifyReport
    checkpoints: int
    verifier_key: VerifierKey


def database_contents(db: Database) -> tuple[list[str], LogState | None]:
    """The tables ``db`` holds (every schema but PostgreSQL's own) and, if any, its state."""
    with db.reading() as session:
        tables = _tables(session)
        if not tables:
            return [], None
        return tables, read_log_state(session.connection())


def _tables(session: Session) -> list[str]:
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return inspect(connection).get_table_names()
    rows = connection.execute(
        text(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY table_schema, table_name"
        )
    )
    return [name if schema == "public" else f"{schema}.{name}" for schema, name in rows]


def check_restorable(
    db: Database,
    directory: Path,
    keys_dir: Path,
    *,
    force: bool,
    verifier_key: VerifierKey | None = None,
) -> tuple[Manifest, LogState | None]:
    """Everything a restore checks before it touches the target; what it would replace.

    The backup's files and manifest, its backend and schema, the keys (the signing key must
    have signed the covered checkpoint; the master key that wraps the trial's data key must
    be there) and the target: empty, or ``force``.
    """
    manifest = read_backup(directory)
    if manifest.backend != db.dialect:
        raise BackupError(
            f"the backup is of a {manifest.backend} database and the target is {db.dialect}: "
            "a backup restores into the backend it was taken from"
        )
    if manifest.schema_revision not in known_revisions():
        raise BackupError(
            f"the backup's schema is at revision {manifest.schema_revision}, which this code "
            f"does not know (it knows up to {head_revision()}): restore it with the Sealroom "
            "that wrote it, or a newer one"
        )
    note = manifest.checkpoint.note
    origin = parse_checkpoint(note)[0].origin
    own = verifier_key_from_private(origin, load_signing_key(keys_dir))
    for key, whose in ((own, f"the signing key in {keys_dir}"), (verifier_key, "--verifier-key")):
        if key is None:
            continue
        try:
            verify_checkpoint(note, key)
        except CheckpointError as exc:
            raise BackupError(
                f"the backup's covered checkpoint is not signed by {whose}: {exc}; restore "
                "the keys of this trial first (README, Operations)"
            ) from None
    if manifest.master_key_id not in load_master_key_provider(keys_dir):
        raise BackupError(
            f"the master key {manifest.master_key_id}, which wraps the trial's data key, is "
            f"neither in {keys_dir} nor in SEALROOM_MASTER_KEY: restore the keys first "
            "(README, Operations)"
        )
    if db.dialect == "sqlite":
        make_private_dir(_sqlite_path(db).parent)  # a new machine's instance directory
    tables, state = database_contents(db)
    if tables and not force:
        held = state.describe() if state is not None else f"{len(tables)} tables"
        raise BackupError(
            f"the target database is not empty ({held}): restore into an empty database, or "
            "give --force to replace it"
        )
    if tables and db.dialect == "postgresql":
        foreign = [name for name in tables if "." in name]
        if foreign:
            raise BackupError(
                f"the target database holds tables outside schema public ({', '.join(foreign)})"
                ": not replacing them, even with --force"
            )
    return manifest, state if tables else None


def restore_backup(
    db: Database,
    directory: Path,
    keys_dir: Path,
    *,
    force: bool = False,
    verifier_key: VerifierKey | None = None,
    on_replace: Callable[[LogState], None] | None = None,
) -> RestoreResult:
    """Restore the backup in ``directory`` into ``db``, announce it, and verify the result.

    Refuses (BackupError), before touching the target, what :func:`check_restorable`
    refuses. ``on_replace`` hears what a forced restore replaces before it does. Then the
    copy is restored, verified (the audit, and that it ends at the covered checkpoint),
    upgraded to this code's schema if it is older, announced by a ``database.restored``
    entry, and verified again: RestoreNotVerified says what failed.
    """
    manifest, replaced = check_restorable(
        db, directory, keys_dir, force=force, verifier_key=verifier_key
    )
    if replaced is not None and on_replace is not None:
        on_replace(replaced)
    db.dispose()
    if db.dialect == "sqlite":
        _sqlite_restore(db, directory / SQLITE_COPY)
    else:
        _pg_restore(db, directory / POSTGRES_DUMP, clean=replaced is not None)
    db.dispose()  # no pooled connection may remember the database as it was

    key = verifier_key or verifier_key_from_private(
        parse_checkpoint(manifest.checkpoint.note)[0].origin, load_signing_key(keys_dir)
    )
    _verify_restored(db, key, manifest, manifest.audit_entries, "the restored copy")
    upgraded_from = None
    if manifest.schema_revision != head_revision():
        with db.schema_transaction() as connection:
            upgraded_from, _ = upgrade(connection)
    seq, note = _announce(db, directory, manifest, replaced, keys_dir, upgraded_from)
    report, checkpoints = _verify_restored(
        db, key, manifest, manifest.audit_entries + 1, "the restored database"
    )
    return RestoreResult(
        manifest=manifest,
        replaced=replaced,
        upgraded_from=upgraded_from,
        announcement_seq=seq,
        checkpoint=note,
        report=report,
        checkpoints=checkpoints,
        verifier_key=key,
    )


def _sqlite_restore(db: Database, copy: Path) -> None:
    target = _sqlite_path(db)
    make_private_dir(target.parent)
    private_sqlite_files(str(target))
    with (
        closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(target, timeout=30)) as live,
    ):
        # The backup API replaces the target's pages under its own lock, WAL included.
        source.backup(live)


def _pg_restore(db: Database, dump: Path, *, clean: bool) -> None:
    tool = find_pg_tool("pg_restore")
    args, env = _libpq_target(db.url)
    if clean:
        # --force: the target's own objects go (check_restorable allowed schema public only).
        with db.schema_transaction() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    options = ["--exit-on-error", "--single-transaction", "--no-owner", "--no-privileges"]
    result = _run_tool(tool, [*options, "--no-password", *args, str(dump)], env)
    if result.returncode != 0:
        now = "is empty now" if clean else "was left as it was"
        raise BackupError(
            f"pg_restore failed (one transaction: the target {now}): {_tail(result.stderr)}"
        )


def _verify_restored(
    db: Database, key: VerifierKey, manifest: Manifest, expected: int, stage: str
) -> tuple[VerifyReport, int]:
    """The verification of `sealroom audit verify`, plus: the log extends the covered
    checkpoint and holds the entries expected of it."""
    with db.reading() as session:
        report, checkpoints = verify_stored_log(session, key, [manifest.checkpoint.note])
    if not report.ok:
        raise RestoreNotVerified(stage, report.problems, report.warnings)
    if report.size != expected:
        raise RestoreNotVerified(
            stage,
            [
                f"it holds {report.size} audit entries where {expected} were expected "
                f"(the backup covers {manifest.audit_entries})"
            ],
        )
    return report, checkpoints


def _announce(
    db: Database,
    directory: Path,
    manifest: Manifest,
    replaced: LogState | None,
    keys_dir: Path,
    upgraded_from: str | None,
) -> tuple[int, str]:
    """Append ``database.restored`` to the restored log: a restore is never silent."""
    data: dict[str, Any] = {
        "backup_created_at": manifest.created_at,
        "backend": manifest.backend,
        "method": manifest.method,
        "manifest_sha256": manifest_sha256(directory),
        "checkpoint_size": manifest.checkpoint.size,
        "checkpoint_root": manifest.checkpoint.root,
        "schema_revision": manifest.schema_revision,
        "upgraded_to": head_revision() if upgraded_from is not None else None,
        "replaced": None
        if replaced is None
        else {
            "trial": replaced.trial,
            "schema_revision": replaced.schema_revision,
            "entries": replaced.audit_entries,
            "checkpoint_size": None if replaced.checkpoint is None else replaced.checkpoint.size,
            "checkpoint_root": None if replaced.checkpoint is None else replaced.checkpoint.root,
        },
    }
    with db.transaction() as session:
        check_schema_current(session.connection())
        ctx = load_trial_context(session, keys_dir)
        entry = ctx.audit.append(session, SYSTEM, RESTORED_ACTION, ctx.definition.id, data)
        note = ctx.audit.checkpoint(session)
    return entry.seq, note


# PostgreSQL's programs --------------------------------------------------------------------


def find_pg_tool(name: str, path: str | None = None, pattern: str = PG_BIN_GLOB) -> Path:
    """``pg_dump`` or ``pg_restore``: on ``PATH`` (or ``path``), else the newest version in
    ``/usr/lib/postgresql/*/bin`` (a newer one reads every older server's databases)."""
    found = shutil.which(name, path=path)
    if found:
        return Path(found)
    candidates = [Path(d) / name for d in glob.glob(pattern)]
    candidates = [c for c in candidates if os.access(c, os.X_OK)]
    if candidates:
        return max(candidates, key=lambda c: _version_key(c.parent.parent.name))
    raise BackupError(
        f"{name} was found neither on PATH nor in {pattern}: install PostgreSQL's client "
        "programs of the server's major version or newer (Debian: apt-get install "
        "postgresql-client)"
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)) or (0,)


def _tool_version(tool: Path) -> str:
    return _run_tool(tool, ["--version"], dict(os.environ)).stdout.decode().strip() or tool.name


def _run_tool(
    tool: Path, args: list[str], env: dict[str, str], stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """Run one of PostgreSQL's programs; its standard error is kept for the message."""
    # No shell; the program is the one find_pg_tool found and every argument is ours.
    return subprocess.run(  # noqa: S603
        [str(tool), *args], stdout=stdout, stderr=subprocess.PIPE, env=env, check=False
    )


def _libpq_target(url: str) -> tuple[list[str], dict[str, str]]:
    """The ``--dbname`` conninfo of a SQLAlchemy URL, and an environment with its password.

    The password goes through ``PGPASSWORD``, never the command line (the process list).
    """
    parsed = make_url(url)
    params: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "dbname": parsed.database,
    }
    for key, value in parsed.query.items():
        params[key] = value if isinstance(value, str) else value[-1]
    conninfo = " ".join(
        f"{key}='{_conninfo_quote(str(value))}'" for key, value in params.items() if value
    )
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return [f"--dbname={conninfo}"], env


def _conninfo_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return " / ".join(lines[-3:]) if lines else "no message"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
