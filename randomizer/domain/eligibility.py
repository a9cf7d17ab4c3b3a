"""Eligibility (URS §2): which of a trial's rules a participant's answers fail.

Standard library only. Answers arrive already type-checked by the HTTP layer; this module
still never lets a boolean stand in for a number or the reverse (``True == 1`` in Python),
so a type mix-up can only make a rule fail, never pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from randomizer.domain.trial import Condition, EligibilityField, EligibilityRule

Answer = int | Decimal | bool

_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class FailedRule:
    """A rule the participant does not satisfy, as reported to the site."""

    id: str
    text: str


def failed_rules(
    rules: Sequence[EligibilityRule], answers: Mapping[str, Answer]
) -> tuple[FailedRule, ...]:
    """Every rule the answers do not satisfy, in rule order; empty when eligible.

    A rule whose field has no answer fails, even for a rule combined with ``any``: an
    unanswered criterion is never taken as met.
    """
    return tuple(
        FailedRule(id=rule.id, text=rule.text)
        for rule in rules
        if not rule_satisfied(rule, answers)
    )


def rule_satisfied(rule: EligibilityRule, answers: Mapping[str, Answer]) -> bool:
    """Whether the answers satisfy one rule (all / any of its conditions hold)."""
    if any(condition.field not in answers for condition in rule.conditions):
        return False
    holds = (condition_holds(condition, answers[condition.field]) for condition in rule.conditions)
    if rule.combine == "all":
        return all(holds)
    if rule.combine == "any":
        return any(holds)
    raise ValueError(f"rule {rule.id}: unknown combination {rule.combine!r}")


def condition_holds(condition: Condition, answer: Answer) -> bool:
    """Whether one answer meets one condition; an answer of the wrong kind never does."""
    if isinstance(condition.value, bool) or isinstance(answer, bool):
        if not (isinstance(condition.value, bool) and isinstance(answer, bool)):
            return False
    elif not (_is_finite_number(answer) and _is_finite_number(condition.value)):
        return False
    return _COMPARE[condition.op](answer, condition.value)


def check_bounds(field: EligibilityField, value: int | Decimal) -> str | None:
    """The message for a number outside the field's inclusive bounds, or None if inside.

    Boolean fields have no bounds, so always None.
    """
    if field.type == "boolean":
        return None
    if not _is_finite_number(value):
        raise TypeError(f"{field.id} takes a finite int or Decimal, got {type(value).__name__}")
    low, high = field.minimum, field.maximum
    if low is not None and high is not None:
        return None if low <= value <= high else f"Must be between {low} and {high}."
    if low is not None and value < low:
        return f"Must be at least {low}."
    if high is not None and value > high:
        return f"Must be at most {high}."
    return None


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, Decimal):
        return value.is_finite()
    return isinstance(value, int)
