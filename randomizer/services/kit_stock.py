"""A server process's view of each site's available kits, by arm: unsealed once, kept fresh.

A kit's arm never changes, so a process need not unseal it again at every randomisation: it
keeps, per site, the available kits grouped by (arm, blinded expiry), and the site's
``kit_version`` (a change counter that database triggers bump with every change to one of
the site's kits, migration 0008) up to which that view is true. Under the site's lock,
:func:`randomizer.services.kits.site_supply` reads the counter and the kits changed since
the version the view is at (``kit.site_version`` above it), and applies them: the stock of
the site no longer costs anything, only its changes do.

Blinding (R-BLIND-1): nothing here is stored in the database, and nothing runs differently
by arm. Every arm of the trial has its buckets; a changed kit is applied the same way
whatever its arm (unsealed once, placed in one bucket); a count walks every bucket of the
arm asked, and the supply check asks every arm; a choice of ``k`` kits draws ``k`` random
indices (a sparse Fisher-Yates shuffle: ``k`` steps, whatever the number of kits) in the
arm's buckets, earliest expiry first (R-KIT-3). Kits of one shipment share their lot and
expiry across arms, so both arms have the same buckets.

The view is only as fresh as the site lock makes it: read and change it only with the
site's row locked (SQLite: inside a writing transaction). Two threads of one process that
want the same site therefore use it one after the other; the small lock here only guards
the table of sites.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from datetime import date
from typing import NamedTuple

from randomizer.domain.kits import AVAILABLE


class ChangedKit(NamedTuple):
    """A kit changed since the view's version, as the database has it now."""

    kit_number: str
    status: str
    expires_on: date
    sealed_arm: str


class _Bucket:
    """The available kits of one arm with one blinded expiry: add, remove, index in O(1)."""

    __slots__ = ("_position", "arm", "expires_on", "kits")

    def __init__(self, arm: str, expires_on: date) -> None:
        self.arm = arm
        self.expires_on = expires_on
        self.kits: list[str] = []
        self._position: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.kits)

    def add(self, kit_number: str) -> None:
        self._position[kit_number] = len(self.kits)
        self.kits.append(kit_number)

    def remove(self, kit_number: str) -> None:
        # Swap with the last kit: order inside a bucket is arbitrary, choices are random.
        position = self._position.pop(kit_number)
        last = self.kits.pop()
        if last != kit_number:
            self.kits[position] = last
            self._position[last] = position


def distinct_indices(rng: random.Random, population: int, count: int) -> list[int]:
    """``count`` distinct indices below ``population``, uniformly at random, in ``count`` steps.

    A Fisher-Yates shuffle that records only the positions it swapped, so its work does not
    depend on ``population``.
    """
    if not 0 <= count <= population:
        raise ValueError(f"cannot draw {count} of {population}")
    swapped: dict[int, int] = {}
    drawn = []
    for step in range(count):
        pick = rng.randrange(step, population)
        drawn.append(swapped.get(pick, pick))
        swapped[pick] = swapped.get(step, step)
    return drawn


class SiteStock:
    """One site's available kits by arm and blinded expiry, true at ``version``."""

    def __init__(self, arms: Iterable[str]) -> None:
        #: The site's ``kit_version`` this view is true at (0: nothing read yet).
        self.version = 0
        self._buckets: dict[str, dict[date, _Bucket]] = {arm: {} for arm in arms}
        self._bucket_of: dict[str, _Bucket] = {}

    def apply(
        self,
        changed: Iterable[ChangedKit],
        version: int,
        arm_of: Callable[[ChangedKit], str],
    ) -> None:
        """Apply the kits changed since :attr:`version` (``arm_of`` unseals a kit's arm); the
        view is then true at ``version``."""
        for kit in changed:
            bucket = self._bucket_of.pop(kit.kit_number, None)
            if bucket is not None:
                bucket.remove(kit.kit_number)
            if kit.status != AVAILABLE:
                continue
            arm = bucket.arm if bucket is not None else arm_of(kit)
            by_expiry = self._buckets.setdefault(arm, {})
            target = by_expiry.get(kit.expires_on)
            if target is None:
                target = by_expiry[kit.expires_on] = _Bucket(arm, kit.expires_on)
            target.add(kit.kit_number)
            self._bucket_of[kit.kit_number] = target
        self.version = version

    def _dispensable(self, arm: str, cutoff: date) -> list[_Bucket]:
        return [b for b in self._buckets.get(arm, {}).values() if b.expires_on > cutoff]

    def count(self, arm: str, cutoff: date) -> int:
        """How many kits of ``arm`` are available with an expiry after ``cutoff``."""
        return sum(len(bucket) for bucket in self._dispensable(arm, cutoff))

    def by_expiry(self, arm: str, cutoff: date) -> dict[date, int]:
        """The dispensable kits of ``arm`` counted by blinded expiry."""
        return {b.expires_on: len(b) for b in self._dispensable(arm, cutoff) if len(b)}

    def holds_expired(self, today: date) -> bool:
        """True if a kit of any arm available here expired before ``today`` (every arm's
        buckets are walked, whatever they hold)."""
        return any(
            bucket.expires_on < today and len(bucket)
            for by_expiry in self._buckets.values()
            for bucket in by_expiry.values()
        )

    def choose(self, arm: str, cutoff: date, count: int, rng: random.Random) -> list[str]:
        """``count`` distinct kits of ``arm`` expiring after ``cutoff``: the earliest blinded
        expiry first, then at random among the kits of one expiry (R-KIT-3).

        The buckets are few (one per expiry) and sorted; the draw within one takes as many
        steps as kits it takes, whatever the bucket's size.
        """
        chosen: list[str] = []
        for bucket in sorted(self._dispensable(arm, cutoff), key=lambda b: b.expires_on):
            if len(chosen) == count:
                break
            wanted = min(count - len(chosen), len(bucket))
            chosen.extend(bucket.kits[i] for i in distinct_indices(rng, len(bucket), wanted))
        if len(chosen) != count:
            raise ValueError(f"cannot draw {count} kits of {len(chosen)}")
        return chosen


class KitStock:
    """Every site's :class:`SiteStock` in this process, for one trial's database."""

    def __init__(self) -> None:
        self._sites: dict[str, SiteStock] = {}
        self._lock = threading.Lock()

    def site(self, site_id: str, arms: Iterable[str]) -> SiteStock:
        """The site's view (empty, at version 0, the first time)."""
        with self._lock:
            stock = self._sites.get(site_id)
            if stock is None:
                stock = self._sites[site_id] = SiteStock(arms)
            return stock

    def forget(self, site_id: str, arms: Iterable[str]) -> SiteStock:
        """Drop the site's view (it proved wrong, or the database went back): a new, empty one."""
        with self._lock:
            stock = self._sites[site_id] = SiteStock(arms)
            return stock

    def __repr__(self) -> str:
        return f"KitStock(sites={sorted(self._sites)!r})"
