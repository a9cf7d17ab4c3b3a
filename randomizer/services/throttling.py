"""Repeated authentication failures from one client are slowed down, then refused (issue 7).

A client (its address: :func:`client_key`) whose bearer tokens fail to authenticate has its
failures counted in the database (``auth_failure``), so every worker and every server process
sees one count, on SQLite as on PostgreSQL, with no server of its own. The count lives in a
fixed window that begins at the client's first failure and ends ``window`` later, when the
count starts again from nothing. In a window:

* the first ``free_failures`` are answered 401 at once (a mistyped or expired token);
* the next ones up to ``max_failures`` are answered 401 after a delay, 0.25 s doubling up to
  2 s; a server process holds at most ``max_delayed`` requests in a delay at once, and
  answers any more 429 at once, so a flood cannot tie up its threads;
* beyond, 429 ``too-many-requests`` with ``Retry-After`` (the seconds left in the window),
  from a read alone: nothing more is written for the window, so a flood costs no writes.
  The failure that first goes beyond is recorded in the audit trail (``auth.throttled``:
  the client, its count and window; never a token).

A valid token is always served, whatever its client's count: nothing here ever locks anyone
out. Many users may share an address (a hospital's NAT, a proxy that forwards no address):
an attacker there must not be able to keep an investigator from an emergency unblinding. The
defence against guessing a token is the token itself (256 random bits); the throttle makes
guessing cost time and shows it in the audit trail.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from audit.entry import format_time
from randomizer.config import Settings
from randomizer.db import Database
from randomizer.errors import TooManyRequests, Unauthorized
from randomizer.locks import lock_auth_failure
from randomizer.models import AuthFailure
from randomizer.roles import SYSTEM, Actor
from randomizer.services.context import TrialContext
from randomizer.services.users import authenticate

log = logging.getLogger(__name__)

THROTTLED_ACTION = "auth.throttled"
#: The 401's detail for a credential that is not a bearer token at all.
MALFORMED_DETAIL = "Send a valid bearer token: Authorization: Bearer <token>."
#: The one 401 detail for every well-formed token that is not valid (it says nothing of why).
INVALID_DETAIL = "The token is unknown, revoked, expired or belongs to a deactivated user."
THROTTLED_DETAIL = (
    "Too many failed authentications from this client; try again after Retry-After "
    "seconds. A valid token is always served."
)
#: The key of a client whose address is not an IP address (none, or a Unix socket's).
UNKNOWN_CLIENT = "unknown"


def client_key(address: str | None) -> str:
    """Whom failures are counted for: an IPv4 address, or an IPv6 address's /64 network.

    One host commonly holds a whole IPv6 /64 and may rotate through it, so it counts as one
    client. Anything that is not an IP address counts as one client, ``unknown``.
    """
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class ThrottlePolicy:
    """How failures are counted and answered (settings ``SEALROOM_AUTH_*``)."""

    window: timedelta
    free_failures: int
    max_failures: int
    max_delayed: int
    first_delay: float = 0.25
    longest_delay: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottlePolicy:
        """The policy the settings give."""
        return cls(
            window=timedelta(seconds=settings.auth_window_seconds),
            free_failures=settings.auth_free_failures,
            max_failures=settings.auth_max_failures,
            max_delayed=settings.auth_max_delayed,
        )

    def delay(self, failures: int) -> float:
        """Seconds the 401 to a client's ``failures``-th failure in its window waits."""
        if failures <= self.free_failures:
            return 0.0
        return min(self.first_delay * 2 ** (failures - self.free_failures - 1), self.longest_delay)


class TokenRefused(Exception):
    """A bearer token looked up in a request's own transaction is not valid (not a
    :class:`~randomizer.errors.Problem`: the transaction rolls back, then
    :meth:`AuthThrottle.refuse` counts the failure and refuses it)."""


