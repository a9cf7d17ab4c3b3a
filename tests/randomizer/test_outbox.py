"""The outbox (R-UNB-2): messages written with their change, delivered after it committed.

A rolled-back change leaves no message and wakes no delivery; a committed one leaves its
message, which a delivery round sends, or keeps pending with its attempts and last error
until a later round does. Two rounds never send one message twice (a claim with
``SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from randomizer.db import Database
from randomizer.errors import Conflict
from randomizer.locks import claim_outbox_message
from randomizer.models import OUTBOX_DELIVERED, OUTBOX_PENDING, AuditEntry, OutboxMessage
from randomizer.roles import SYSTEM
from randomizer.services.outbox import (
    ERROR_LENGTH,
    DeliveryReport,
    Message,
    deliver_pending,
    enqueue,
    pending,
)
from randomizer.services.refusals import refusals_audited
from tests.conftest import BACKENDS
from tests.randomizer.committing import committing_trial

pytestmark = pytest.mark.requirement("R-UNB-2")

#: How long a delivery round of the racing test may take before it counts as hung.
ROUND_TIMEOUT_S = 60


class MemoryTransport:
    """Delivers into a list; refuses messages to the ``failing`` recipients."""

    def __init__(self, failing: set[str] | None = None, error: Exception | None = None) -> None:
        self.failing = failing or set()
        self.error = error or ConnectionRefusedError("smtp.example.org:25 refused")
        self.sent: list[Message] = []
        self.lock = threading.Lock()

    def send(self, message: Message) -> None:
        if message.recipient in self.failing:
            raise self.error
        with self.lock:
            self.sent.append(message)


def message(n: int, recipient: str = "safety@example.org") -> Message:
    return Message(
        topic="participant.unblinded",
        recipient=recipient,
        subject=f"Unblinding {n}",
        body=f"Participant 101-{n:04d} was unblinded. The arm is not in this message.",
    )


def rows(db: Database) -> list[Any]:
    """The stored messages as plain rows (a reading session's objects expire at its end)."""
    with db.reading() as session:
        table = OutboxMessage.__table__
        return session.execute(select(table).order_by(table.c.id)).all()


def enqueue_committed(db: Database, ctx: Any, messages: list[Message]) -> list[int]:
    with db.transaction() as session:
        return [row.id for row in enqueue(session, ctx, messages)]


# Enqueue ----------------------------------------------------------------------------------


def test_a_rolled_back_change_leaves_no_message_and_wakes_nothing(db, ctx):
    wakes: list[str] = []

    with pytest.raises(RuntimeError), db.transaction() as session:
        enqueue(session, ctx, [message(1), message(2)], wake=lambda: wakes.append("wake"))
        raise RuntimeError("the change failed")

    assert rows(db) == []
    assert wakes == []


def test_a_refused_change_leaves_its_refusal_entry_but_no_message(db, ctx):
    wakes: list[str] = []

    with (
        pytest.raises(Conflict),
        db.transaction() as session,
        refusals_audited(session, ctx, SYSTEM, "test.unblinding_refused", "101-1", site=None),
    ):
        enqueue(session, ctx, [message(1)], wake=lambda: wakes.append("wake"))
        raise Conflict("refused after the message was written")

    assert rows(db) == []
    assert wakes == []
    with db.reading() as session:
        actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)).all()
    assert actions[-1] == "test.unblinding_refused"


def test_a_committed_change_leaves_its_messages_pending_and_wakes_delivery_once(db, ctx, clock):
    wakes: list[list[str]] = []

    def wake() -> None:
        with db.reading() as session:
            wakes.append([row.subject for row in pending(session)])

    with db.transaction() as session:
        enqueue(session, ctx, [message(1), message(2)], wake=wake)
        enqueue(session, ctx, [message(3)], wake=wake)
        assert wakes == []

    # One wake for the transaction, however many enqueues; it finds every message.
    assert wakes == [["Unblinding 1", "Unblinding 2", "Unblinding 3"]]
    stored = rows(db)
    assert [(r.status, r.attempts, r.delivered_at, r.last_error) for r in stored] == [
        (OUTBOX_PENDING, 0, None, None)
    ] * 3
    assert {r.created_at for r in stored} == {clock.now}
    assert [(r.topic, r.recipient, r.subject, r.body) for r in stored] == [
        (m.topic, m.recipient, m.subject, m.body) for m in (message(1), message(2), message(3))
    ]


