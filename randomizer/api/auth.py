"""Bearer-token authentication and role checks (URS §8: token, then role).

Repeated failures from one client are slowed down, then refused with 429, by the service
:mod:`randomizer.services.throttling`; a valid token is always served.

Endpoints whose refusals must themselves be audited (randomisation, unblinding) use
:func:`authenticated` only and let their service check the role, so that a 403 there is
recorded in the audit trail too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import g, request
from sqlalchemy.orm import Session

from randomizer.errors import Unauthorized
from randomizer.roles import Actor, Permission
from randomizer.services.throttling import INVALID_DETAIL, MALFORMED_DETAIL, TokenRefused
from randomizer.services.users import authenticate
from randomizer.state import app_state

F = TypeVar("F", bound=Callable[..., Any])

# token_urlsafe(32) gives 43 characters; allow some room, refuse anything absurd early.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9_-]{20,128})")


def current_actor() -> Actor:
    """The authenticated actor of this request (after :func:`authenticated`)."""
    return g.actor


def _authenticate_request() -> Actor:
    """The actor of the request's bearer token (401 without one; 429 for a client that sent
    too many invalid ones: :mod:`randomizer.services.throttling`)."""
    actor = app_state().throttle.authenticate(request.remote_addr, bearer_token())
    g.actor = actor
    return actor


def bearer_token() -> str:
    """The request's bearer token, as sent: 401 without one, and for a credential that is
    not a well-formed bearer token (counted as a failure, as :func:`authenticated` does).

    Nothing here says whether the token is valid: :func:`authenticated_transaction` does."""
    header = request.headers.get("Authorization")
    if header is None:
        # Nothing presented is no guess: refused without counting (or any database work).
        raise Unauthorized(MALFORMED_DETAIL)
    match = _BEARER.fullmatch(header)
    if match is None:
        app_state().throttle.refuse(request.remote_addr, MALFORMED_DETAIL)
    return match.group(1)


@contextmanager
def authenticated_transaction(token: str) -> Iterator[tuple[Session, Actor]]:
    """The request's writing transaction and the actor of ``token`` (:func:`bearer_token`),
    looked up in it.

    For the randomisation, the busiest request: one transaction on one connection instead
    of a read-only one for the token and then the writing one (on PostgreSQL four round
    trips fewer). The lookup is the same as :func:`authenticated`'s and reads the token's
    and its user's rows as they are at that moment, so a revocation or a deactivation takes
    effect at once. A token that is not valid rolls the transaction back, before anything
    else has run in it, and is then refused and counted as :func:`authenticated` does it.
    """
    state = app_state()
    try:
        with state.db.transaction() as session:
            g.actor = actor = state.throttle.actor_in(session, token)
            yield session, actor
    except TokenRefused:
        state.throttle.refuse(request.remote_addr, INVALID_DETAIL)


def optional_actor() -> Actor | None:
    """The actor of a valid bearer token sent with this request, or None (never raises).

    An invalid token here is not counted as a failure: nothing is refused for it.
    """
    match = _BEARER.fullmatch(request.headers.get("Authorization", ""))
    if match is None:
        return None
    state = app_state()
    with state.db.reading() as session:
        return authenticate(session, match.group(1), state.ctx.clock())


def authenticated(view: F) -> F:
    """Require a valid bearer token (401 otherwise)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _authenticate_request()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def requires(permission: Permission) -> Callable[[F], F]:
    """Require a valid token (401) of a role ``permission`` allows (403), before anything else.

    The view's body, its arguments' parsing included, runs only for an allowed role.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            permission.check(_authenticate_request())
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
