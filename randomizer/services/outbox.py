"""The outbox: messages written with the change they announce, delivered after the commit.

:func:`enqueue` adds messages in the caller's transaction and asks, through
:func:`randomizer.db.after_commit`, for delivery to be woken once that transaction has
committed. A rolled-back change leaves no message, and a committed one always has its
message, even if the process dies before delivering it: :func:`deliver_pending` picks up
whatever is due, whenever it runs (after later commits, or ``sealroom notifications send``
from cron). Delivery never runs inside the change's transaction, so a slow or broken mail
server cannot delay or undo the change.

No transaction is open while a message is being sent. Each delivery is an audit entry
(``notification.sent``), in the transaction that marks the message delivered: an inspector
sees when who was told what. A failed attempt keeps the message pending with its attempts
and last error, and it is not tried again before its back-off has passed (1, 2, 4, …
minutes, at most an hour).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from randomizer.db import Database, after_commit
from randomizer.locks import claim_outbox_message
from randomizer.models import OUTBOX_DELIVERED, OUTBOX_PENDING, OUTBOX_STATUSES, OutboxMessage
from randomizer.roles import SYSTEM
from randomizer.services.context import TrialContext

log = logging.getLogger(__name__)

#: At most this many characters of a delivery error are kept.
ERROR_LENGTH = 500
#: How long a delivery round may take to send one message before another may try it.
LEASE = timedelta(minutes=5)
#: Back-off after the n-th failed attempt: FIRST_RETRY * 2**(n-1), at most LONGEST_WAIT.
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=1)


@dataclass(frozen=True)
class Message:
    """One message to one recipient."""

    topic: str
    recipient: str
    subject: str
    body: str
    about: str | None = None


class Transport(Protocol):
    """Something that delivers a message (SMTP, in production), raising if it could not."""

    def send(self, message: Message) -> None: ...


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery round did."""

    delivered: list[int]
    failed: list[int]


def enqueue(
    session: Session,
    ctx: TrialContext,
    messages: Iterable[Message],
    wake: Callable[[], None] | None = None,
) -> list[OutboxMessage]:
    """Write ``messages`` to the outbox in ``session``'s transaction.

    ``wake`` (typically: start a delivery round) runs after the transaction commits, never
    if it rolls back.
    """
    rows = [
        OutboxMessage(
            topic=message.topic,
            about=message.about,
            recipient=message.recipient,
            subject=message.subject,
            body=message.body,
            status=OUTBOX_PENDING,
            attempts=0,
            created_at=ctx.clock(),
        )
        for message in messages
    ]
    session.add_all(rows)
    session.flush()
    if wake is not None and rows:
        after_commit(session, "outbox.wake", wake)
    return rows


def pending(session: Session) -> list[OutboxMessage]:
    """Messages not yet delivered, oldest first."""
    return listed(session, OUTBOX_PENDING)


def listed(session: Session, status: str | None = OUTBOX_PENDING) -> list[OutboxMessage]:
    """Messages of ``status`` (pending: not yet delivered; None: all), oldest first."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if status is not None:
        if status not in OUTBOX_STATUSES:
            raise ValueError(f"unknown outbox status {status!r}")
        query = query.where(OutboxMessage.status == status)
    return list(session.scalars(query))


def due(session: Session, now: datetime) -> list[int]:
    """Ids of pending messages whose back-off has passed, oldest first."""
    return list(
        session.scalars(
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OUTBOX_PENDING,
                or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
            )
            .order_by(OutboxMessage.id)
        )
    )


def back_off(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_WAIT)


def deliver_pending(
    database: Database, ctx: TrialContext, transport: Transport, *, ignore_back_off: bool = False
) -> DeliveryReport:
    """Try every due message once; record each attempt, its outcome and its error.

    No transaction is open while a message is sent, so a slow or hung mail server holds no
    lock (on SQLite every transaction holds the database's write lock): each message is
    first claimed for a lease (:data:`LEASE`) in a short transaction of its own, then sent,
    then its outcome is recorded in another. Two rounds never send one message at once; a
    round that dies mid-send leaves the message to be tried again once its lease is over
    (delivery is at least once). ``ignore_back_off`` tries every pending message now.
    """
    with database.reading() as session:
        ids = [row.id for row in listed(session)] if ignore_back_off else due(session, ctx.clock())
    delivered, failed = [], []
    for message_id in ids:
        message, lease = _claim(database, ctx, message_id, ignore_back_off)
        if message is None:
            continue  # being delivered, or delivered meanwhile, by another round
        try:
            transport.send(message)
        except Exception as error:  # any failure of the transport: keep it, retry later
            reason = f"{type(error).__name__}: {error}"[:ERROR_LENGTH]
            _record(database, ctx, message_id, lease, error=reason)
            failed.append(message_id)
            log.warning("outbox message %s not delivered: %s", message_id, reason)
        else:
            _record(database, ctx, message_id, lease, error=None)
            delivered.append(message_id)
    return DeliveryReport(delivered=delivered, failed=failed)


def _claim(
    database: Database, ctx: TrialContext, message_id: int, ignore_back_off: bool
) -> tuple[Message | None, datetime | None]:
    with database.transaction() as session:
        row = claim_outbox_message(session, message_id)
        now = ctx.clock()
        if (
            row is None
            or row.status != OUTBOX_PENDING
            or (row.claimed_until is not None and row.claimed_until > now)
            or (
                not ignore_back_off
                and row.next_attempt_at is not None
                and row.next_attempt_at > now
            )
        ):
            return None, None
        row.attempts += 1
        row.last_attempt_at = now
        row.claimed_until = now + LEASE
        return Message(
            row.topic, row.recipient, row.subject, row.body, row.about
        ), row.claimed_until


def _waiting(row: OutboxMessage, now: datetime) -> bool:
    return row.next_attempt_at is not None and row.next_attempt_at > now


def _record(
    database: Database,
    ctx: TrialContext,
    message_id: int,
    lease: datetime | None,
    *,
    error: str | None,
) -> None:
    with database.transaction() as session:
        row = claim_outbox_message(session, message_id, wait=True)
        if row is None or row.status != OUTBOX_PENDING or row.claimed_until != lease:
            log.warning("outbox message %s: lease lost while sending", message_id)
            return
        row.claimed_until = None
        if error is not None:
            row.last_error = error
            row.next_attempt_at = ctx.clock() + back_off(row.attempts)
            return
        row.status = OUTBOX_DELIVERED
        row.delivered_at = ctx.clock()
        row.last_error = None
        row.next_attempt_at = None
        session.flush()
        ctx.audit.append(
            session,
            SYSTEM,
            "notification.sent",
            row.about,
            {
                "message": row.id,
                "topic": row.topic,
                "recipient": row.recipient,
                "attempts": row.attempts,
            },
        )
