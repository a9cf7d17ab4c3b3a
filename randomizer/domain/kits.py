"""Kit statuses and the transitions between them (URS §4, R-KIT-2): a pure table.

Every change of a kit's status in the service goes through :func:`check_transition`, so the
state machine below is the whole of the rule. A kit's status never depends on its arm.
The main path: ``in_depot`` -> ``in_transit`` -> ``available`` -> ``allocated`` ->
``dispensed`` -> ``returned``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

IN_DEPOT: Final = "in_depot"
IN_TRANSIT: Final = "in_transit"
AVAILABLE: Final = "available"
ALLOCATED: Final = "allocated"
DISPENSED: Final = "dispensed"
DAMAGED: Final = "damaged"
LOST: Final = "lost"
RETURNED: Final = "returned"
EXPIRED: Final = "expired"
QUARANTINED: Final = "quarantined"

#: Every kit status of URS §4, in its order; the database refuses any other.
KIT_STATUSES: Final = (
    IN_DEPOT,
    IN_TRANSIT,
    AVAILABLE,
    ALLOCATED,
    DISPENSED,
    DAMAGED,
    LOST,
    RETURNED,
    EXPIRED,
    QUARANTINED,
)

#: From each status, the statuses a kit may move to. Damaged, lost, returned and expired
#: kits are finished: nothing brings them back into stock.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    # At the depot: shipped, or taken out of stock there.
    IN_DEPOT: frozenset({IN_TRANSIT, DAMAGED, LOST, EXPIRED, QUARANTINED}),
    # On the way: received at the site, or lost, damaged or held (temperature excursion).
    IN_TRANSIT: frozenset({AVAILABLE, DAMAGED, LOST, QUARANTINED}),
    # At the site: given to a participant, or taken out of stock.
    AVAILABLE: frozenset({ALLOCATED, DAMAGED, LOST, EXPIRED, QUARANTINED}),
    # Given to a participant: handed over, or damaged or lost first (then replaced, R-KIT-2).
    ALLOCATED: frozenset({DISPENSED, DAMAGED, LOST}),
    # Handed over: the participant brings it back (used or not).
    DISPENSED: frozenset({RETURNED}),
    # Held: released back into stock, or rejected.
    QUARANTINED: frozenset({AVAILABLE, IN_DEPOT, DAMAGED, EXPIRED}),
    DAMAGED: frozenset(),
    LOST: frozenset(),
    RETURNED: frozenset(),
    EXPIRED: frozenset(),
}

#: Statuses after which an allocated kit must be replaced by one of the same arm (R-KIT-2).
NEEDS_REPLACEMENT: Final = frozenset({DAMAGED, LOST})


class KitTransitionError(ValueError):
    """A status change the state machine does not allow."""


def may_change(current: str, new: str) -> bool:
    """True if a kit in ``current`` may move to ``new``."""
    return new in TRANSITIONS.get(current, frozenset())


def check_transition(current: str, new: str) -> None:
    """Raise :class:`KitTransitionError` unless a kit in ``current`` may move to ``new``."""
    if new not in TRANSITIONS:
        raise KitTransitionError(f"{new!r} is not a kit status")
    if not may_change(current, new):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "none: it is final"
        raise KitTransitionError(
            f"a kit that is {current} cannot become {new} (allowed: {allowed})"
        )
