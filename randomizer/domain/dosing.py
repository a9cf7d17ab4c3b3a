"""Dosing and the calendar of a participant (URS §2): kits per visit, windows.

Standard library only. The kit count depends on weight and visit only, never on the arm,
so that what a site is handed reveals nothing (R-BLIND-1).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, Inexact, localcontext

from randomizer.domain.trial import TrialDefinition, Visit

#: The weights (kg, inclusive) a randomisation or dispensing request may state (URS §8).
WEIGHT_KG_MIN, WEIGHT_KG_MAX = 30, 250


def kits_for_visit(trial: TrialDefinition, weight_kg: Decimal, visit: Visit) -> int:
    """Kits to dispense at ``visit``: ceil(weight * g/kg/week * weeks / grams per kit).

    Computed in exact decimal arithmetic: 70 kg for 4 weeks at 0.5 g/kg/week from 40 g kits
    is exactly 3.5, so 4 kits; no binary rounding can move a count across a whole number.
    """
    if isinstance(weight_kg, bool | float) or not isinstance(weight_kg, Decimal | int):
        raise TypeError("weight_kg must be a Decimal (or an int), never a float")
    weight = Decimal(weight_kg)
    if not weight.is_finite() or weight <= 0:
        raise ValueError(f"weight_kg must be a positive number, got {weight_kg}")
    if not visit.dispenses:
        return 0
    with localcontext() as context:
        # Trap Inexact so a product too long for the context raises instead of rounding;
        # divmod below then gives the exact quotient and remainder.
        context.prec = 60
        context.traps[Inexact] = True
        grams = weight * trial.grams_per_kg_per_week * visit.dispenses_weeks
        whole_kits, remainder = divmod(grams, trial.grams_per_kit)
    return int(whole_kits) + (1 if remainder else 0)


def randomisable_until(screened_on: date, window_days: int) -> date:
    """The last day (inclusive) on which a participant screened then may be randomised."""
    if window_days < 0:
        raise ValueError(f"window_days must not be negative, got {window_days}")
    return screened_on + timedelta(days=window_days)


def visit_window(randomized_on: date, visit: Visit, window_days: int) -> tuple[date, date]:
    """First and last day (both inclusive) on which ``visit`` may take place."""
    if window_days < 0:
        raise ValueError(f"window_days must not be negative, got {window_days}")
    due = randomized_on + timedelta(days=visit.day())
    return due - timedelta(days=window_days), due + timedelta(days=window_days)
