"""The outbox: messages written with the change they announce, delivered after the commit.

:func:`enqueue` adds messages in the caller's transaction and asks, through
:func:`randomizer.db.after_commit`, for delivery to be woken once that transaction has
committed. A rolled-back change leaves no message, and a committed one always has its
message, even if the process dies before delivering it: :func:`deliver_pending` picks up
whatever is pending, whenever it runs. Delivery never runs inside the change's transaction,
so a slow or broken mail server cannot delay or undo the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from randomizer.db import Database, after_commit
from randomizer.locks import claim_outbox_message
from randomizer.models import OUTBOX_DELIVERED, OUTBOX_PENDING, OutboxMessage
from randomizer.services.context import TrialContext

log = logging.getLogger(__name__)

#: At most this many characters of a delivery error are kept.
ERROR_LENGTH = 500


@dataclass(frozen=True)
class Message:
    """One message to one recipient."""

    topic: str
    recipient: str
    subject: str
    body: str


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
    if wake is not None:
        after_commit(session, "outbox.wake", wake)
    return rows


def pending(session: Session) -> list[OutboxMessage]:
    """Messages not yet delivered, oldest first."""
    return list(
        session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.status == OUTBOX_PENDING)
            .order_by(OutboxMessage.id)
        )
    )


def deliver_pending(database: Database, ctx: TrialContext, transport: Transport) -> DeliveryReport:
    """Try every pending message once; record each attempt, its outcome and its error.

    Each message is marked in a transaction of its own, so one failure never undoes the
    record of another's delivery. A message that fails stays pending, to be tried again.
    """
    with database.reading() as session:
        ids = [row.id for row in pending(session)]
    delivered, failed = [], []
    for message_id in ids:
        with database.transaction() as session:
            row = claim_outbox_message(session, message_id)
            if row is None or row.status != OUTBOX_PENDING:
                continue  # being delivered, or delivered meanwhile, by another round
            row.attempts += 1
            row.last_attempt_at = ctx.clock()
            try:
                transport.send(Message(row.topic, row.recipient, row.subject, row.body))
            except Exception as error:  # any failure of the transport: keep it, retry later
                row.last_error = f"{type(error).__name__}: {error}"[:ERROR_LENGTH]
                failed.append(message_id)
                log.warning("outbox message %s not delivered: %s", message_id, row.last_error)
            else:
                row.status = OUTBOX_DELIVERED
                row.delivered_at = ctx.clock()
                row.last_error = None
                delivered.append(message_id)
    return DeliveryReport(delivered=delivered, failed=failed)
