"""The HTTP adapter of :mod:`randomizer.services.idempotency` (URS §8 ``Idempotency-Key``).

It reads the header and the body, names the request by its method, path and canonical body,
and renders the service's outcome; the claim, the comparison and the replay are the
service's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from randomizer.api.problems import json_response
from randomizer.roles import Actor
from randomizer.services.idempotency import (
    KEY,
    Outcome,
    canonical_json,
    perform_once_or_refuse,
    request_digest,
)
from randomizer.services.refusals import Refusal
from randomizer.state import app_state

HEADER = "Idempotency-Key"
#: The header in the OpenAPI document of every state-changing POST.
IDEMPOTENCY_HEADER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"^{KEY.pattern}$"},
    "description": "Retry safely: the same key and body return the first response again.",
}


def body_doc(schema: Any) -> dict[str, Any]:
    """``@blp.doc`` arguments of an idempotent POST whose JSON body ``schema`` validates."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "parameters": [IDEMPOTENCY_HEADER],
    }


Action = Callable[[Session], tuple[int, Mapping[str, Any]]]


def run_idempotent(
    operation: str, actor: Actor, action: Action, refusal: Refusal | None = None
) -> Response:
    """Run ``action`` in one transaction; with an Idempotency-Key, at most once per key.

    For an operation whose refusals are audited, ``refusal`` says how: a key refused here
    (malformed, 400; reused with another body, 422) is then recorded like every other
    refusal of the operation, which its service records itself.
    """
    digest = request_digest_if_keyed()
    with app_state().db.transaction() as session:
        outcome = perform_in(session, operation, actor, action, refusal, digest)
    return render(outcome)


def request_digest_if_keyed() -> str:
    """The request's digest if it sends an Idempotency-Key ("" otherwise): computed before
    the transaction, for :func:`perform_in`."""
    return _request_digest() if request.headers.get(HEADER) is not None else ""


def perform_in(
    session: Session,
    operation: str,
    actor: Actor,
    action: Action,
    refusal: Refusal | None,
    digest: str,
) -> Outcome:
    """What :func:`run_idempotent` does in its transaction, in one the caller opened
    (:func:`randomizer.api.auth.authenticated_transaction`); ``digest`` from
    :func:`request_digest_if_keyed`. Render the outcome once the transaction has ended."""
    return perform_once_or_refuse(
        session,
        app_state().ctx,
        actor,
        operation,
        request.headers.get(HEADER),
        HEADER,
        digest,
        lambda: action(session),
        refusal,
    )


def render(outcome: Outcome) -> Response:
    """The HTTP answer of an outcome; a replay says so in ``Idempotent-Replayed``."""
    response = json_response(outcome.status, outcome.text)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _request_digest() -> str:
    """The method, the path and the body (canonical JSON when it parses)."""
    parts = [request.method.encode(), request.path.encode("utf-8", "replace")]
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        # Never read: the action refuses it (a 413 problem, audited where refusals are).
        parts += [b"", b"too large"]
    else:
        try:
            parts.append(canonical_json(raw))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parts.append(raw)
    return request_digest(*parts)
