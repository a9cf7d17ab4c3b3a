"""Dosing and dates (URS §2): kits per visit from weight and visit only; windows inclusive."""

import inspect
import math
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from randomizer.domain import (
    bundled_trial_path,
    kits_for_visit,
    load_trial,
    randomisable_until,
    visit_window,
)

TRIAL = load_trial(bundled_trial_path())
WEEK1 = TRIAL.visit("week1")


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize(
    ("weight_kg", "kits"),
    [
        ("70", 4),  # 70 * 0.5 * 4 / 40 = 3.5
        ("100", 5),  # 5.0
        ("30", 2),  # 1.5
        ("80", 4),  # exactly 4.0: no rounding up
        ("80.01", 5),  # 4.0005
        ("79.99", 4),
        ("70.5", 4),
        ("250", 13),  # 12.5
    ],
)
def test_kits_for_a_four_week_visit(weight_kg, kits):
    assert kits_for_visit(TRIAL, Decimal(weight_kg), WEEK1) == kits


def test_every_dispensing_visit_of_the_bundled_trial_uses_the_same_formula():
    for visit in TRIAL.visits:
        expected = 4 if visit.dispenses else 0
        assert kits_for_visit(TRIAL, Decimal(70), visit) == expected


def test_a_visit_that_dispenses_nothing_gives_no_kits():
    assert kits_for_visit(TRIAL, Decimal(100), TRIAL.visit("week25")) == 0


@pytest.mark.requirement("R-BLIND-1")
def test_kit_count_cannot_depend_on_the_arm():
    assert list(inspect.signature(kits_for_visit).parameters) == ["trial", "weight_kg", "visit"]


@given(weight=st.decimals(min_value=30, max_value=250, places=2))
def test_kit_count_is_the_smallest_that_covers_the_dose(weight):
    grams = weight * TRIAL.grams_per_kg_per_week * WEEK1.dispenses_weeks
    kits = kits_for_visit(TRIAL, weight, WEEK1)
    assert kits * TRIAL.grams_per_kit >= grams
    assert (kits - 1) * TRIAL.grams_per_kit < grams
    assert kits == math.ceil(grams / TRIAL.grams_per_kit)


def test_an_int_weight_is_taken_as_exact():
    assert kits_for_visit(TRIAL, 70, WEEK1) == 4


@pytest.mark.parametrize("weight_kg", [70.0, True, "70"])
def test_weight_must_be_exact(weight_kg):
    with pytest.raises(TypeError):
        kits_for_visit(TRIAL, weight_kg, WEEK1)


@pytest.mark.parametrize("weight_kg", [Decimal(0), Decimal(-70), Decimal("NaN"), Decimal("Inf")])
def test_weight_must_be_positive_and_finite(weight_kg):
    with pytest.raises(ValueError):
        kits_for_visit(TRIAL, weight_kg, WEEK1)


@pytest.mark.requirement("R-CFG")
def test_randomisable_until_screening_day_plus_window_inclusive():
    assert randomisable_until(date(2026, 11, 1), 21) == date(2026, 11, 22)
    assert randomisable_until(date(2026, 12, 20), 21) == date(2027, 1, 10)
    assert randomisable_until(date(2026, 11, 1), 0) == date(2026, 11, 1)


@pytest.mark.requirement("R-CFG")
def test_visit_window_is_its_day_plus_or_minus_the_window_inclusive():
    randomized_on = date(2026, 11, 1)
    assert visit_window(randomized_on, TRIAL.visit("week1"), 3) == (
        date(2026, 10, 29),
        date(2026, 11, 4),
    )
    assert visit_window(randomized_on, TRIAL.visit("week5"), 3) == (
        date(2026, 11, 26),
        date(2026, 12, 2),
    )
    assert visit_window(randomized_on, TRIAL.visit("week25"), 0) == (
        date(2027, 4, 18),
        date(2027, 4, 18),
    )


def test_negative_windows_are_refused():
    with pytest.raises(ValueError):
        randomisable_until(date(2026, 11, 1), -1)
    with pytest.raises(ValueError):
        visit_window(date(2026, 11, 1), WEEK1, -1)
