"""After-commit callbacks (randomizer.db): they run once the work is committed, never otherwise.

Side effects that must not happen for undone work (handing a file over, waking the outbox's
delivery) are registered with :func:`after_commit`. These tests use a real database of
their own (see ``tests/randomizer/committing.py``), so that "committed" means what another
connection can see, not a released savepoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from randomizer.db import after_commit, savepoint
from randomizer.errors import Conflict
from randomizer.models import AuditEntry, OutboxMessage
from randomizer.roles import SYSTEM
from randomizer.services.refusals import refusals_audited
from tests.conftest import BACKENDS
from tests.randomizer.committing import Committing, committing_trial

pytestmark = pytest.mark.requirement("R-NF-2")


@pytest.fixture(params=BACKENDS)
def real(request: pytest.FixtureRequest, scratch: Any, tmp_path: Any, clock: Any) -> Iterator[Any]:
    yield from committing_trial(scratch, request.param, tmp_path, clock)


def add_row(session: Session, real: Committing, subject: str, status: str = "pending") -> None:
    """Some work of the transaction: one row that another connection can look for."""
    session.add(
        OutboxMessage(
            topic="test.callbacks",
            recipient="nobody@example.org",
            subject=subject,
            body="",
            status=status,
            attempts=0,
            created_at=real.ctx.clock(),
        )
    )
    session.flush()


def visible(real: Committing, subject: str) -> int:
    """How many rows with this subject another connection sees (committed ones only)."""
    return real.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.subject == subject)
    )


def recorder(calls: list[str], name: str) -> Callable[[], None]:
    return lambda: calls.append(name)


def test_after_commit_runs_once_after_the_commit_and_sees_its_work_from_another_connection(real):
    seen: list[int] = []

    with real.database.transaction() as session:
        add_row(session, real, "committed")
        after_commit(session, "test.look", lambda: seen.append(visible(real, "committed")))
        # Registered, not run: and nobody else sees the work yet.
        assert seen == []
        assert visible(real, "committed") == 0

    assert seen == [1]


def test_registering_one_name_twice_keeps_the_last_callback(real):
    calls: list[str] = []

    with real.database.transaction() as session:
        after_commit(session, "test.same", recorder(calls, "first"))
        after_commit(session, "test.same", recorder(calls, "second"))
        after_commit(session, "test.other", recorder(calls, "other"))

    assert calls == ["second", "other"]


def test_callbacks_of_one_transaction_do_not_run_again_for_the_next(real):
    calls: list[str] = []
    with real.database.transaction() as session:
        after_commit(session, "test.once", recorder(calls, "once"))

    with real.database.transaction() as session:
        add_row(session, real, "later")

    assert calls == ["once"]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug"), Conflict("a refusal nobody recorded")],
    ids=["exception", "unrecorded-refusal"],
)
def test_after_commit_never_runs_after_a_rollback(real, error):
    calls: list[str] = []

    with pytest.raises(type(error)), real.database.transaction() as session:
        add_row(session, real, "rolled-back")
        after_commit(session, "test.never", recorder(calls, "never"))
        raise error

    assert calls == []
    assert visible(real, "rolled-back") == 0


def test_after_commit_never_runs_when_the_commit_itself_fails(real):
    calls: list[str] = []

    with pytest.raises(IntegrityError), real.database.transaction() as session:
        after_commit(session, "test.never", recorder(calls, "never"))
        # Not flushed here: the CHECK refuses it only when the commit flushes it.
        session.add(
            OutboxMessage(
                topic="t",
                recipient="r",
                subject="bad",
                body="",
                status="bogus",
                attempts=0,
                created_at=real.ctx.clock(),
            )
        )

    assert calls == []
    assert visible(real, "bad") == 0


def test_savepoint_drops_the_callbacks_registered_by_the_work_it_undoes(real):
    calls: list[str] = []

    with real.database.transaction() as session:
        after_commit(session, "test.outer", recorder(calls, "outer"))
        with pytest.raises(RuntimeError), savepoint(session):
            add_row(session, real, "undone")
            after_commit(session, "test.inner", recorder(calls, "inner"))
            after_commit(session, "test.outer", recorder(calls, "outer replaced"))
            raise RuntimeError("undo this block")
        add_row(session, real, "kept")

    # The block's own callback is gone; the one it replaced is back.
    assert calls == ["outer"]
    assert visible(real, "undone") == 0
    assert visible(real, "kept") == 1


def test_a_savepoint_that_succeeds_keeps_its_callbacks_and_work(real):
    calls: list[str] = []

    with real.database.transaction() as session, savepoint(session):
        add_row(session, real, "saved")
        after_commit(session, "test.inner", recorder(calls, "inner"))

    assert calls == ["inner"]
    assert visible(real, "saved") == 1


def test_an_inner_savepoint_undone_keeps_what_the_outer_one_registered(real):
    calls: list[str] = []

    with real.database.transaction() as session, savepoint(session):
        after_commit(session, "test.outer", recorder(calls, "outer"))
        with pytest.raises(RuntimeError), savepoint(session):
            after_commit(session, "test.inner", recorder(calls, "inner"))
            raise RuntimeError("undo the inner block only")

    assert calls == ["outer"]


def test_after_commit_runs_after_the_commit_of_a_recorded_refusal(real):
    calls: list[str] = []
    refused_entries: list[int] = []

    def look() -> None:
        refused_entries.append(
            real.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action == "test.refused")
            )
        )

    with pytest.raises(Conflict) as refused, real.database.transaction() as session:
        after_commit(session, "test.look", look)
        with refusals_audited(session, real.ctx, SYSTEM, "test.refused", "101-1", site=None):
            add_row(session, real, "refused work")
            after_commit(session, "test.inner", recorder(calls, "inner"))
            raise Conflict("refused")

    assert refused.value.recorded
    # The callback registered before the block ran, once the refusal's entry was committed;
    # the one the refused work registered went with that work.
    assert refused_entries == [1]
    assert calls == []
    assert visible(real, "refused work") == 0


def test_a_failing_callback_is_logged_the_commit_stands_and_the_others_still_run(real, caplog):
    calls: list[str] = []

    def broken() -> None:
        raise OSError("the mail server is down")

    with (
        caplog.at_level(logging.ERROR, logger="randomizer.db"),
        real.database.transaction() as session,
    ):
        add_row(session, real, "stands")
        after_commit(session, "test.broken", broken)
        after_commit(session, "test.next", recorder(calls, "next"))

    assert visible(real, "stands") == 1
    assert calls == ["next"]
    (record,) = [r for r in caplog.records if r.name == "randomizer.db"]
    assert "test.broken" in record.getMessage()
    assert "the commit stands" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)


def test_a_callback_runs_outside_the_transaction_and_may_open_its_own(real):
    # On SQLite the first transaction holds the write lock until it ends: a callback run
    # inside it would wait for itself (busy timeout) and fail.
    def write_more() -> None:
        with real.database.transaction() as session:
            add_row(session, real, "from the callback")

    with real.database.transaction() as session:
        add_row(session, real, "first")
        after_commit(session, "test.write", write_more)

    assert visible(real, "first") == 1
    assert visible(real, "from the callback") == 1
