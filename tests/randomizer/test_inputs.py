"""A submission validated before the transaction keeps its refusal for the service's turn."""

from __future__ import annotations

import pytest

from randomizer.errors import ValidationFailed
from randomizer.services.inputs import Submission


def positive(value: int) -> int:
    if value <= 0:
        raise ValidationFailed({"n": ["Must be positive."]})
    return value


def test_a_submission_validated_now_validates_once_and_gives_the_value_when_loaded():
    calls: list[int] = []

    def counting(value: int) -> int:
        calls.append(value)
        return positive(value)

    submission = Submission(parsed=3, validate=counting).validated_now()
    assert calls == [3]
    assert submission.load() == 3
    assert calls == [3]


def test_a_submission_validated_now_raises_its_refusal_only_when_loaded():
    submission = Submission(parsed=-1, validate=positive).validated_now()  # no raise yet
    with pytest.raises(ValidationFailed) as refused:
        submission.load()
    assert refused.value.extra["errors"] == {"n": ["Must be positive."]}


def test_an_unparseable_submission_validated_now_keeps_its_own_refusal():
    unparseable = ValidationFailed({"body": ["Not JSON."]})
    submission = Submission(parsed=None, validate=positive, unparseable=unparseable)
    with pytest.raises(ValidationFailed) as refused:
        submission.validated_now().load()
    assert refused.value is unparseable