class AuthThrottle:
    """Authenticates bearer tokens, counting each client's failures; one per server process.

    ``sleep`` is how a delay is waited (``time.sleep``; a test passes a clock it controls).
    """

    def __init__(
        self,
        database: Database,
        ctx: TrialContext,
        policy: ThrottlePolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.database = database
        self.ctx = ctx
        self.policy = policy
        self.sleep = sleep
        self._delayed = (
            threading.BoundedSemaphore(policy.max_delayed) if policy.max_delayed else None
        )
        self._pruned_at: datetime | None = None

    def authenticate(self, address: str | None, token: str | None) -> Actor:
        """The actor of ``token`` sent from ``address``; else count a failure and refuse it.

        ``token`` is None for a credential that is not a well-formed bearer token (counted
        too). Raises :class:`Unauthorized` (401, perhaps after a delay) or
        :class:`TooManyRequests` (429). A valid token is served whatever the count.
        """
        now = self.ctx.clock()
        return self.check(
            address,
            lambda session: authenticate(session, token, now) if token is not None else None,
            MALFORMED_DETAIL if token is None else INVALID_DETAIL,
        )

    def check(
        self, address: str | None, credential: Callable[[Session], Actor | None], refusal: str
    ) -> Actor:
        """The actor ``credential`` finds (in a read-only session); else count a failure of
        the client at ``address`` and refuse it: :class:`Unauthorized` with ``refusal`` (perhaps
        after a delay) or :class:`TooManyRequests`. The web pages' sign-in uses it with a
        password, so bearer tokens and passwords share one count per client.
        """
        with self.database.reading() as session:
            # The same lookup, whatever the client's count: the refusal below does no work
            # that depends on the credential.
            actor = credential(session)
            if actor is not None:
                return actor
        self.refuse(address, refusal)

    def failed(self, address: str | None) -> int | None:
        """Count one failed authentication of the client at ``address`` and wait its delay.

        Returns None, or the seconds until its window ends (``Retry-After``) if the client is
        beyond the limit (then nothing is written: a flood costs a read). :meth:`check` calls
        it for a credential that failed; the web pages for a refused electronic signature,
        so that a password guessed there counts like one guessed at the sign-in.
        """
        client = client_key(address)
        now = self.ctx.clock()
        with self.database.reading() as session:
            retry_after = self._throttled_for(session.get(AuthFailure, client), now)
        if retry_after is None:
            with self.database.transaction() as session:
                failures, retry_after = self._count_failure(session, client, now)
            self._prune(now)
            delay = self.policy.delay(failures)
            if retry_after is None and delay:
                retry_after = self._wait(delay)
        return retry_after

    def actor_in(self, session: Session, token: str) -> Actor:
        """The actor of ``token``, looked up in ``session``: the request's own writing
        transaction, so that a request needs one transaction and one connection, not two.

        Raises :class:`TokenRefused` for a token that is not valid: the caller lets it roll
        that transaction back, then calls :meth:`refuse`.
        """
        actor = authenticate(session, token, self.ctx.clock())
        if actor is None:
            raise TokenRefused
        return actor

    def refuse(self, address: str | None, refusal: str) -> NoReturn:
        """Count a failed authentication of the client at ``address`` (a credential that
        :meth:`check` or :meth:`actor_in` refused) and refuse it: :class:`Unauthorized` with
        ``refusal`` (perhaps after a delay) or :class:`TooManyRequests`."""
        retry_after = self.failed(address)
        if retry_after is not None:
            raise TooManyRequests(THROTTLED_DETAIL, retry_after)
        raise Unauthorized(refusal)

    def _throttled_for(self, record: AuthFailure | None, now: datetime) -> int | None:
        """Seconds until ``record``'s window ends if it is beyond the limit, else None."""
        if record is None or record.failures <= self.policy.max_failures:
            return None
        ends = record.window_started_at + self.policy.window
        if ends <= now:
            return None
        return max(1, math.ceil((ends - now).total_seconds()))

    def _count_failure(
        self, session: Session, client: str, now: datetime
    ) -> tuple[int, int | None]:
        """Count one failure; the count, and the seconds to wait if now beyond the limit."""
        record = lock_auth_failure(session, client, now)
        if record.window_started_at + self.policy.window <= now:
            record.failures, record.window_started_at = 0, now
        record.failures += 1
        session.flush()
        retry_after = self._throttled_for(record, now)
        if record.failures == self.policy.max_failures + 1:
            # Once per window: later failures are refused from a read, never counted.
            ends = record.window_started_at + self.policy.window
            self.ctx.audit.append(
                session,
                SYSTEM,
                THROTTLED_ACTION,
                client,
                {
                    "client": client,
                    "failures": record.failures,
                    "window_seconds": int(self.policy.window.total_seconds()),
                    "window_started_at": format_time(record.window_started_at),
                    "until": format_time(ends),
                },
            )
            log.warning(
                "authentication throttled: client %s, %d failures since %s",
                client,
                record.failures,
                format_time(record.window_started_at),
            )
        return record.failures, retry_after

    def _wait(self, delay: float) -> int | None:
        """Wait ``delay`` seconds; None, or a Retry-After if this process holds too many."""
        if self._delayed is None or not self._delayed.acquire(blocking=False):
            return max(1, math.ceil(delay))
        try:
            self.sleep(delay)
        finally:
            self._delayed.release()
        return None

    def _prune(self, now: datetime) -> None:
        """Forget clients whose window ended a window ago (at most once a window a process).

        A failure here never changes an answer: the rows are only kept longer.
        """
        if self._pruned_at is not None and now - self._pruned_at < self.policy.window:
            return
        self._pruned_at = now
        try:
            with self.database.transaction() as session:
                session.execute(
                    delete(AuthFailure).where(
                        AuthFailure.window_started_at < now - 2 * self.policy.window
                    )
                )
        except SQLAlchemyError as error:
            log.warning("could not prune old authentication failures: %s", type(error).__name__)
