"""Everything the service writes that holds trial data is 0600 in a 0700 directory (issue 7,
finding 10): the instance directory, the SQLite database and its -wal and -shm, tokens.json
and the exports. Modes are checked under a permissive umask too: they must not depend on it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from randomizer.db import Database
from tests.randomizer.test_cli import SEED, Instance, mode

UMASKS = [0o022, 0o000]


@pytest.fixture(params=UMASKS, ids=lambda umask: f"umask {umask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def sqlite_instance(tmp_path: Path) -> Instance:
    """A demo whose SQLite database lives in its instance directory, as by default."""
    directory = tmp_path / "deploy" / "instance"
    return Instance("sqlite", f"sqlite:///{directory / 'sealroom.db'}", directory)


def database_files(database: Path) -> dict[str, int]:
    return {
        path.name: mode(path)
        for path in database.parent.iterdir()
        if path.name.startswith(database.name)
    }


@pytest.mark.requirement("R-CLI")
def test_init_demo_writes_only_private_files_in_a_private_directory(tmp_path, umask):
    instance = sqlite_instance(tmp_path)

    result = instance.run("init-demo", "--seed-file", "-", stdin=SEED)

    assert result.exit_code == 0, result.output
    assert mode(instance.directory) == 0o700
    database = instance.directory / "sealroom.db"
    assert database_files(database)["sealroom.db"] == 0o600
    assert set(database_files(database).values()) == {0o600}
    assert mode(instance.tokens_path) == 0o600
    # While the service runs, SQLite keeps its -wal and -shm beside the database: 0600 too.
    db = Database(instance.url)
    try:
        with db.transaction() as session:
            session.execute(text("CREATE TABLE scratch_write (x INTEGER)"))
        with db.reading() as session:
            session.execute(text("SELECT count(*) FROM audit_entry")).scalar()
            files = database_files(database)
    finally:
        db.dispose()
    assert {"sealroom.db-wal", "sealroom.db-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, files
    # Nothing in the instance directory is readable by others.
    for path in instance.directory.rglob("*"):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o077, (path, oct(mode(path)))


@pytest.mark.requirement("R-CLI")
def test_a_new_sqlite_database_is_created_private(tmp_path, umask):
    database = tmp_path / "fresh.db"
    db = Database(f"sqlite:///{database}")
    try:
        with db.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with db.reading() as session:
            assert session.execute(text("SELECT x FROM t")).scalar() == 1
            files = database_files(database)
    finally:
        db.dispose()
    assert {"fresh.db", "fresh.db-wal", "fresh.db-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, files


@pytest.mark.requirement("R-CLI")
def test_an_existing_database_others_may_read_is_made_private_when_opened(tmp_path):
    database = tmp_path / "old.db"
    db = Database(f"sqlite:///{database}")
    with db.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    db.dispose()
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        path.touch()
        path.chmod(0o644)

    db = Database(f"sqlite:///{database}")
    try:
        with db.reading() as session:
            session.execute(text("SELECT count(*) FROM t")).scalar()
            files = database_files(database)
    finally:
        db.dispose()
    assert set(files.values()) == {0o600}, files


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-AUD")
def test_exports_are_private_and_so_are_the_directories_made_for_them(tmp_path, umask):
    instance = sqlite_instance(tmp_path)
    assert instance.run("init-demo", "--seed-file", "-", stdin=SEED).exit_code == 0
    beside = tmp_path / "audit.jsonl"
    assert instance.run("audit", "export", "--out", str(beside)).exit_code == 0
    assert mode(beside) == 0o600
    audit_out = tmp_path / "exports" / "audit" / "audit.jsonl"
    lists_out = tmp_path / "statistician" / "lists.csv"
    tokens_out = tmp_path / "handed-out" / "tokens.json"

    audit = instance.run("audit", "export", "--out", str(audit_out))
    lists = instance.run("lists", "export", "--seed-file", "-", "--out", str(lists_out), stdin=SEED)
    again = sqlite_instance(tmp_path / "second").run(
        "init-demo", "--tokens-out", str(tokens_out), "--seed-file", "-", stdin=SEED
    )

    for result in (audit, lists, again):
        assert result.exit_code == 0, result.output
    for path in (audit_out, lists_out, tokens_out):
        assert mode(path) == 0o600, path
        assert mode(path.parent) == 0o700, path.parent
    assert mode(audit_out.parent.parent) == 0o700
    # Exporting over an earlier export: still private, even if someone opened that one up.
    audit_out.chmod(0o644)
    assert instance.run("audit", "export", "--out", str(audit_out)).exit_code == 0
    assert mode(audit_out) == 0o600
