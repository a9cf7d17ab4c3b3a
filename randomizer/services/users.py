"""Users, bearer tokens and the web pages' passwords (R-ROLE, URS §8 authentication).

Tokens are 256-bit random strings shown once; only their SHA-256 is stored. A plain hash is
enough here (unlike passwords, a token has full entropy, so it cannot be guessed from its
hash), and it lets a token be found by an index lookup; the final comparison is constant-time.

Passwords (the web pages, issue 13) are people's choices, so they are stored as Argon2id
hashes (argon2-cffi's defaults, RFC 9106's second recommended profile), slow to guess from a
stolen database. Checking one costs the same whether or not the user exists.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.entry import format_time
from randomizer.config import EMAIL
from randomizer.errors import Conflict, Forbidden, NotFound, SignatureRefused, ValidationFailed
from randomizer.models import ApiToken, Site, User, WebSession
from randomizer.roles import ADMIN, MANAGE_USERS, ROLES, SITE_ROLES, STATISTICIAN, Actor
from randomizer.services.context import TrialContext, utc_now

#: ``\A``/``\Z``, not ``^``/``$``: ``$`` also matches before a trailing newline.
USER_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token: what the database stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    name: str,
    role: str,
    site: str | None,
    email: str | None = None,
    *,
    signature: dict[str, str] | None = None,
) -> tuple[User, str]:
    """Create a user with one role (and one site for site roles); return it and a token.

    ``email`` is where notifications reach them (an investigator hears of every unblinding
    at its site, a statistician of an exhausted stratum).
    """
    MANAGE_USERS.check(actor)
    errors: dict[str, list[str]] = {}
    if email is not None and (len(email) > 254 or not EMAIL.fullmatch(email)):
        errors["email"] = ["Not an e-mail address."]
    if not USER_NAME.fullmatch(name):
        errors["name"] = ["1 to 64 of A-Z a-z 0-9 . _ -."]
    if role not in ROLES:
        errors["role"] = [f"Must be one of: {', '.join(ROLES)}."]
    elif role in SITE_ROLES and not site:
        errors["site"] = [f"A {role} belongs to one site: give it."]
    elif role not in SITE_ROLES and site:
        errors["site"] = [f"A {role} is not tied to a site."]
    if errors:
        raise ValidationFailed(errors)
    if role == STATISTICIAN and actor.role == ADMIN:
        # The only unblinded role is created from the command line, never by an admin.
        raise Forbidden("An admin cannot create a statistician; use the command line.")
    if site is not None and session.get(Site, site) is None:
        raise ValidationFailed({"site": [f"No site {site}."]})
    user = User(
        name=name, role=role, site_id=site, active=True, email=email, created_at=ctx.clock()
    )
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict(f"A user named {name} already exists.") from None
    ctx.audit.append(
        session,
        actor,
        "user.created",
        name,
        {
            "user": name,
            "role": role,
            "site": site,
            **({"email": email} if email else {}),
            **({"signature": signature} if signature else {}),
        },
        site=site,
    )
    return user, _new_token(session, ctx, user)


def deactivate_user(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    name: str,
    *,
    signature: dict[str, str] | None = None,
) -> User:
    """Deactivate a user: every token and web session of theirs stops working at once.

    ``signature`` (from :func:`signature_record`) is recorded in the audit entry.
    """
    MANAGE_USERS.check(actor)
    user = _user(session, name)
    if not user.active:
        raise Conflict(f"User {name} is already deactivated.")
    user.active = False
    user.deactivated_at = ctx.clock()
    _revoke_tokens(session, ctx, user)
    end_sessions_of(session, ctx, user)
    ctx.audit.append(
        session,
        actor,
        "user.deactivated",
        name,
        {"user": name, **({"signature": signature} if signature else {})},
        site=user.site_id,
    )
    return user


def issue_token(session: Session, ctx: TrialContext, actor: Actor, name: str) -> str:
    """A new token for an active user; their older tokens stop working."""
    MANAGE_USERS.check(actor)
    user = _user(session, name)
    if not user.active:
        raise Conflict(f"User {name} is deactivated.")
    _revoke_tokens(session, ctx, user)
    token = _new_token(session, ctx, user)
    # The token itself never enters the audit (URS §5: secrets never in the audit).
    ctx.audit.append(session, actor, "user.token_issued", name, {"user": name}, site=user.site_id)
    return token


#: The web pages' languages (English is the source; ``None`` stored means English).
LANGUAGES = ("en", "fr")


def set_language(
    session: Session, ctx: TrialContext, actor: Actor, name: str, language: str
) -> User:
    """Set the language a user's web pages are shown in (``en`` or ``fr``).

    A user chooses their own; changing another user's needs the right to manage users (an
    admin, the command line). Audited like every change to a user.
    """
    if actor.name != name or actor.user_id is None:
        MANAGE_USERS.check(actor)
    if language not in LANGUAGES:
        raise ValidationFailed({"language": [f"Must be one of: {', '.join(LANGUAGES)}."]})
    user = _user(session, name)
    if not user.active:
        raise Conflict(f"User {name} is deactivated.")
    previous = user.language or "en"
    user.language = language
    session.flush()
    ctx.audit.append(
        session,
        actor,
        "user.language_set",
        name,
        {"user": name, "language": language, "previous": previous},
        site=user.site_id,
    )
    return user


def list_users(session: Session, actor: Actor) -> list[dict[str, object]]:
    """Every user by name: role, site, whether active and whether they have a web password."""
    MANAGE_USERS.check(actor)
    return [
        {
            "name": user.name,
            "role": user.role,
            "site": user.site_id,
            "active": user.active,
            "email": user.email,
            "has_password": user.password_hash is not None,
        }
        for user in session.scalars(select(User).order_by(User.name))
    ]


def authenticate(session: Session, token: str, now: datetime | None = None) -> Actor | None:
    """The actor a bearer token belongs to, or None for an unknown, revoked, expired or
    inactive one (one answer for all: a refusal says nothing about which)."""
    digest = token_digest(token)
    row = (
        session.connection()
        .execute(_TOKEN_ACTOR, {"digest": digest, "now": now or utc_now()})
        .one_or_none()
    )
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return Actor(name=row.name, role=row.role, site=row.site_id, user_id=row.id)


_TOKENS, _USERS = ApiToken.__table__, User.__table__
#: Built once, in Core: every request runs it.
_TOKEN_ACTOR = (
    select(_TOKENS.c.token_sha256, _USERS.c.id, _USERS.c.name, _USERS.c.role, _USERS.c.site_id)
    .join(_USERS, _USERS.c.id == _TOKENS.c.user_id)
    .where(
        _TOKENS.c.token_sha256 == bindparam("digest"),
        _TOKENS.c.revoked_at.is_(None),
        _TOKENS.c.expires_at > bindparam("now", type_=ApiToken.__table__.c.expires_at.type),
        _USERS.c.active.is_(True),
    )
)


def _user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        raise NotFound(f"No user named {name}.")
    return user


def _new_token(session: Session, ctx: TrialContext, user: User) -> str:
    token = secrets.token_urlsafe(32)
    now = ctx.clock()
    session.add(
        ApiToken(
            user_id=user.id,
            token_sha256=token_digest(token),
            created_at=now,
            expires_at=now + ctx.token_lifetime,
        )
    )
    session.flush()
    return token


def _revoke_tokens(session: Session, ctx: TrialContext, user: User) -> None:
    for token in session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = ctx.clock()
    session.flush()


# Passwords ---------------------------------------------------------------------------------

#: Long enough to resist guessing online at the throttle's pace; a passphrase fits.
PASSWORD_MIN, PASSWORD_MAX = 12, 256
_HASHER = PasswordHasher()
#: Verified against when the user does not exist, so that the answer takes as long.
_ABSENT_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def password_problems(password: str) -> list[str]:
    """What is wrong with a new password (empty when it may be used)."""
    problems = []
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        problems.append(f"{PASSWORD_MIN} to {PASSWORD_MAX} characters.")
    if any(ord(char) < 32 or 0xD800 <= ord(char) <= 0xDFFF for char in password):
        problems.append("No control characters.")
    return problems


def set_password(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    name: str,
    password: str,
    *,
    signature: dict[str, str] | None = None,
) -> User:
    """Set (or reset) a user's web password; only its Argon2id hash is kept.

    An admin may reset a blinded user's password, never a statistician's (the command line
    can). The user's open web sessions end: whoever knew the old password is signed out.
    """
    MANAGE_USERS.check(actor)
    problems = password_problems(password)
    if problems:
        raise ValidationFailed({"password": problems})
    user = _user(session, name)
    if user.role == STATISTICIAN and actor.role == ADMIN:
        raise Forbidden("An admin cannot set a statistician's password; use the command line.")
    if not user.active:
        raise Conflict(f"User {name} is deactivated.")
    user.password_hash = _HASHER.hash(password)
    user.password_changed_at = ctx.clock()
    end_sessions_of(session, ctx, user)
    # Neither the password nor its hash enters the audit (URS §5: secrets never in the audit).
    ctx.audit.append(
        session,
        actor,
        "user.password_set",
        name,
        {"user": name, **({"signature": signature} if signature else {})},
        site=user.site_id,
    )
    return user


def check_password(session: Session, name: str, password: str) -> Actor | None:
    """The actor whose user name and password these are, or None (one answer for a wrong
    password, an unknown or deactivated user, or one without a password).

    The hash is verified whatever the outcome, so the time taken says nothing about which.
    """
    user = None
    if USER_NAME.fullmatch(name) and len(password) <= PASSWORD_MAX:
        user = session.scalars(select(User).where(User.name == name)).one_or_none()
    stored = user.password_hash if user is not None and user.password_hash else _ABSENT_HASH
    try:
        matches = _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        matches = False
    if not matches or user is None or not user.active or not user.password_hash:
        return None
    return Actor(name=user.name, role=user.role, site=user.site_id, user_id=user.id)


@dataclass(frozen=True)
class Signature:
    """An electronic signature (21 CFR 11.200, EU Annex 11 §14): the signer re-enters their
    password, and the record says who signed, what it means and when."""

    meaning: str
    #: Never in a repr or a log.
    password: str = field(default="", repr=False)


def signature_record(
    session: Session, ctx: TrialContext, actor: Actor, signature: Signature
) -> dict[str, str]:
    """Check the signer's password and return what the audit entry records of the signature.

    Refused (:class:`SignatureRefused`, 422 naming the ``password`` field) when the
    password is not the actor's.
    """
    if actor.user_id is None or check_password(session, actor.name, signature.password) != actor:
        raise SignatureRefused(
            "This is not your password: the signature is refused.",
            detail="The electronic signature was refused: the password is not the signer's.",
        )
    return {
        "signed_by": actor.name,
        "role": actor.role,
        "meaning": signature.meaning,
        "signed_at": format_time(ctx.clock()),
    }


def end_sessions_of(session: Session, ctx: TrialContext, user: User) -> None:
    """End every open web session of ``user`` (deactivation, a new password)."""
    now = ctx.clock()
    for row in session.scalars(
        select(WebSession).where(WebSession.user_id == user.id, WebSession.ended_at.is_(None))
    ):
        row.ended_at = now
    session.flush()