def test_enqueue_without_wake_registers_no_callback(db, ctx):
    with db.transaction() as session:
        enqueue(session, ctx, [message(1)])
        assert "outbox.wake" not in session.info.get("sealroom.after_commit", {})

    assert len(rows(db)) == 1


# Delivery ---------------------------------------------------------------------------------


def test_deliver_pending_sends_each_message_and_records_its_delivery(db, ctx, clock):
    ids = enqueue_committed(db, ctx, [message(1), message(2)])
    clock.advance(minutes=5)
    transport = MemoryTransport()

    report = deliver_pending(db, ctx, transport)

    assert report == DeliveryReport(delivered=ids, failed=[])
    assert transport.sent == [message(1), message(2)]
    for row in rows(db):
        assert row.status == OUTBOX_DELIVERED
        assert row.attempts == 1
        assert row.delivered_at == row.last_attempt_at == clock.now
        assert row.last_error is None
    with db.reading() as session:
        assert pending(session) == []


def test_a_failed_delivery_stays_pending_with_its_attempt_and_error_then_a_later_round_sends_it(
    db, ctx, clock
):
    (message_id,) = enqueue_committed(db, ctx, [message(1, "down@example.org")])
    first_try = clock.now

    report = deliver_pending(db, ctx, MemoryTransport(failing={"down@example.org"}))

    assert report == DeliveryReport(delivered=[], failed=[message_id])
    (row,) = rows(db)
    assert row.status == OUTBOX_PENDING
    assert row.attempts == 1
    assert row.last_attempt_at == first_try
    assert row.last_error == "ConnectionRefusedError: smtp.example.org:25 refused"
    assert row.delivered_at is None

    clock.advance(minutes=10)
    transport = MemoryTransport()
    report = deliver_pending(db, ctx, transport)

    assert report == DeliveryReport(delivered=[message_id], failed=[])
    assert transport.sent == [message(1, "down@example.org")]
    (row,) = rows(db)
    assert (row.status, row.attempts, row.last_error) == (OUTBOX_DELIVERED, 2, None)
    assert row.delivered_at == row.last_attempt_at == clock.now


def test_one_failure_does_not_undo_the_record_of_another_delivery(db, ctx):
    ids = enqueue_committed(
        db, ctx, [message(1, "ok@example.org"), message(2, "down@example.org"), message(3)]
    )

    report = deliver_pending(db, ctx, MemoryTransport(failing={"down@example.org"}))

    assert report == DeliveryReport(delivered=[ids[0], ids[2]], failed=[ids[1]])
    assert [(r.status, r.attempts) for r in rows(db)] == [
        (OUTBOX_DELIVERED, 1),
        (OUTBOX_PENDING, 1),
        (OUTBOX_DELIVERED, 1),
    ]


def test_a_long_delivery_error_is_cut_to_what_the_column_holds(db, ctx):
    enqueue_committed(db, ctx, [message(1, "down@example.org")])
    error = OSError("x" * 5000)

    deliver_pending(db, ctx, MemoryTransport(failing={"down@example.org"}, error=error))

    (row,) = rows(db)
    assert len(row.last_error) == ERROR_LENGTH
    assert row.last_error.startswith("OSError: xxx")


def test_a_delivered_message_is_never_sent_again(db, ctx):
    enqueue_committed(db, ctx, [message(1)])
    deliver_pending(db, ctx, MemoryTransport())
    transport = MemoryTransport()

    report = deliver_pending(db, ctx, transport)

    assert report == DeliveryReport(delivered=[], failed=[])
    assert transport.sent == []
    assert rows(db)[0].attempts == 1


# The status column ------------------------------------------------------------------------


def test_the_status_check_refuses_a_bogus_status_on_insert(db, ctx):
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(
            OutboxMessage(
                topic="t",
                recipient="r",
                subject="s",
                body="b",
                status="sent",
                attempts=0,
                created_at=ctx.clock(),
            )
        )
        session.flush()

    assert rows(db) == []


def test_the_status_check_refuses_a_bogus_status_on_update(db, ctx):
    (message_id,) = enqueue_committed(db, ctx, [message(1)])

    with pytest.raises(IntegrityError), db.transaction() as session:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id == message_id).values(status="bogus")
        )

    assert rows(db)[0].status == OUTBOX_PENDING


