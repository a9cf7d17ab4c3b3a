"""The row locks' one order: participant, site, stratum, auth failure, audit head
(``randomizer.locks``).

A lock of an earlier rank asked for after one of a later rank is a programming error: it
raises :class:`LockOrderError` before any SQL is sent, so it can never wait on a lock in a
cycle. The same rank may be taken again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from randomizer.locks import (
    AUDIT_HEAD,
    PARTICIPANT,
    SITE,
    LockOrderError,
    claim_outbox_message,
    held_rank,
    lock_audit_head,
    lock_auth_failure,
    lock_participant,
    lock_participant_and_site,
    lock_site,
    take_stratum_position,
)
from randomizer.services.audit_log import AuditLog

#: The locks in their documented order, each as (name, take).
LOCKS: list[tuple[str, Callable[[Session], Any]]] = [
    ("participant", lambda session: lock_participant(session, "101-0001")),
    ("site", lambda session: lock_site(session, "101")),
    ("stratum", lambda session: take_stratum_position(session, 1)),
    ("auth failure", lambda session: lock_auth_failure(session, "192.0.2.1", datetime.now(UTC))),
    ("audit head", lock_audit_head),
]
LOCK_IDS = [name.replace(" ", "-") for name, _take in LOCKS]
OUT_OF_ORDER = [(later, earlier) for earlier, later in itertools.combinations(LOCKS, 2)]
OUT_OF_ORDER_IDS = [
    f"{later}-then-{earlier}" for earlier, later in itertools.combinations(LOCK_IDS, 2)
]


@contextmanager
def statements_sent(engine: Any) -> Iterator[list[str]]:
    """The SQL statements sent while the block runs."""
    sent: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def screened(api: Any) -> str:
    """A participant of site 101, so that every lock has a row to lock."""
    assert api.screen("101-0001").status_code == 201
    return "101-0001"


@pytest.mark.requirement("R-NF-1")
def test_participant_lock_after_site_lock_raises_before_any_sql(db, screened):
    with db.transaction() as session:
        lock_site(session, "101")

        with statements_sent(db.engine) as sent, pytest.raises(LockOrderError) as raised:
            lock_participant(session, screened)

        assert sent == []
        assert str(raised.value) == (
            "the participant lock was requested after the site lock; "
            "the order is outbox message, participant, site, stratum, depot, auth failure, "
            "audit head"
        )
        # The recording would have seen a lock's statement had one been sent.
        with statements_sent(db.engine) as sent:
            lock_site(session, "101")
        assert any("site" in statement for statement in sent)


@pytest.mark.requirement("R-NF-1")
@pytest.mark.parametrize(("later", "earlier"), OUT_OF_ORDER, ids=OUT_OF_ORDER_IDS)
def test_every_lock_of_an_earlier_rank_after_a_later_one_raises_before_any_sql(
    db, screened, later, earlier
):
    (later_name, take_later), (earlier_name, take_earlier) = later, earlier
    with db.transaction() as session:
        take_later(session)

        with statements_sent(db.engine) as sent, pytest.raises(LockOrderError) as raised:
            take_earlier(session)

        assert sent == []
        assert f"the {earlier_name} lock was requested after the {later_name} lock" in str(
            raised.value
        )


@pytest.mark.requirement("R-NF-1")
def test_the_locks_in_their_documented_order_succeed(db, screened):
    with db.transaction() as session:
        participant = lock_participant(session, screened)
        site = lock_site(session, "101")
        position = take_stratum_position(session, 1)
        failures = lock_auth_failure(session, "192.0.2.1", datetime.now(UTC))
        head = lock_audit_head(session)

        assert (
            participant.screening_number,
            site.id,
            position,
            failures.client,
            head.size,
        ) == (screened, "101", 1, "192.0.2.1", AuditLog.size(session))
        assert held_rank(session) == AUDIT_HEAD


@pytest.mark.requirement("R-NF-1")
def test_the_randomisations_participant_and_site_locks_are_one_statement_in_rank_order(
    db, screened
):
    with db.transaction() as session:
        take_stratum_position(session, 1)
        with statements_sent(db.engine) as sent, pytest.raises(LockOrderError):
            lock_participant_and_site(session, screened)
        assert sent == []

    with db.transaction() as session:
        session.connection()  # the transaction begun: only the lock's statements are counted
        with statements_sent(db.engine) as sent:
            row = lock_participant_and_site(session, screened)
        assert len(sent) == 1
        assert (row.screening_number, row.site_id, row.status, row.site_status) == (
            screened,
            "101",
            "screened",
            "open",
        )
        assert isinstance(row.site_attributes, dict)
        assert held_rank(session) == SITE
        assert row.site_kit_version == lock_site(session, "101").kit_version
        with pytest.raises(LockOrderError):  # the site's rank is held
            lock_participant(session, screened)

    with db.transaction() as session:
        assert lock_participant_and_site(session, "101-9999") is None
        assert held_rank(session) == PARTICIPANT  # nothing found, no site locked


@pytest.mark.requirement("R-NF-1")
def test_a_supply_read_under_a_site_lock_the_transaction_does_not_hold_raises_before_any_sql(
    db, ctx, screened
):
    from randomizer.services import kits as kit_service

    with db.transaction() as session:
        lock_site(session, "102")  # another site's: the rank is held, not site 101's row
        with statements_sent(db.engine) as sent, pytest.raises(LockOrderError, match="101"):
            kit_service.site_supply(session, ctx, "101", locked=kit_service.SiteLocked("open", 1))
        assert sent == []

    with db.transaction() as session:
        row = lock_participant_and_site(session, screened)
        supply = kit_service.site_supply(
            session,
            ctx,
            "101",
            locked=kit_service.SiteLocked(row.site_status, row.site_kit_version),
        )
        assert supply.site_status == "open"


@pytest.mark.requirement("R-NF-1")
def test_the_participant_and_site_lock_holds_the_sites_row_on_postgresql(db, screened, trial_db):
    if db.dialect != "postgresql":
        pytest.skip("SQLite has no row locks: BEGIN IMMEDIATE holds the whole database")
    with db.transaction() as session:
        lock_participant_and_site(session, screened)
        with trial_db.engine.connect() as other:
            with pytest.raises(OperationalError, match="could not obtain lock"):
                other.execute(text("SELECT id FROM site WHERE id = '101' FOR UPDATE NOWAIT"))
            other.rollback()


@pytest.mark.requirement("R-NF-1")
def test_any_locks_in_the_documented_order_succeed_even_skipping_ranks(db, screened):
    for count in range(1, len(LOCKS) + 1):
        for chosen in itertools.combinations(LOCKS, count):
            with db.transaction() as session:
                for _name, take in chosen:
                    take(session)


@pytest.mark.requirement("R-NF-1")
@pytest.mark.parametrize(("name", "take"), LOCKS, ids=LOCK_IDS)
def test_the_same_lock_twice_is_fine(db, screened, name, take):
    with db.transaction() as session:
        first = take(session)
        again = take(session)

        if name == "stratum":  # each take moves the cursor on
            assert again == first + 1
        elif name in ("site", "audit head"):  # read as plain rows: the same
            assert again == first
        else:  # the session's one row object
            assert again is first


@pytest.mark.requirement("R-NF-1")
def test_each_transaction_starts_holding_no_lock(db, screened):
    with db.transaction() as session:
        lock_audit_head(session)

    with db.transaction() as session:
        assert held_rank(session) == 0
        assert lock_participant(session, screened) is not None


@pytest.mark.requirement("R-NF-1")
def test_an_outbox_message_is_claimed_only_in_a_transaction_holding_no_other_lock(db):
    with db.transaction() as session:
        assert claim_outbox_message(session, 1) is None  # alone: fine (there is no message 1)

    with db.transaction() as session:
        lock_site(session, "101")

        with statements_sent(db.engine) as sent, pytest.raises(LockOrderError):
            claim_outbox_message(session, 1)

        assert sent == []
