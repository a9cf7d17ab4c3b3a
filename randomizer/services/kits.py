"""Kits: stocking a site, the supply check and the blind allocation of kits (R-KIT, R-BLIND).

Nothing here may behave differently by arm where anyone blinded could notice: kit numbers
are drawn at random whatever the arm, kits are created in random order with random row ids,
and an allocation reads and decrypts every dispensable kit of the site, whatever the arm it
needs, so that the queries, the work and the time are the same for both arms.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from keys import SealedArm
from randomizer.domain.kits import ALLOCATED, AVAILABLE
from randomizer.errors import InsufficientSupply
from randomizer.locks import lock_site
from randomizer.models import Kit, Participant, Site
from randomizer.roles import Actor
from randomizer.services.context import TrialContext

KIT_SEAL_KIND = "kit"


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
    taken = set(session.scalars(select(Kit.kit_number)))
    arms = [arm.id for arm in ctx.definition.arms for _ in range(kits_per_arm)]
    # Random creation order: neither row order nor insertion time follows the arm.
    ctx.rng.shuffle(arms)
    numbers = []
    for arm in arms:
        number = new_kit_number(taken)
        sealed = ctx.sealer.seal_arm(arm, KIT_SEAL_KIND, number)
        session.add(
            Kit(
                kit_number=number,
                site_id=site.id,
                status=AVAILABLE,
                lot=lot,
                expires_on=expires_on,
                sealed_arm=sealed.to_text(),
            )
        )
        numbers.append(number)
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


@dataclass(frozen=True)
class DispensableKit:
    """A kit that may be dispensed: its row id and number (its arm is known to the caller)."""

    id: str
    kit_number: str


def dispensable_kits_by_arm(
    session: Session, ctx: TrialContext, site_id: str
) -> dict[str, list[DispensableKit]]:
    """Every kit of the site that may be dispensed today, grouped by its (unsealed) arm.

    Kits inside the do-not-dispense window before their expiry are left out. The query
    does not depend on any arm, and every kit is decrypted: same work whatever is needed.
    Call only with the site's row locked (:func:`randomizer.locks.lock_site`).
    """
    cutoff = ctx.today() + timedelta(days=ctx.definition.do_not_dispense_days)
    rows = session.execute(
        select(Kit.id, Kit.kit_number, Kit.sealed_arm)
        .where(Kit.site_id == site_id, Kit.status == AVAILABLE, Kit.expires_on > cutoff)
        .order_by(Kit.id)
    ).all()
    by_arm: dict[str, list[DispensableKit]] = {arm.id: [] for arm in ctx.definition.arms}
    for kit_id, kit_number, sealed_arm in rows:
        arm = ctx.sealer.unseal_arm(SealedArm.from_text(sealed_arm), KIT_SEAL_KIND, kit_number)
        by_arm[arm].append(DispensableKit(kit_id, kit_number))
    return by_arm


def check_supply(by_arm: Mapping[str, Sequence[DispensableKit]], needed: int, site_id: str) -> None:
    """R-BLIND-2: refuse unless the site holds ``needed`` kits of EVERY arm.

    Decided before and independently of the allocation, so a refusal says nothing about the
    arm the participant would have had; the message names no arm.
    """
    if any(len(kits) < needed for kits in by_arm.values()):
        raise InsufficientSupply(
            f"Site {site_id} does not hold {needed} dispensable kits of every arm; "
            "ask the pharmacist to receive a shipment before randomising."
        )


def reserve_supply(
    session: Session, ctx: TrialContext, site_id: str, needed: int
) -> dict[str, list[DispensableKit]]:
    """Lock the site's kits and check that it holds ``needed`` of EVERY arm (R-BLIND-2).

    Returns the dispensable kits by arm, for :func:`allocate_kits` in the same transaction.
    """
    lock_site(session, site_id)
    by_arm = dispensable_kits_by_arm(session, ctx, site_id)
    check_supply(by_arm, needed, site_id)
    return by_arm


def allocate_kits(
    session: Session,
    ctx: TrialContext,
    candidates: Sequence[DispensableKit],
    needed: int,
    participant: Participant,
    visit: str,
    *,
    replaces: str | None = None,
) -> list[str]:
    """Allocate ``needed`` kits chosen at random among ``candidates`` (one arm's kits).

    Random choice, not kit-number order: the kits given reveal nothing about the next ones.
    The update also requires each kit to be still available, so a kit can never be given
    twice even if a caller forgot the site lock. Returns the kit numbers, sorted.
    """
    chosen = ctx.rng.sample(list(candidates), needed)
    result = session.execute(
        update(Kit)
        .where(Kit.id.in_([kit.id for kit in chosen]), Kit.status == AVAILABLE)
        .values(
            status=ALLOCATED,
            participant_id=participant.id,
            visit=visit,
            allocated_at=ctx.clock(),
            replaces_kit_id=replaces,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != needed:
        raise RuntimeError("a kit chosen for allocation was no longer available")
    return sorted(kit.kit_number for kit in chosen)
