"""The web pages' server-side sessions (issue 13, R-WEB-2).

A signed-in browser holds a random 256-bit session id in its (signed) cookie; the database
holds only the id's SHA-256, the user, and the times. Every request looks the row up with the
user, so a session ends at once, in every worker, when its user signs out, is deactivated or
gets a new password, when it reaches its absolute expiry, or when it has been idle too long.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from randomizer.models import User, WebSession
from randomizer.roles import Actor
from randomizer.services.context import TrialContext

#: A session's last use is written at most this often (a read-mostly page costs no write).
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lasts: at most ``lifetime`` after sign-in, ``idle`` after last use."""

    lifetime: timedelta = timedelta(hours=12)
    idle: timedelta = timedelta(minutes=30)


def session_digest(session_id: str) -> str:
    """Hex SHA-256 of a session id: what the database stores instead of the id."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def start_session(session: Session, ctx: TrialContext, actor: Actor, policy: SessionPolicy) -> str:
    """Open a web session for a signed-in actor; return its id (for the cookie only).

    The sign-in is audited (``user.signed_in``), never with the id.
    """
    assert actor.user_id is not None
    session_id = secrets.token_urlsafe(32)
    now = ctx.clock()
    session.add(
        WebSession(
            id_sha256=session_digest(session_id),
            user_id=actor.user_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + policy.lifetime,
        )
    )
    session.flush()
    ctx.audit.append(
        session, actor, "user.signed_in", actor.name, {"user": actor.name}, site=actor.site
    )
    return session_id


@dataclass(frozen=True)
class OpenSession:
    """A session that is still valid, and whether its last use should be written now."""

    actor: Actor
    language: str | None
    stale: bool


def open_session(
    session: Session, session_id: str, now: datetime, policy: SessionPolicy
) -> OpenSession | None:
    """The actor of a valid session id, or None (unknown, ended, expired, idle too long, or
    of a deactivated user: one answer for all)."""
    row = session.execute(
        select(WebSession, User)
        .join(User, User.id == WebSession.user_id)
        .where(
            WebSession.id_sha256 == session_digest(session_id),
            WebSession.ended_at.is_(None),
            WebSession.expires_at > now,
            WebSession.last_seen_at > now - policy.idle,
            User.active,
        )
    ).one_or_none()
    if row is None:
        return None
    web_session, user = row
    return OpenSession(
        actor=Actor(name=user.name, role=user.role, site=user.site_id, user_id=user.id),
        language=user.language,
        stale=now - web_session.last_seen_at >= TOUCH_EVERY,
    )


def touch_session(session: Session, session_id: str, now: datetime) -> None:
    """Record a session's use now (it stays open ``idle`` longer)."""
    row = session.get(WebSession, session_digest(session_id))
    if row is not None and row.ended_at is None:
        row.last_seen_at = max(row.last_seen_at, now)
        session.flush()


def end_session(session: Session, ctx: TrialContext, actor: Actor, session_id: str) -> None:
    """Sign out: end the session (audited as ``user.signed_out``)."""
    row = session.get(WebSession, session_digest(session_id))
    if row is None or row.ended_at is not None:
        return
    row.ended_at = ctx.clock()
    session.flush()
    ctx.audit.append(
        session, actor, "user.signed_out", actor.name, {"user": actor.name}, site=actor.site
    )
