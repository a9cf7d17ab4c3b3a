"""``Idempotency-Key`` for state-changing POSTs (URS §8).

The key is scoped to the user and the endpoint. It is claimed in the same transaction as
the change it guards, by an insert that does nothing on conflict: on PostgreSQL a second
request with the same key waits for the first transaction, then finds its stored response;
on SQLite ``BEGIN IMMEDIATE`` serialises them. Two requests with one key never both act.
Records are kept (far longer than the 24 hours URS §8 asks for).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from flask import Response, request
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from randomizer.api.problems import json_response, json_text
from randomizer.errors import IdempotencyKeyReused, Problem, ValidationFailed
from randomizer.models import IdempotencyRecord
from randomizer.roles import Actor
from randomizer.state import app_state

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")

Action = Callable[[Session], tuple[int, dict[str, Any]]]


def run_idempotent(endpoint: str, actor: Actor, action: Action) -> Response:
    """Run ``action`` in one transaction; with an Idempotency-Key, at most once per key.

    ``action(session)`` returns the status and the JSON body of its response. A refusal
    that was recorded in the audit trail is stored and replayed like a success; one that
    changed nothing is not stored (asking again re-evaluates it and changes nothing).
    """
    key = request.headers.get(HEADER)
    db = app_state().db
    if key is None:
        with db.transaction() as session:
            return _answer(*action(session))
    if not _KEY.fullmatch(key):
        raise ValidationFailed(
            {HEADER: ["1 to 255 printable ASCII characters without spaces."]},
            detail="The Idempotency-Key header is not valid.",
            status=400,
        )
    digest = _request_digest()
    with db.transaction() as session:
        record = _claim(session, actor, endpoint, key, digest)
        if record.request_sha256 != digest:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with another request body."
            )
        if record.status_code is not None:
            return _replay(record)
        try:
            status, body = action(session)
        except Problem as problem:
            if problem.recorded:
                _store(session, record, problem.status, problem.body())
            raise
        _store(session, record, status, body)
        return _answer(status, body)


def _request_digest() -> str:
    """SHA-256 of the method, the path and the body (as canonical JSON when it parses)."""
    parts = [request.method.encode(), request.path.encode("utf-8", "replace")]
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        # Never read: the action refuses it (a 413 problem, audited where refusals are).
        parts += [b"", b"too large"]
    else:
        try:
            parts.append(_canonical_body(raw))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parts.append(raw)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _canonical_body(raw: bytes) -> bytes:
    """The body with keys sorted, in a form where no two different JSON values coincide.

    A decimal number becomes ``{"d": "<its text>"}`` and every key of a real object gets a
    ``k`` prefix, so ``70.5``, ``"70.5"`` and ``{"d": "70.5"}`` stay three different bodies
    (with ``default=str`` the first two hashed alike and one replayed the other's response).
    """
    tree = json.loads(
        raw.decode("utf-8"),
        parse_float=lambda text: {"d": text},
        object_pairs_hook=lambda pairs: {f"k{key}": value for key, value in pairs},
    )
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode("ascii")


def _claim(
    session: Session, actor: Actor, endpoint: str, key: str, digest: str
) -> IdempotencyRecord:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(IdempotencyRecord)
        .values(
            user_id=actor.user_id,
            endpoint=endpoint,
            key=key,
            request_sha256=digest,
            created_at=app_state().ctx.clock(),
        )
        .on_conflict_do_nothing(index_elements=["user_id", "endpoint", "key"])
    )
    return session.execute(
        select(IdempotencyRecord).where(
            IdempotencyRecord.user_id == actor.user_id,
            IdempotencyRecord.endpoint == endpoint,
            IdempotencyRecord.key == key,
        )
    ).scalar_one()


def _store(session: Session, record: IdempotencyRecord, status: int, body: dict[str, Any]) -> None:
    record.status_code = status
    record.response_body = json_text(body)
    session.flush()


def _replay(record: IdempotencyRecord) -> Response:
    assert record.status_code is not None and record.response_body is not None
    response = json_response(record.status_code, record.response_body)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _answer(status: int, body: dict[str, Any]) -> Response:
    return json_response(status, json_text(body))
