"""Kits: stocking a site, the supply check and the blind allocation of kits (R-KIT, R-BLIND).

Nothing here may behave differently by arm where anyone blinded could notice: kit numbers
are drawn at random whatever the arm, kits are created in random order with random row ids,
and an allocation runs the same statements and the same work whatever the arm it needs
(:func:`site_supply`), so that the queries, the work and the time are the same for both
arms. The arms of a site's kits are unsealed once per server process and kept in memory
(:mod:`randomizer.services.kit_stock`); the database holds no index or tag of them.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import date
from itertools import chain
from typing import Any, NamedTuple

from sqlalchemy import Update, bindparam, event, select, update
from sqlalchemy.orm import ORMExecuteState, Session

from keys import SealedArm
from randomizer.db import refresh_statistics_after_commit
from randomizer.domain.kits import ALLOCATED, AVAILABLE, EXPIRED
from randomizer.domain.supply import dispensable_after, needs_resupply
from randomizer.errors import InsufficientSupply
from randomizer.locks import LockOrderError, holds_site_lock, lock_site
from randomizer.models import Kit, Site
from randomizer.roles import SYSTEM, Actor
from randomizer.services import resupply
from randomizer.services.context import TrialContext
from randomizer.services.kit_stock import ChangedKit, SiteStock

KIT_SEAL_KIND = "kit"
#: Kit numbers as :func:`new_kit_number` makes them.
KIT_NUMBER = re.compile(r"\AK\d{4}-\d{4}\Z")


def new_kit_number(taken: set[str]) -> str:
    """A fresh kit number such as ``K4829-1736``: eight random digits, nothing arm-specific.

    The digits come from ``secrets``, so a kit number predicts nothing about another kit.
    """
    while True:
        digits = f"{secrets.randbelow(10**8):08d}"
        number = f"K{digits[:4]}-{digits[4:]}"
        if number not in taken:
            taken.add(number)
            return number


def stock_site(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    site: Site,
    kits_per_arm: int,
    lot: str,
    expires_on: date,
) -> list[str]:
    """Place ``kits_per_arm`` available kits of every arm at ``site``; audited as a shipment.

    ``lot`` and ``expires_on`` are the blinded lot and the blinded expiry shared by every kit
    of the shipment. Returns the kit numbers created.
    """
    arms = [arm.id for arm in ctx.definition.arms for _ in range(kits_per_arm)]
    numbers = create_kits(session, ctx, arms, lot, expires_on, site_id=site.id, status=AVAILABLE)
    session.flush()
    ctx.audit.append(
        session,
        actor,
        "shipment.received",
        site.id,
        {
            "site": site.id,
            "lot": lot,
            "expires_on": expires_on.isoformat(),
            "kits": sorted(numbers),
        },
        site=site.id,
    )
    return numbers


def create_kits(
    session: Session,
    ctx: TrialContext,
    arms: list[str],
    lot: str,
    expires_on: date,
    *,
    site_id: str | None,
    status: str,
) -> list[str]:
    """Create one kit per entry of ``arms`` (shuffled first), with fresh random numbers.

    Random creation order and random row ids: neither row order, insertion time nor id
    follows the arm (R-KIT). Returns the kit numbers created, in creation order.
    """
    taken = set(session.scalars(select(Kit.kit_number)))
    arms = list(arms)
    ctx.rng.shuffle(arms)
    numbers = []
    for arm in arms:
        number = new_kit_number(taken)
        sealed = ctx.sealer.seal_arm(arm, KIT_SEAL_KIND, number)
        session.add(
            Kit(
                kit_number=number,
                site_id=site_id,
                status=status,
                lot=lot,
                expires_on=expires_on,
                sealed_arm=sealed.to_text(),
            )
        )
        numbers.append(number)
    session.flush()
    refresh_statistics_after_commit(session, "kit", "site")
    return numbers


def mark_expired(session: Session, ctx: TrialContext, site_id: str | None) -> list[str]:
    """Mark ``expired`` the kits of a site (None: the depot) whose expiry has passed; audited.

    Available, depot and quarantined kits past their blinded expiry leave stock (R-KIT-3);
    one ``kit.expired`` entry lists them. The same rule and statement whatever the arms.
    """
    today = ctx.today()
    site_clause = Kit.site_id.is_(None) if site_id is None else Kit.site_id == site_id
    numbers = sorted(
        session.scalars(
            update(Kit)
            .where(
                site_clause,
                Kit.status.in_(EXPIRABLE),
                Kit.expires_on < today,
            )
            .values(status=EXPIRED)
            .returning(Kit.kit_number)
            .execution_options(synchronize_session=False)
        )
    )
    if numbers:
        ctx.audit.append(
            session,
            SYSTEM,
            "kit.expired",
            site_id,
            {"site": site_id, "expired_before": today.isoformat(), "kits": numbers},
            site=site_id,
        )
    return numbers


#: The statuses from which a kit past its expiry is marked expired (the state machine's).
EXPIRABLE = ("in_depot", AVAILABLE, "quarantined")

#: Set on a session once its transaction has written a kit through the ORM.
_KITS_WRITTEN = "sealroom.kits.written"


@event.listens_for(Session, "before_flush")
def _note_kits_flushed(session: Session, _context: Any, _instances: Any) -> None:
    if any(isinstance(obj, Kit) for obj in chain(session.new, session.dirty, session.deleted)):
        session.info[_KITS_WRITTEN] = True


@event.listens_for(Session, "do_orm_execute")
def _note_kit_statements(state: ORMExecuteState) -> None:
    if (state.is_insert or state.is_update or state.is_delete) and Kit.__mapper__ in (
        state.all_mappers
    ):
        state.session.info[_KITS_WRITTEN] = True


@dataclass(frozen=True)
class SiteSupply:
    """The kits a site may dispense today, as its lock sees them: counts and choices by arm.

    Valid only in the transaction that made it (:func:`site_supply`), under the site's lock.
    """

    site_id: str
    arms: tuple[str, ...]
    cutoff: date
    stock: SiteStock
    #: The site's status under its lock (a site closed meanwhile randomises no one).
    site_status: str

    def count(self, arm: str) -> int:
        """Dispensable kits of ``arm``."""
        return self.stock.count(arm, self.cutoff)


class SiteLocked(NamedTuple):
    """A site's row as this transaction's lock of it returned it."""

    status: str
    kit_version: int


_KITS = Kit.__table__
#: The site's kits changed since a version: built once, run by every allocation.
_CHANGED_KITS = select(
    _KITS.c.kit_number, _KITS.c.status, _KITS.c.expires_on, _KITS.c.sealed_arm
).where(_KITS.c.site_id == bindparam("site"), _KITS.c.site_version > bindparam("version"))


def site_supply(
    session: Session, ctx: TrialContext, site_id: str, *, locked: SiteLocked | None = None
) -> SiteSupply:
    """Lock the site's kits; every kit of the site that may be dispensed today, by arm.

    ``locked``: the site's status and kit version as this transaction's lock of it returned
    them, when the caller took it (:func:`randomizer.locks.lock_participant_and_site`).

    Kits inside the do-not-dispense window before their expiry are left out. The arms come
    from this process's view of the site (:mod:`randomizer.services.kit_stock`), brought up
    to the version the lock shows by reading the kits changed since, and unsealing those it
    has not seen. The same statements run whatever the arm (one lock, one read of changed
    kits); the rows read are the site's changes since this process last looked, which no
    arm decides, and each is unsealed and placed the same way whatever its arm.

    A transaction that has already written kits reads the whole site instead, into a view
    of its own: the shared view must only ever hold what others committed.
    """
    arms = tuple(arm.id for arm in ctx.definition.arms)
    session.flush()  # kits this transaction added through the ORM: the read below sees them
    if locked is None:
        site = lock_site(session, site_id)
        locked = SiteLocked(site.status, site.kit_version)
    elif not holds_site_lock(session, site_id):
        raise LockOrderError(f"the supply of site {site_id} is read under the site's lock")
    if session.info.get(_KITS_WRITTEN):
        stock = SiteStock(arms)
    else:
        stock = ctx.kit_stock.site(site_id, arms)
        if stock.version > locked.kit_version:  # the database went back (a restore)
            stock = ctx.kit_stock.forget(site_id, arms)
    changed = (
        session.connection()
        .execute(_CHANGED_KITS, {"site": site_id, "version": stock.version})
        .all()
    )
    stock.apply(
        (ChangedKit(*row) for row in changed),
        locked.kit_version,
        lambda kit: ctx.sealer.unseal_arm(
            SealedArm.from_text(kit.sealed_arm), KIT_SEAL_KIND, kit.kit_number
        ),
    )
    cutoff = dispensable_after(ctx.today(), ctx.definition.do_not_dispense_days)
    return SiteSupply(site_id, arms, cutoff, stock, locked.status)


def check_supply(supply: SiteSupply, needed: int) -> None:
    """R-BLIND-2: refuse unless the site holds ``needed`` kits of EVERY arm.

    Decided before and independently of the allocation, so a refusal says nothing about the
    arm the participant would have had; the message names no arm.
    """
    if any(supply.count(arm) < needed for arm in supply.arms):
        raise InsufficientSupply(
            f"Site {supply.site_id} does not hold {needed} dispensable kits of every arm; "
            "ask the pharmacist to receive a shipment before randomising."
        )


def reserve_supply(session: Session, ctx: TrialContext, site_id: str, needed: int) -> SiteSupply:
    """Lock the site's kits and check that it holds ``needed`` of EVERY arm (R-BLIND-2).

    Returns the site's supply, for :func:`allocate_kits` in the same transaction. Kits past
    their expiry are never counted or chosen (the cutoff); if the site still holds some as
    available, they are then marked expired (:func:`expire_past`).
    """
    supply = site_supply(session, ctx, site_id)
    check_supply(supply, needed)
    expire_past(session, ctx, supply)
    return supply


def expire_past(session: Session, ctx: TrialContext, supply: SiteSupply) -> None:
    """Mark expired, once, the available kits the supply saw past their expiry (R-KIT-3).

    A write (and an audit entry): a caller that may still refuse does this after its checks.
    """
    if supply.stock.holds_expired(ctx.today()):
        mark_expired(session, ctx, supply.site_id)


@functools.lru_cache(maxsize=64)
def allocation_statement(count: int) -> Update:
    """The allocation of ``count`` kits (bound ``k0`` ... and the values), built once per
    count, in Core: the ORM's bulk update, and an expanding IN list rendered anew at every
    execution, cost more than the statement itself."""
    return (
        update(_KITS)
        .where(
            _KITS.c.kit_number.in_([bindparam(f"k{i}") for i in range(count)]),
            _KITS.c.site_id == bindparam("site"),
            _KITS.c.status == AVAILABLE,
        )
        .values(
            status=ALLOCATED,
            participant_id=bindparam("participant"),
            visit=bindparam("visit"),
            allocated_at=bindparam("allocated_at"),
            replaces_kit_id=bindparam("replaces"),
        )
    )


def allocate_kits(
    session: Session,
    ctx: TrialContext,
    supply: SiteSupply,
    arm: str,
    needed: int,
    participant_id: str,
    visit: str,
    *,
    replaces: str | None = None,
) -> list[str]:
    """Allocate ``needed`` kits of ``arm`` chosen at random among the site's supply.

    Random choice, not kit-number order: the kits given reveal nothing about the next ones.
    The update also requires each kit to be still available at the site, so a kit can never
    be given twice even if a caller forgot the site lock. Returns the kit numbers, sorted.
    """
    chosen = supply.stock.choose(arm, supply.cutoff, needed, ctx.rng)
    session.info[_KITS_WRITTEN] = True
    result = session.connection().execute(
        allocation_statement(len(chosen)),
        {
            **{f"k{i}": number for i, number in enumerate(chosen)},
            "site": supply.site_id,
            "participant": participant_id,
            "visit": visit,
            "allocated_at": ctx.clock(),
            "replaces": replaces,
        },
    )
    if result.rowcount != needed:
        # The view was wrong: the next transaction reads the site afresh.
        ctx.kit_stock.forget(supply.site_id, supply.arms)
        raise RuntimeError("a kit chosen for allocation was no longer available")
    # Resupply (R-SHIP): the counts the supply check made, less this allocation; the one
    # accepted exception to "the same work whatever the arm" (README.md's threat model).
    left = {a: supply.count(a) - (needed if a == arm else 0) for a in supply.arms}
    if needs_resupply(left, ctx.definition.supply.levels(supply.site_id)):
        resupply.request_resupply(session, ctx, supply.site_id)
    return sorted(chosen)
