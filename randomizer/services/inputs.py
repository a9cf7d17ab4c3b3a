"""Input as a client submitted it: parsed, not yet validated.

A service that must check the caller's role, visibility and state before it looks at the
input (URS §8's order) receives a :class:`Submission` and calls :meth:`Submission.load` when
its turn comes. The API and the web pages build one from a JSON body or a form; neither
the service nor the validation reads the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from randomizer.errors import Problem

T = TypeVar("T")


@dataclass(frozen=True)
class Submission(Generic[T]):
    """Parsed input and the validation to run on it, or the refusal of unparseable input."""

    parsed: Any
    validate: Callable[[Any], T]
    #: Set when the input could not even be parsed (not JSON, too large): raised by load().
    unparseable: Problem | None = None

    def load(self) -> T:
        """The validated input; raises the refusal (a Problem) of invalid input."""
        if self.unparseable is not None:
            raise self.unparseable
        return self.validate(self.parsed)

    def validated_now(self) -> Submission[T]:
        """This submission, validated now (before any transaction or lock): its
        :meth:`load` then gives the result, or raises the refusal, when the service asks,
        so the service's order of checks is unchanged."""
        try:
            value = self.load()
        except Problem as problem:
            return Submission(parsed=self.parsed, validate=self.validate, unparseable=problem)
        return Submission(parsed=self.parsed, validate=lambda _parsed: value)

    @classmethod
    def of(cls, value: T) -> Submission[T]:
        """Input that is already validated (the command line, tests)."""
        return cls(parsed=value, validate=lambda parsed: parsed)
