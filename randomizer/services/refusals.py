"""One audited refusal for every operation whose refusals the audit trail must show.

Randomisation, dispensing, kit status changes and unblinding run their work inside
:func:`refusals_audited`. A refusal (a :class:`~randomizer.errors.Problem`) rolls the work
back to a savepoint (randomisation, which refuses only before it writes, needs none),
appends one refusal entry in its place and marks the problem ``recorded``;
:meth:`randomizer.db.Database.transaction` then commits that entry, and nothing else, before
the refusal reaches the caller. Any other exception rolls back
everything, the refusal entry included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from randomizer.db import refusing_before_writing, savepoint
from randomizer.errors import Problem
from randomizer.roles import Actor
from randomizer.services.context import TrialContext

_AUDITING = "sealroom.refusals.auditing"
#: At most this many field paths of an invalid request are recorded.
MAX_FIELDS = 50


@dataclass(frozen=True)
class Refusal:
    """How an operation's refusals are recorded: the action, and the identifier as sent.

    ``subject`` is the identifier as the caller sent it. With a ``pattern``, one that does
    not match is not used as the entry's subject (it may be anything a client typed): its
    printable form is recorded under ``field`` instead, and under ``field`` always with
    ``record_as_sent``.
    """

    action: str
    subject: str | None
    pattern: re.Pattern[str] | None = None
    field: str = "subject"
    record_as_sent: bool = False

    def entry_subject_and_data(self) -> tuple[str | None, dict[str, Any]]:
        """The audit entry's subject, and what the data records of the identifier."""
        if self.subject is None or self.pattern is None:
            return self.subject, {}
        well_formed = self.pattern.fullmatch(self.subject) is not None
        data = (
            {self.field: printable(self.subject)} if not well_formed or self.record_as_sent else {}
        )
        return (self.subject if well_formed else None), data


def record_refusal(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    refusal: Refusal,
    problem: Problem,
    *,
    site: str | None,
    data: Mapping[str, Any] | None = None,
) -> None:
    """Append ``problem``'s refusal entry and mark it recorded, unless this transaction's
    service has recorded it already (an adapter calls this for every refusal it sees)."""
    if problem.recorded:
        return
    _append(session, ctx, actor, refusal, problem, site=site, data=data)


def _append(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    refusal: Refusal,
    problem: Problem,
    *,
    site: str | None,
    data: Mapping[str, Any] | None,
) -> None:
    subject, about = refusal.entry_subject_and_data()
    ctx.audit.append(
        session,
        actor,
        refusal.action,
        subject,
        {**refusal_data(problem), **about, **(data or {})},
        site=site,
    )
    problem.recorded = True


@contextmanager
def refusals_audited(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    action: str | Refusal,
    subject: str | None = None,
    *,
    site: str | None,
    pattern: re.Pattern[str] | None = None,
    field: str = "subject",
    record_as_sent: bool = False,
    data: Mapping[str, Any] | None = None,
    on_refusal: Callable[[Problem], None] | None = None,
    refuses_before_writing: bool = False,
) -> Iterator[None]:
    """Run the block in a savepoint; audit a refusal from it as ``action`` on ``subject``.

    With ``refuses_before_writing``, the block makes every check that can refuse before its
    first write, and runs without a savepoint (:func:`randomizer.db.refusing_before_writing`:
    a refusal after a write rolls everything back instead of being recorded).

    ``action`` is a :class:`Refusal`, or its action name with the ``subject``, ``pattern``,
    ``field`` and ``record_as_sent`` it would hold. ``data`` is added to what the refusal
    itself says (its reason and status, the failed rule ids, the invalid field paths and the
    extras its type declares auditable). ``on_refusal(refusal)`` runs after the refusal's
    entry, in the transaction that commits it (an alert written to the outbox, say), since
    the block's work is undone.
    """
    refusal = (
        action
        if isinstance(action, Refusal)
        else Refusal(action, subject, pattern, field, record_as_sent)
    )
    if session.info.get(_AUDITING):
        # Inside another audited block: the outermost one records (its savepoint would
        # otherwise undo this one's entry).
        yield
        return
    session.info[_AUDITING] = True
    try:
        with refusing_before_writing(session) if refuses_before_writing else savepoint(session):
            yield
    except Problem as problem:
        _append(session, ctx, actor, refusal, problem, site=site, data=data)
        if on_refusal is not None:
            on_refusal(problem)
        raise
    finally:
        session.info.pop(_AUDITING, None)


def refusal_data(refusal: Problem) -> dict[str, Any]:
    """What the audit trail records of a refusal: never anything from which an arm follows."""
    data: dict[str, Any] = {"reason": refusal.type_name, "status": refusal.status}
    if "failed_rules" in refusal.extra:
        data["failed_rules"] = [rule["id"] for rule in refusal.extra["failed_rules"]]
    if "errors" in refusal.extra:
        # Field paths may echo keys a client invented: keep them short and printable.
        data["fields"] = sorted({printable(path) for path in refusal.extra["errors"]})[:MAX_FIELDS]
    for name in refusal.audited:
        if name in refusal.extra:
            data[name] = refusal.extra[name]
    return data


def printable(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, anything but printable ASCII replaced by ``?``."""
    cleaned = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
