"""Domain errors. Each is an RFC 9457 problem with a status; nothing else builds error bodies.

The HTTP layer (``randomizer.api.problems``) turns these into ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class Problem(Exception):
    """A refusal with an HTTP status and a problem type from URS §8.

    ``recorded`` is set once the refusal's own audit entry has been written in the current
    transaction (:func:`randomizer.services.refusals.refusals_audited`): the transaction then
    commits that entry (and nothing else, the work having been rolled back to a savepoint)
    before the error reaches the caller. ``audited`` names the extras that the refusal's
    audit entry records besides its reason.
    """

    status: ClassVar[int] = 400
    type_name: ClassVar[str] = "validation"
    title: ClassVar[str] = "Bad request"
    audited: ClassVar[tuple[str, ...]] = ()

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.recorded = False

    @property
    def type(self) -> str:
        """The problem type URI, relative as URS §8 gives it."""
        return f"/problems/{self.type_name}"

    def body(self) -> dict[str, Any]:
        """The RFC 9457 problem details object."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class Unauthorized(Problem):
    status, type_name, title = 401, "unauthorized", "Unauthorized"


class Forbidden(Problem):
    status, type_name, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, type_name, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, type_name, title = 409, "conflict", "Conflict"


class AlreadyRandomized(Problem):
    status, type_name, title = 409, "already-randomized", "Already randomised"
    audited = ("randomization_number",)


class AlreadyDispensed(Problem):
    """The visit's kits were given already: the answer names them (URS §8)."""

    status, type_name, title = 409, "conflict", "Already dispensed"
    audited = ("visit", "kits")


class InsufficientSupply(Problem):
    status, type_name, title = 409, "insufficient-supply", "Insufficient supply"


class StratumExhausted(Problem):
    status, type_name, title = 409, "stratum-exhausted", "Stratum exhausted"


class ValidationFailed(Problem):
    """Invalid input: ``errors`` maps dotted field paths to lists of messages."""

    status, type_name, title = 422, "validation", "Invalid input"

    def __init__(
        self,
        errors: Mapping[str, Sequence[str]],
        detail: str = "The request is not valid.",
        status: int | None = None,
    ) -> None:
        super().__init__(detail, errors={k: list(v) for k, v in errors.items()})
        if status is not None:
            self.status = status  # 400 for unparseable JSON, 413 for an oversized body


class SignatureRefused(ValidationFailed):
    """An electronic signature whose password is not the signer's (422, on the ``password``
    field): a validation failure like any other, which the web pages also count against the
    client's failed sign-ins (:mod:`randomizer.services.throttling`)."""

    title = "Signature refused"

    def __init__(self, message: str, detail: str) -> None:
        super().__init__({"password": [message]}, detail=detail)


class Ineligible(Problem):
    status, type_name, title = 422, "ineligible", "Not eligible"


class ScreeningWindow(Problem):
    status, type_name, title = 422, "screening-window", "Outside the screening window"


class VisitWindow(Problem):
    status, type_name, title = 422, "visit-window", "Outside the visit's window"


class MethodNotAllowed(Problem):
    """A method the resource does not have (405); its audit entry names it as refused."""

    status, type_name, title = 405, "method-not-allowed", "Method not allowed"


class IdempotencyKeyReused(Problem):
    status, type_name, title = 422, "idempotency-key-reused", "Idempotency key reused"


class TooManyRequests(Problem):
    """Too many failed authentications from one client (429): ``retry_after`` seconds until
    its window lets it try again (the ``Retry-After`` header)."""

    status, type_name, title = 429, "too-many-requests", "Too many failed authentications"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ServiceUnavailable(Problem):
    """The database did not answer or could not commit: nothing was changed (503)."""

    status, type_name, title = 503, "unavailable", "Service unavailable"


class CommitOutcomeUnknown(ServiceUnavailable):
    """The connection was lost during COMMIT: the change may or may not have been made (503).

    Never retried by the service: only the caller can ask again, and the same
    Idempotency-Key then replays the first answer if the change was made, or makes it once.
    """

    type_name, title = "outcome-unknown", "Outcome unknown"


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Flatten marshmallow's nested messages to URS §8's ``{"a.b": ["..."]}``.

    ``{"eligibility": {"age_years": ["Not a valid integer."]}}`` becomes
    ``{"eligibility.age_years": ["Not a valid integer."]}``; list indices become path parts.
    """
    flat: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            for sub_path, sub_messages in flatten_errors(value, path).items():
                flat.setdefault(sub_path, []).extend(sub_messages)
    elif isinstance(messages, list | tuple):
        if all(isinstance(item, str) for item in messages):
            flat[prefix or "_schema"] = list(messages)
        else:
            for item in messages:
                for sub_path, sub_messages in flatten_errors(item, prefix).items():
                    flat.setdefault(sub_path, []).extend(sub_messages)
    else:
        flat[prefix or "_schema"] = [str(messages)]
    return flat