# Two rounds at once -----------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def real(request: pytest.FixtureRequest, scratch: Any, tmp_path: Any, clock: Any) -> Iterator[Any]:
    yield from committing_trial(scratch, request.param, tmp_path, clock)


class SlowTransport(MemoryTransport):
    """Takes a moment per message, so that two rounds overlap."""

    def send(self, message: Message) -> None:
        time.sleep(0.02)
        super().send(message)


def test_two_rounds_at_once_never_deliver_one_message_twice(real):
    count = 12
    ids = enqueue_committed(real.database, real.ctx, [message(n) for n in range(count)])
    transport = SlowTransport()
    start = threading.Barrier(2, timeout=ROUND_TIMEOUT_S)
    reports: list[DeliveryReport] = []
    errors: list[BaseException] = []

    def round_() -> None:
        # A Database of its own: its own engine and connections, like another process.
        database = Database(real.url)
        try:
            start.wait()
            reports.append(deliver_pending(database, real.ctx, transport))
        except BaseException as error:
            errors.append(error)
        finally:
            database.dispose()

    threads = [threading.Thread(target=round_) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ROUND_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a delivery round hung"
    assert errors == []

    sent = [m.subject for m in transport.sent]
    assert sorted(sent) == sorted(message(n).subject for n in range(count))
    first, second = (set(report.delivered) for report in reports)
    assert first.isdisjoint(second)
    assert first | second == set(ids)
    assert all(report.failed == [] for report in reports)
    stored = real.scalars(select(OutboxMessage.attempts).order_by(OutboxMessage.id))
    assert stored == [1] * count


def bounded(url: str) -> Database:
    """A Database whose PostgreSQL lock waits give up after a few seconds instead of hanging.

    Should the claim ever wait for a lock (``SKIP LOCKED`` lost), these single-thread tests
    would otherwise wait for themselves forever.
    """
    return Database(
        make_url(url)
        .update_query_dict({"options": "-c lock_timeout=5000"})
        .render_as_string(hide_password=False)
    )


def test_a_message_claimed_by_another_round_is_skipped_not_waited_for(real):
    if real.backend != "postgresql":
        pytest.skip("SQLite has no row locks: BEGIN IMMEDIATE serialises whole rounds")
    held, free = enqueue_committed(real.database, real.ctx, [message(1), message(2)])
    other, delivering = Database(real.url), bounded(real.url)
    transport = MemoryTransport()
    try:
        with other.transaction() as session:
            assert claim_outbox_message(session, held) is not None
            report = deliver_pending(delivering, real.ctx, transport)
        assert report == DeliveryReport(delivered=[free], failed=[])
        assert [m.subject for m in transport.sent] == ["Unblinding 2"]
        # Released: the next round sends it.
        assert deliver_pending(delivering, real.ctx, transport).delivered == [held]
    finally:
        other.dispose()
        delivering.dispose()


def test_a_message_another_round_delivered_after_this_round_listed_it_is_not_sent_again(real):
    # Round A lists messages 1 and 2 and claims 1; while A is sending 1, round B lists both,
    # skips 1 (A holds it) and delivers 2. A then claims 2, finds it delivered, sends nothing.
    if real.backend != "postgresql":
        pytest.skip("SQLite: a round inside another would wait for the first's write lock")
    first, second = enqueue_committed(real.database, real.ctx, [message(1), message(2)])
    round_a, round_b = bounded(real.url), bounded(real.url)
    inner = MemoryTransport()
    inner_reports: list[DeliveryReport] = []

    class InterleavingTransport(MemoryTransport):
        def send(self, message: Message) -> None:
            if not inner_reports:
                inner_reports.append(deliver_pending(round_b, real.ctx, inner))
            super().send(message)

    outer = InterleavingTransport()
    try:
        report = deliver_pending(round_a, real.ctx, outer)
    finally:
        round_a.dispose()
        round_b.dispose()

    assert inner_reports == [DeliveryReport(delivered=[second], failed=[])]
    assert report == DeliveryReport(delivered=[first], failed=[])
    assert [m.subject for m in outer.sent] == ["Unblinding 1"]
    assert [m.subject for m in inner.sent] == ["Unblinding 2"]
    assert real.scalars(select(OutboxMessage.attempts).order_by(OutboxMessage.id)) == [1, 1]
