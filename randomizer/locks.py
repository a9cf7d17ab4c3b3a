"""The row locks that serialise allocation, and the one order they are taken in.

Every transaction takes these locks in this order, and only through these functions (a test
checks that ``with_for_update`` appears nowhere else), so no two transactions can wait on
each other in a cycle:

0. an outbox message (a delivery round claims it, then appends its audit entry);
1. the participant row: two requests for one participant act one after the other;
2. the site row: it stands for the site's kits, so the supply check and the allocation see
   the same stock (R-BLIND-2) and no kit is given twice (a randomisation takes it with the
   participant's, in one statement: :func:`lock_participant_and_site`);
3. the stratum row: its cursor gives slot n to the n-th randomisation (R-LIST-2). Taken
   after the site's, just before the slot: strata are shared by sites, and the fewer
   statements a transaction runs while it holds a stratum, the less the stratum's other
   randomisations wait;
4. the depot (the trial's row): two shipments never choose the same depot kit; taken after
   the destination site's lock, never before;
5. a client's authentication failures: concurrent failures of one client, in any worker,
   count one after the other (:mod:`randomizer.services.throttling`);
6. the audit head: it serialises appends, so the chain never forks (taken last, by
   :meth:`randomizer.services.audit_log.AuditLog.append`).

Taking a lock of an earlier rank after one of a later rank is a programming error and
raises :class:`LockOrderError` before any lock is requested. The same rank may be taken
again (every append locks the head). On SQLite the whole transaction holds the database's
write lock from ``BEGIN IMMEDIATE`` on, and these row locks are no-ops.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from randomizer.db import changed_no_row
from randomizer.models import (
    AuditHead,
    AuthFailure,
    OutboxMessage,
    Participant,
    Site,
    Stratum,
    Trial,
)

OUTBOX_MESSAGE: Final = 1
PARTICIPANT: Final = 2
SITE: Final = 3
STRATUM: Final = 4
DEPOT: Final = 5
AUTH_FAILURE: Final = 6
AUDIT_HEAD: Final = 7
_NAMES: Final = {
    OUTBOX_MESSAGE: "outbox message",
    PARTICIPANT: "participant",
    SITE: "site",
    STRATUM: "stratum",
    DEPOT: "depot",
    AUTH_FAILURE: "auth failure",
    AUDIT_HEAD: "audit head",
}
_HELD = "sealroom.locks.highest"
#: The sites whose rows this session's transaction has locked.
_SITES_HELD = "sealroom.locks.sites"
#: The audit log's single head row.
HEAD_ID: Final = 1


class LockOrderError(RuntimeError):
    """A lock was requested out of the documented order (a bug, never a user's error)."""


def _enter(session: Session, rank: int) -> None:
    held = session.info.get(_HELD, 0)
    if rank < held:
        raise LockOrderError(
            f"the {_NAMES[rank]} lock was requested after the {_NAMES[held]} lock; "
            f"the order is {', '.join(_NAMES[rank] for rank in sorted(_NAMES))}"
        )
    session.info[_HELD] = rank


# The locks of every randomisation, built once (building them cost more than running them).
_LOCK_PARTICIPANT = (
    select(Participant).where(Participant.screening_number == bindparam("number")).with_for_update()
)
_PARTICIPANTS, _SITES, _STRATA = Participant.__table__, Site.__table__, Stratum.__table__
#: Core, built once: a randomisation's participant and site locks in one statement, with
#: the site's row read. PostgreSQL locks the participant's row, then the site's (the ranks'
#: order); when it waited for either, it reads the newest committed version of the row it
#: waited for, so the site's status and kit version are those under its lock.
_LOCK_PARTICIPANT_AND_SITE = (
    select(
        _PARTICIPANTS.c.id,
        _PARTICIPANTS.c.screening_number,
        _PARTICIPANTS.c.site_id,
        _PARTICIPANTS.c.status,
        _PARTICIPANTS.c.screened_on,
        _PARTICIPANTS.c.screening_strata,
        _PARTICIPANTS.c.randomization_number,
        _SITES.c.status.label("site_status"),
        _SITES.c.attributes.label("site_attributes"),
        _SITES.c.kit_version.label("site_kit_version"),
    )
    .join(_SITES, _SITES.c.id == _PARTICIPANTS.c.site_id)
    .where(_PARTICIPANTS.c.screening_number == bindparam("number"))
    .with_for_update(of=[_PARTICIPANTS, _SITES])
)
#: Core, built once: every randomisation and dispensing runs it.
_LOCK_SITE = (
    select(_SITES.c.id, _SITES.c.status, _SITES.c.kit_version)
    .where(_SITES.c.id == bindparam("site"))
    .with_for_update()
)
#: Core, built once: locks the stratum's row and moves its cursor on, in one statement. A
#: used-up stratum's row is neither changed nor locked: its cursor only ever moves forward.
_TAKE_STRATUM_POSITION = (
    update(_STRATA)
    .where(_STRATA.c.number == bindparam("stratum"), _STRATA.c.next_position <= _STRATA.c.size)
    .values(next_position=_STRATA.c.next_position + 1)
    .returning((_STRATA.c.next_position - 1).label("position"))
)


def lock_participant(session: Session, screening_number: str) -> Participant | None:
    """Lock and return the participant with this screening number (None if there is none)."""
    _enter(session, PARTICIPANT)
    return session.execute(_LOCK_PARTICIPANT, {"number": screening_number}).scalar_one_or_none()


def lock_participant_and_site(session: Session, screening_number: str) -> Row[Any] | None:
    """Lock the participant with this screening number and its site, in one statement
    (None, and neither locked, if there is none), as a row: the participant's ``id``,
    ``screening_number``, ``site_id``, ``status``, ``screened_on``, ``screening_strata`` and
    ``randomization_number``, with its site's ``site_status``, ``site_attributes`` and
    ``site_kit_version`` as the site's lock sees them."""
    _enter(session, PARTICIPANT)
    row = (
        session.connection()
        .execute(_LOCK_PARTICIPANT_AND_SITE, {"number": screening_number})
        .one_or_none()
    )
    if row is not None:
        _enter(session, SITE)
        _hold_site(session, row.site_id)
    return row


def take_stratum_position(session: Session, number: int) -> int | None:
    """Lock the stratum's row and move its cursor on by one: the position taken, or None
    when every slot of the stratum is used (then nothing is written).

    The lock and the write are one ``UPDATE``: the first write of a randomisation, after
    every check that can refuse it but this one: when it refuses, it changed no row, and
    :func:`randomizer.db.refusing_before_writing` is told so.
    """
    _enter(session, STRATUM)
    taken = (
        session.connection()
        .execute(_TAKE_STRATUM_POSITION, {"stratum": number})
        .scalar_one_or_none()
    )
    if taken is None:
        changed_no_row(session)
    return taken


def lock_site(session: Session, site_id: str) -> Row[tuple[str, str, int]]:
    """Lock the site's row, the lock on the site's kits, and return its ``id``, ``status``
    and ``kit_version`` as the lock sees them (a row, not the session's object: an object
    the session loaded before the lock may be older)."""
    _enter(session, SITE)
    row = session.connection().execute(_LOCK_SITE, {"site": site_id}).one()
    _hold_site(session, site_id)
    return row


def lock_depot(session: Session) -> Trial:
    """Lock the depot's kits (the trial's one row stands for them) and return the trial."""
    _enter(session, DEPOT)
    return session.execute(select(Trial).with_for_update()).scalar_one()


def lock_auth_failure(session: Session, client: str, now: datetime) -> AuthFailure:
    """Lock and return the client's failure record, created empty (a window beginning
    ``now``) if it has none: the insert waits for, or yields to, a concurrent one."""
    _enter(session, AUTH_FAILURE)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(AuthFailure)
        .values(client=client, failures=0, window_started_at=now)
        .on_conflict_do_nothing(index_elements=[AuthFailure.client])
    )
    return session.execute(
        select(AuthFailure)
        .where(AuthFailure.client == client)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


_HEAD_COLUMNS = AuditHead.__table__.c
#: Core, built once: every appending transaction runs it (a row, not an ORM object, so no
#: stale copy of the head lingers in a session that updates it with Core statements).
_LOCK_AUDIT_HEAD = (
    select(
        _HEAD_COLUMNS.size,
        _HEAD_COLUMNS.last_hash,
        _HEAD_COLUMNS.frontier,
        _HEAD_COLUMNS.signing_key,
    )
    .where(_HEAD_COLUMNS.id == HEAD_ID)
    .with_for_update()
)


def lock_audit_head(session: Session) -> Row[tuple[int, str, bytes, str | None]]:
    """Lock the audit log's head (the last lock of every appending transaction) and return
    its ``size``, ``last_hash``, ``frontier`` and ``signing_key`` (the key in force)."""
    _enter(session, AUDIT_HEAD)
    return session.connection().execute(_LOCK_AUDIT_HEAD).one()


def claim_outbox_message(
    session: Session, message_id: int, *, wait: bool = False
) -> OutboxMessage | None:
    """Lock one outbox message, or None if it is gone (or, unless ``wait``, locked by another
    delivery round: ``SKIP LOCKED``, so two rounds never claim one message at once)."""
    _enter(session, OUTBOX_MESSAGE)
    return session.execute(
        select(OutboxMessage)
        .where(OutboxMessage.id == message_id)
        .with_for_update(skip_locked=not wait)
    ).scalar_one_or_none()


def _hold_site(session: Session, site_id: str) -> None:
    session.info.setdefault(_SITES_HELD, set()).add(site_id)


def holds_site_lock(session: Session, site_id: str) -> bool:
    """Whether this session's transaction has locked the site's row."""
    return site_id in session.info.get(_SITES_HELD, ())


def held_rank(session: Session) -> int:
    """The rank of the latest lock this session's transaction took (0: none)."""
    return session.info.get(_HELD, 0)
