"""Notifications by e-mail, through the outbox (R-UNB-2, the stratum alert of URS §3).

Messages are composed here, written to the outbox in the transaction of the event they
announce (:mod:`randomizer.services.outbox`) and sent after it commits, over SMTP with the
standard library, by a background :class:`Dispatcher` (or ``sealroom notifications send``).
Nothing in a message depends on an arm: subjects and bodies are fixed templates filled with
identifiers, names and times only.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.entry import format_time
from randomizer.config import Settings, SmtpServer
from randomizer.db import DATABASE_UNAVAILABLE, Database
from randomizer.models import OutboxMessage, Participant, Unblinding, User
from randomizer.roles import INVESTIGATOR, STATISTICIAN
from randomizer.services.context import TrialContext
from randomizer.services.outbox import Message, Transport, deliver_pending, enqueue

log = logging.getLogger(__name__)

UNBLINDED_TOPIC = "participant.unblinded"
STRATUM_EXHAUSTED_TOPIC = "stratum.exhausted"


class SmtpTransport:
    """Sends one message over SMTP (``smtplib``), with STARTTLS and login when configured."""

    def __init__(self, server: SmtpServer, sender: str, timeout: float = 10.0) -> None:
        self.server = server
        self.sender = sender
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpTransport({self.server.host}:{self.server.port})"

    def send(self, message: Message) -> None:
        """Deliver ``message``; raises (smtplib.SMTPException, OSError) if it could not."""
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.recipient
        email["Subject"] = message.subject
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = make_msgid(domain=self.sender.rsplit("@", 1)[1])
        email.set_content(message.body)
        with smtplib.SMTP(self.server.host, self.server.port, timeout=self.timeout) as smtp:
            if self.server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.server.user:
                smtp.login(self.server.user, self.server.password or "")
            smtp.send_message(email)


def transport_for(settings: Settings) -> Transport | None:
    """The SMTP transport the settings name, or None when no mail server is configured."""
    if settings.smtp is None:
        return None
    return SmtpTransport(settings.smtp, settings.smtp_from)


#: Seconds before the dispatcher tries again after a round that failed (the database down).
RETRY_SECONDS = 30.0


class Dispatcher:
    """Delivers the outbox in one background thread, woken after each commit that wrote to it.

    A wake while a round is running asks for one more round, so nothing written meanwhile
    waits for the next commit. The request that woke it never waits for delivery. A round
    that fails as a whole (the database is unavailable) wakes it again ``retry_seconds``
    later, until a round gets through: a database outage does not leave the messages it
    held up waiting for the next unblinding, or for cron.
    """

    def __init__(
        self,
        database: Database,
        ctx: TrialContext,
        transport: Transport,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.database = database
        self.ctx = ctx
        self.transport = transport
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._again = False
        self._thread: threading.Thread | None = None
        self._retry: threading.Timer | None = None

    def wake(self) -> None:
        """Start a delivery round now, in the background (or after the one running)."""
        with self._lock:
            self._again = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sealroom-outbox", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False
            try:
                deliver_pending(self.database, self.ctx, self.transport)
            except Exception as error:  # the database may be down: messages stay pending
                log.warning(
                    "outbox delivery round failed (%s); the messages stay pending, next "
                    "try in %s s",
                    type(error).__name__,
                    self.retry_seconds,
                    exc_info=not isinstance(error, DATABASE_UNAVAILABLE),
                )
                self._retry_later()

    def _retry_later(self) -> None:
        with self._lock:
            if self._retry is None or not self._retry.is_alive():
                self._retry = threading.Timer(self.retry_seconds, self.wake)
                self._retry.daemon = True
                self._retry.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running round, if any (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def _recipients(*groups: Iterable[str | None]) -> list[str]:
    return sorted({address for group in groups for address in group if address})


def _emails_of(session: Session, role: str, site: str | None = None) -> list[str | None]:
    query = select(User.email).where(User.role == role, User.active, User.email.is_not(None))
    if site is not None:
        query = query.where(User.site_id == site)
    return list(session.scalars(query))


def users_to_notify(session: Session, role: str) -> list[str]:
    """The e-mail addresses of the active users of ``role``, sorted, each once."""
    return _recipients(_emails_of(session, role))


def notify(
    session: Session,
    ctx: TrialContext,
    topic: str,
    recipients: Iterable[str],
    subject: str,
    lines: Iterable[str],
    about: str,
) -> None:
    """Write one message (``lines`` joined) per recipient to the outbox, in the caller's
    transaction; the sender is woken to deliver them once it commits."""
    body = "\n".join(lines)
    enqueue(
        session,
        ctx,
        (Message(topic, address, subject, body, about) for address in recipients),
        wake=ctx.notices.wake,
    )


def announce_unblinding(
    session: Session, ctx: TrialContext, participant: Participant, unblinding: Unblinding
) -> list[str]:
    """Write the unblinding's messages to the outbox; return the recipients.

    To the sponsor's blinded safety contacts and the investigators of the participant's
    site. The message names the trial, participant, site, who, role, when, reason and
    reference; never the arm, and not the free-text detail (which a hurried physician might
    write the arm into, and which the mail would carry outside the service).
    """
    recipients = _recipients(
        ctx.notices.safety_contacts,
        _emails_of(session, INVESTIGATOR, participant.site_id),
    )
    definition = ctx.definition
    subject = (
        f"[{definition.id}] Emergency unblinding of participant {participant.screening_number} "
        f"at site {participant.site_id}"
    )
    lines = [
        f"The blind was broken for one participant of {definition.id} ({definition.registry_id}).",
        "",
        f"Participant:     {participant.screening_number} "
        f"(randomisation number {participant.randomization_number})",
        f"Site:            {participant.site_id}",
        f"Unblinded by:    {unblinding.user_name} ({unblinding.role})",
        f"At:              {format_time(unblinding.unblinded_at)}",
        f"Reason:          {unblinding.reason}",
        f"Event reference: {unblinding.event_reference}",
        f"Audit entry:     {unblinding.audit_seq}",
        "",
        "This message does not contain the treatment arm.",
        "",
    ]
    notify(session, ctx, UNBLINDED_TOPIC, recipients, subject, lines, participant.screening_number)
    if not recipients:
        log.warning("unblinding of %s: nobody to notify", participant.screening_number)
    return recipients


def alert_stratum_exhausted(session: Session, ctx: TrialContext, stratum_key: str) -> list[str]:
    """Tell the statisticians (those with an e-mail address) that a stratum has no slot left.

    Once per stratum: later refusals in it are audited but alert nobody again.
    """
    about = stratum_key[:64]
    already = session.scalar(
        select(OutboxMessage.id)
        .where(OutboxMessage.topic == STRATUM_EXHAUSTED_TOPIC, OutboxMessage.about == about)
        .limit(1)
    )
    if already is not None:
        return []
    recipients = users_to_notify(session, STATISTICIAN)
    definition = ctx.definition
    subject = f"[{definition.id}] Stratum exhausted: {stratum_key}"
    lines = [
        f"Every slot of stratum {stratum_key} of {definition.id} is used.",
        "Randomisation in this stratum is refused (409 stratum-exhausted) until the list",
        "is extended; the service never improvises a slot.",
        "",
    ]
    notify(session, ctx, STRATUM_EXHAUSTED_TOPIC, recipients, subject, lines, about)
    if not recipients:
        log.warning("stratum %s is exhausted; no statistician has an e-mail address", stratum_key)
    return recipients
