"""At most once per key: ``Idempotency-Key`` for state-changing requests (URS §8).

A key is scoped to the user and the operation. It is claimed in the same transaction as the
change it guards, by an insert that does nothing on conflict: on PostgreSQL a second request
with the same key waits for the first transaction, then finds its stored outcome; on SQLite
``BEGIN IMMEDIATE`` serialises them. Two requests with one key never both act. Records are
kept (far longer than the 24 hours URS §8 asks for).

The outcome is stored as the exact text the caller was sent (:func:`randomizer.rendering.
render_json`), so a replay is byte for byte the first answer. The API and the web pages are
thin adapters over :func:`perform_once`; neither stores or compares anything itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from randomizer.errors import IdempotencyKeyReused, Problem, ValidationFailed
from randomizer.models import IdempotencyRecord
from randomizer.rendering import render_json
from randomizer.roles import Actor
from randomizer.services.context import TrialContext
from randomizer.services.refusals import Refusal, record_refusal

#: 1 to 255 printable ASCII characters without spaces.
KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")

Action = Callable[[], tuple[int, Mapping[str, Any]]]


@dataclass(frozen=True)
class Outcome:
    """What the caller is told: a status and the JSON text of the answer."""

    status: int
    text: str
    replayed: bool = False


def check_key(key: str, field: str) -> None:
    """Refuse (400) a key that is not 1 to 255 printable ASCII characters without spaces."""
    if not KEY.fullmatch(key):
        raise ValidationFailed(
            {field: ["1 to 255 printable ASCII characters without spaces."]},
            detail=f"The {field} is not valid.",
            status=400,
        )


def request_digest(*parts: bytes) -> str:
    """SHA-256 of the parts that make two requests the same (length-prefixed, in order)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def canonical_json(raw: bytes) -> bytes:
    """A JSON body with keys sorted, in a form where no two different JSON values coincide.

    A decimal number becomes ``{"d": "<its text>"}`` and every key of a real object gets a
    ``k`` prefix, so ``70.5``, ``"70.5"`` and ``{"d": "70.5"}`` stay three different bodies
    (with ``default=str`` the first two hashed alike and one replayed the other's response).
    Raises ValueError (or UnicodeDecodeError, RecursionError) for a body that is not JSON.
    """
    tree = json.loads(
        raw.decode("utf-8"),
        parse_float=lambda text: {"d": text},
        object_pairs_hook=lambda pairs: {f"k{key}": value for key, value in pairs},
    )
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode("ascii")


def perform_once(
    session: Session,
    clock: Callable[[], datetime],
    actor: Actor,
    operation: str,
    key: str | None,
    digest: str,
    action: Action,
) -> Outcome:
    """Run ``action`` in ``session``'s transaction; with a key, at most once for that key.

    ``action()`` returns the status and the JSON body of its answer. A refusal that was
    recorded in the audit trail (see :mod:`randomizer.services.refusals`) is stored and
    replayed like a success; one that changed nothing is not stored, so asking again
    re-evaluates it and still changes nothing. ``digest`` identifies the request (see
    :func:`request_digest`): the same key with another digest is refused (422).
    """
    if key is None:
        status, body = action()
        return Outcome(status, render_json(body))
    record = _claim(session, clock, actor, operation, key, digest)
    if record.request_sha256 != digest:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with another request body."
        )
    if record.status_code is not None and record.response_body is not None:
        return Outcome(record.status_code, record.response_body, replayed=True)
    try:
        status, body = action()
    except Problem as problem:
        if problem.recorded:
            _store(session, record, problem.status, render_json(problem.body()))
        raise
    text = render_json(body)
    _store(session, record, status, text)
    return Outcome(status, text)


def perform_once_or_refuse(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    operation: str,
    key: str | None,
    key_field: str,
    digest: str,
    action: Action,
    refusal: Refusal | None = None,
) -> Outcome:
    """:func:`perform_once` after checking ``key`` (named ``key_field`` in a refusal), for
    the API's ``Idempotency-Key`` and the web pages' one-time form keys alike.

    For an operation whose refusals are audited, ``refusal`` says how: a key refused here
    (malformed, 400; reused with another request, 422) is then recorded like every other
    refusal of the operation, which its service records itself.
    """
    try:
        if key is not None:
            check_key(key, key_field)
        return perform_once(session, ctx.clock, actor, operation, key, digest, action)
    except Problem as problem:
        if refusal is not None:
            record_refusal(session, ctx, actor, refusal, problem, site=actor.site)
        raise


def _claim(
    session: Session,
    clock: Callable[[], datetime],
    actor: Actor,
    operation: str,
    key: str,
    digest: str,
) -> IdempotencyRecord:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(IdempotencyRecord)
        .values(
            user_id=actor.user_id,
            endpoint=operation,
            key=key,
            request_sha256=digest,
            created_at=clock(),
        )
        .on_conflict_do_nothing(index_elements=["user_id", "endpoint", "key"])
    )
    return session.execute(
        select(IdempotencyRecord).where(
            IdempotencyRecord.user_id == actor.user_id,
            IdempotencyRecord.endpoint == operation,
            IdempotencyRecord.key == key,
        )
    ).scalar_one()


def _store(session: Session, record: IdempotencyRecord, status: int, text: str) -> None:
    record.status_code = status
    record.response_body = text
    session.flush()
