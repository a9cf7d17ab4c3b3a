"""The resupply simulation over a trial definition (README.md's threat model, R-SHIP).

A site randomises a participant every ``days_between`` days, arms in the order of one of
its strata's lists (two strata interleaved, as a site's prior_ig yes/no participants are),
weights uniform in 40 to 150 kg, every dispensing visit of the schedule kept on its day;
a resupply requested after an allocation arrives ``lead_time_days`` later. Under the
service's own rules (:func:`randomizer.domain.supply.simulate_resupply`), it counts the
insufficient-supply refusals the site would have met. Pure: no database, seeded.
"""

from __future__ import annotations

import random
from decimal import Decimal

from randomizer.domain.dosing import kits_for_visit
from randomizer.domain.lists import generate_lists
from randomizer.domain.supply import SimulationResult, SupplyLevels, simulate_resupply
from randomizer.domain.trial import TrialDefinition

#: The assumptions of "normal operation" (README.md's threat model).
LEAD_TIME_DAYS = 10
PARTICIPANTS = 60
WEIGHTS_KG = (40, 150)


def simulate_site(
    definition: TrialDefinition,
    levels: SupplyLevels,
    *,
    days_between: int,
    seed: int,
    lead_time_days: int = LEAD_TIME_DAYS,
    participants: int = PARTICIPANTS,
) -> SimulationResult:
    """One simulated site of ``definition`` at ``levels``, from a stock at ``target``."""
    rng = random.Random(seed)  # noqa: S311 (a seeded simulation, reproducible on purpose)
    lists = generate_lists(rng.randbytes(32), definition)
    first, second = lists[1], lists[2]
    slots = [(first if i % 2 else second)[i // 2] for i in range(participants)]
    visits = [visit for visit in definition.visits if visit.dispenses]
    kits = []
    for _ in range(participants):
        weight = Decimal(rng.randint(*WEIGHTS_KG))
        kits.append([kits_for_visit(definition, weight, visit) for visit in visits])
    return simulate_resupply(
        [arm.id for arm in definition.arms],
        slots,
        kits,
        [visit.day() for visit in visits],
        levels,
        initial_per_arm=levels.target,
        days_between_randomisations=days_between,
        lead_time_days=lead_time_days,
    )


def simulate_runs(
    definition: TrialDefinition, levels: SupplyLevels, *, runs: int, days_between: int
) -> list[SimulationResult]:
    """``runs`` simulated sites (seeds 0, 1, ...)."""
    return [
        simulate_site(definition, levels, days_between=days_between, seed=seed)
        for seed in range(runs)
    ]
