"""Supply rules (R-SHIP, R-KIT-3): balanced depot stock, resupply levels, expiry: pure functions.

The service (:mod:`randomizer.services.shipments`) and the resupply simulation
(:func:`simulate_resupply`) use the same rules, so the simulation shows what the service
does. Nothing here touches a database.

- A lot and a shipment chosen by count are balanced across arms by the trial's ratio
  (:func:`balanced_counts`).
- Resupply: when any arm's dispensable stock at a site falls below ``trigger`` after an
  allocation, the site is resupplied so that every arm is back at ``target``
  (:func:`resupply_quantities`, counting what is already on its way).
- A kit is dispensable when its blinded expiry lies after today plus the do-not-dispense
  window (:func:`dispensable_after`); the earliest expiry goes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta


@dataclass(frozen=True)
class SupplyLevels:
    """Resupply levels of one site, in dispensable kits per arm; ``trigger`` 0: never."""

    trigger: int = 0
    target: int = 0


@dataclass(frozen=True)
class SupplyPlan:
    """The trial definition's ``[supply]``: default levels and per-site overrides."""

    default: SupplyLevels = field(default_factory=SupplyLevels)
    #: ``(site id, levels)`` pairs: a tuple, so that the definition stays hashable.
    sites: tuple[tuple[str, SupplyLevels], ...] = ()

    def levels(self, site_id: str) -> SupplyLevels:
        """The levels that apply at ``site_id``."""
        return next((levels for site, levels in self.sites if site == site_id), self.default)


def balanced_counts(total: int, ratios: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` kits across arms by ``ratios``; ValueError unless it splits exactly."""
    unit = sum(ratios.values())
    if total <= 0 or total % unit:
        raise ValueError(f"the count must be a positive multiple of {unit} (the arms' ratio)")
    return {arm: total // unit * ratio for arm, ratio in ratios.items()}


def needs_resupply(dispensable: Mapping[str, int], levels: SupplyLevels) -> bool:
    """True when any arm's dispensable stock is below the site's trigger level."""
    return any(count < levels.trigger for count in dispensable.values())


def resupply_quantities(
    dispensable: Mapping[str, int], in_transit: Mapping[str, int], levels: SupplyLevels
) -> dict[str, int]:
    """Kits of each arm that bring every arm back to ``target`` (what is on its way counts)."""
    return {
        arm: max(0, levels.target - count - in_transit.get(arm, 0))
        for arm, count in dispensable.items()
    }


def dispensable_after(today: date, do_not_dispense_days: int) -> date:
    """A kit may be allocated today only if it expires after this day (R-KIT-3)."""
    return today + timedelta(days=do_not_dispense_days)


def expiry_month(expires_on: date) -> str:
    """The month a kit expires in, as ``YYYY-MM`` (inventory counts by month)."""
    return f"{expires_on.year:04d}-{expires_on.month:02d}"


def days_of_supply(dispensable: int, kits_dispensed: int, days: int) -> int | None:
    """Whole days the stock lasts at the rate of ``kits_dispensed`` over ``days``; None: no
    dispensing in that time (no rate to project)."""
    if kits_dispensed <= 0:
        return None
    return math.floor(dispensable * days / kits_dispensed)


# The simulation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    """What a simulated site met over a trial: refusals, shipments, kits left at the end."""

    randomised: int
    dispensings: int
    refusals: int
    shipments: int
    lowest_stock: int


def simulate_resupply(
    arms: Sequence[str],
    slots: Sequence[str],
    kits_by_participant: Sequence[Sequence[int]],
    visit_days: Sequence[int],
    levels: SupplyLevels,
    *,
    initial_per_arm: int,
    days_between_randomisations: int,
    lead_time_days: int,
) -> SimulationResult:
    """One site over a trial, day by day, under the service's supply rules.

    Participant i is randomised on day ``i * days_between_randomisations`` with the arm of
    ``slots[i]`` and takes ``kits_by_participant[i][v]`` kits at visit v, ``visit_days[v]``
    days after randomisation (visit 0, day 0, is the randomisation itself). Before each
    allocation the site must hold that many kits of every arm (R-BLIND-2: otherwise a
    refusal, and a refused randomisation has no later visits); after each, the resupply
    rule runs as in the service (no second request while one is on its way), and what it
    asks for arrives ``lead_time_days`` later.
    """
    stock = dict.fromkeys(arms, initial_per_arm)
    arriving: list[tuple[int, dict[str, int]]] = []
    schedule: dict[int, list[tuple[int, int]]] = {}
    for participant in range(len(kits_by_participant)):
        schedule.setdefault(participant * days_between_randomisations, []).append((participant, 0))
    refusals = dispensings = shipments = randomised = 0
    lowest = initial_per_arm
    day = 0
    while schedule or arriving:
        for arrival in [a for a in arriving if a[0] == day]:
            for arm, count in arrival[1].items():
                stock[arm] += count
            arriving.remove(arrival)
        for participant, visit in schedule.pop(day, []):
            arm, needed = slots[participant], kits_by_participant[participant][visit]
            if any(stock[a] < needed for a in arms):
                refusals += 1
                continue
            stock[arm] -= needed
            dispensings += 1
            if visit == 0:
                randomised += 1
            if visit + 1 < len(visit_days):
                later = day + visit_days[visit + 1] - visit_days[visit]
                schedule.setdefault(later, []).append((participant, visit + 1))
            lowest = min(lowest, *stock.values())
            if needs_resupply(stock, levels) and not arriving:
                quantities = resupply_quantities(stock, {}, levels)
                if any(quantities.values()):
                    arriving.append((day + lead_time_days, quantities))
                    shipments += 1
        day += 1
    return SimulationResult(randomised, dispensings, refusals, shipments, lowest)


# Requests ----------------------------------------------------------------------------------

#: What a pharmacist may record of each kit of a shipment when it arrives.
RECEIPT_STATUSES = ("available", "damaged", "lost")


@dataclass(frozen=True)
class ShipmentRequest:
    """A validated shipment order: to ``site``, ``count`` kits (balanced) or a whole ``lot``."""

    site: str
    count: int | None = None
    lot: str | None = None


@dataclass(frozen=True)
class ReceiptRequest:
    """A validated receipt: each kit number of the shipment to how it arrived."""

    kits: Mapping[str, str]


@dataclass(frozen=True)
class KitGeneration:
    """A validated order for depot stock: ``count`` kits of lot ``lot`` expiring ``expires_on``."""

    lot: str
    count: int
    expires_on: date
