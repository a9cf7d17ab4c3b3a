"""SQLite: reads never hold the write lock; a busy database is a 503, never a 500 (issue 7,
finding 4; R-NF-3, R-NF-6).

Each test has a database of its own (a real file: the savepoint fixture shares one
connection, and locks between connections are the point here).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from randomizer import create_app
from randomizer.db import Database
from randomizer.models import AuditEntry, Participant
from tests.conftest import make_trial_database

pytestmark = pytest.mark.requirement("R-NF-6")


@pytest.fixture
def sqlite_trial(scratch, tmp_path):
    return make_trial_database(scratch, "sqlite", tmp_path, kits_per_arm=8)


def screen(client, token: str, number: str):
    return client.post(
        "/api/v1/participants",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "screening_number": number,
            "site": "101",
            "screened_on": datetime.now(UTC).date().isoformat(),
            "strata": {"prior_ig": "no"},
        },
    )


def participants(database: Database) -> int:
    with database.reading() as session:
        return session.scalar(select(func.count()).select_from(Participant))


def test_a_long_read_does_not_make_a_write_wait(sqlite_trial):
    database = Database(sqlite_trial.url, busy_seconds=1)
    client = create_app({"settings": sqlite_trial.settings, "database": database}).test_client()
    token = sqlite_trial.tokens["coordinator-101"]

    with database.reading() as session:
        # A read in the middle of its transaction, as `audit verify` or a report would be.
        assert session.scalar(select(func.count()).select_from(AuditEntry)) > 0
        started = time.monotonic()
        answer = screen(client, token, "101-LOCK-1")
        waited = time.monotonic() - started

    assert answer.status_code == 201, answer.get_json()
    assert waited < 1  # it never waited for the reader: no busy timeout was spent
    database.dispose()


def test_a_busy_database_answers_503_with_retry_after_and_changes_nothing(sqlite_trial):
    database = Database(sqlite_trial.url, busy_seconds=0.3)
    client = create_app({"settings": sqlite_trial.settings, "database": database}).test_client()
    token = sqlite_trial.tokens["coordinator-101"]
    before = participants(database)
    holder = sqlite3.connect(make_url(sqlite_trial.url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        busy = screen(client, token, "101-LOCK-2")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    after_release = screen(client, token, "101-LOCK-2")

    assert busy.status_code == 503
    assert busy.mimetype == "application/problem+json"
    assert busy.headers["Retry-After"].isdigit()
    assert busy.get_json()["type"] == "/problems/unavailable"
    assert after_release.status_code == 201
    assert participants(database) == before + 1
    database.dispose()


def test_a_writer_of_another_process_that_hangs_costs_a_503_not_a_hung_request(sqlite_trial):
    """The writers' queue (``<database>-writers``) is bounded by the busy timeout too."""
    database = Database(sqlite_trial.url, busy_seconds=0.3)
    client = create_app({"settings": sqlite_trial.settings, "database": database}).test_client()
    token = sqlite_trial.tokens["coordinator-101"]
    before = participants(database)
    queue = f"{make_url(sqlite_trial.url).database}-writers"
    holder = subprocess.Popen(  # another process at the head of the queue, stuck there
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({queue!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        busy = screen(client, token, "101-LOCK-3")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    after_release = screen(client, token, "101-LOCK-3")

    assert busy.status_code == 503, busy.get_json()
    assert busy.headers["Retry-After"].isdigit()
    assert waited < 30  # bounded by the busy timeout (0.3 s), not by the other writer
    assert after_release.status_code == 201
    assert participants(database) == before + 1
    database.dispose()
