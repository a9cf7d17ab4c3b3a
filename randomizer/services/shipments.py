"""Depot stock, shipments, receipts, quarantine and expiry (R-SHIP, R-KIT-3, R-BLIND).

Kits are made at the depot (``in_depot``, no site): balanced across arms within their lot,
with random numbers, in random order, with random row ids (:func:`generate_kits`). Only the
service chooses which depot kits travel, balanced across arms (:func:`create_shipment`, or
:func:`dispatch_shipment` for a resupply the service requested after an allocation,
:mod:`randomizer.services.resupply`). A shipped kit gets its site and is ``in_transit``
until the destination's pharmacist receives the shipment, each kit ``available``,
``damaged`` or ``lost`` (:func:`receive_shipment`). An admin quarantines and releases kits
with a reason; kits past their expiry are marked ``expired`` (:func:`expire_kits`, and at
every allocation: :func:`randomizer.services.kits.reserve_supply`).

No answer to a blinded role and no audit entry holds a count by arm: shipments and
receipts list kit numbers only; the depot's arms are unsealed here, in memory, to choose.
Every change and every refusal of one is one audit entry.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from keys import SealedArm
from randomizer.domain.kits import (
    AVAILABLE,
    IN_DEPOT,
    IN_TRANSIT,
    QUARANTINED,
    KitTransitionError,
    check_transition,
)
from randomizer.domain.participants import SITE_ID
from randomizer.domain.supply import (
    KitGeneration,
    ReceiptRequest,
    ShipmentRequest,
    balanced_counts,
    days_of_supply,
    dispensable_after,
    expiry_month,
    resupply_quantities,
)
from randomizer.errors import Conflict, InsufficientSupply, NotFound, ValidationFailed
from randomizer.locks import lock_depot, lock_site
from randomizer.models import (
    SHIPMENT_CANCELLED,
    SHIPMENT_IN_TRANSIT,
    SHIPMENT_RECEIVED,
    SHIPMENT_REQUESTED,
    Kit,
    Shipment,
    Site,
)
from randomizer.roles import (
    MANAGE_DEPOT,
    MANAGE_SHIPMENTS,
    QUARANTINE_KITS,
    READ_SHIPMENTS,
    RECEIVE_SHIPMENT,
    REPORT_SUPPLY,
    SITE_ROLES,
    Actor,
)
from randomizer.services import kits as kit_service
from randomizer.services.context import TrialContext
from randomizer.services.inputs import Submission
from randomizer.services.refusals import Refusal, refusals_audited

#: A blinded lot number: letters and digits, then also '.', '_' and '-'; at most 32.
LOT = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
#: A shipment id as the API shows it (at most 9 digits: within every backend's integer).
SHIPMENT_ID = re.compile(r"\A[1-9][0-9]{0,8}\Z")
MANUAL = "manual"
#: The statuses of a shipment a site sees: once it has left the depot.
SITE_VISIBLE = (SHIPMENT_IN_TRANSIT, SHIPMENT_RECEIVED)
#: The kits an admin may quarantine: in stock at the depot or at a site (a kit in transit
#: is received damaged instead).
QUARANTINABLE = (IN_DEPOT, AVAILABLE)
#: The window over which a site's dispensing rate is measured for its days of supply.
RATE_DAYS = 28
#: Kit numbers updated per statement (a whole lot may be thousands).
CHUNK = 500


@dataclass(frozen=True)
class ShipmentView:
    """A shipment as its site's pharmacist or an admin sees it: kit numbers, never arms."""

    id: int
    site: str
    status: str
    origin: str
    lot: str | None
    kits: list[str]
    created_at: datetime
    dispatched_at: datetime | None
    received_at: datetime | None
    received: dict[str, str] | None = field(default=None)


def shipment_refusal(action: str, shipment_id: str | None = None) -> Refusal:
    """How a refused shipment operation is audited (by the service, and by its adapters)."""
    return Refusal(f"shipment.{action}_refused", shipment_id, SHIPMENT_ID, "shipment")


def quarantine_refusal(kit_number: str) -> Refusal:
    """How a refused quarantine or release is audited."""
    return Refusal("kit.quarantine_refused", kit_number, kit_service.KIT_NUMBER, "kit_number")


# Depot stock -------------------------------------------------------------------------------


def generate_kits(
    session: Session, ctx: TrialContext, actor: Actor, order: KitGeneration
) -> list[str]:
    """Add ``order.count`` kits of one lot to the depot, balanced by the arms' ratio (R-KIT).

    Refused (422) for a malformed lot, a count that does not split by the ratio, or an
    expiry that is not in the future; (409) for a lot already made with another expiry.
    Audited as ``kits.generated``. Returns the kit numbers, sorted.
    """
    MANAGE_DEPOT.check(actor)
    errors: dict[str, list[str]] = {}
    if not LOT.fullmatch(order.lot):
        errors["lot"] = ["Letters, digits, '.', '_' and '-', at most 32, a letter or digit first."]
    ratios = {arm.id: arm.ratio for arm in ctx.definition.arms}
    try:
        counts = balanced_counts(order.count, ratios)
    except ValueError as error:
        errors["count"] = [f"{str(error).capitalize()}."]
    if order.expires_on <= ctx.today():
        errors["expiry"] = [f"Must be after today ({ctx.today().isoformat()})."]
    if errors:
        raise ValidationFailed(errors)
    lock_depot(session)
    other = session.scalars(
        select(Kit.expires_on).where(Kit.lot == order.lot, Kit.expires_on != order.expires_on)
    ).first()
    if other is not None:
        raise Conflict(f"Lot {order.lot} was made with expiry {other.isoformat()}.")
    arms = [arm for arm, count in counts.items() for _ in range(count)]
    numbers = kit_service.create_kits(
        session, ctx, arms, order.lot, order.expires_on, site_id=None, status=IN_DEPOT
    )
    ctx.audit.append(
        session,
        actor,
        "kits.generated",
        order.lot,
        {
            "lot": order.lot,
            "expires_on": order.expires_on.isoformat(),
            "count": order.count,
            "kits": sorted(numbers),
        },
    )
    return sorted(numbers)


class _DepotKit(NamedTuple):
    id: str
    kit_number: str
    lot: str
    expires_on: date


def _arm_of(ctx: TrialContext) -> Callable[[str, str], str]:
    return lambda number, sealed: ctx.sealer.unseal_arm(
        SealedArm.from_text(sealed), kit_service.KIT_SEAL_KIND, number
    )


def _depot_by_arm(
    session: Session, ctx: TrialContext, cutoff: date, lot: str | None = None
) -> dict[str, list[_DepotKit]]:
    """The depot's kits that may still be dispensed after shipping, by arm: earliest expiry
    (then lot) first, in random order within one lot. Under the depot's lock."""
    query = select(Kit.id, Kit.kit_number, Kit.lot, Kit.expires_on, Kit.sealed_arm).where(
        Kit.site_id.is_(None), Kit.status == IN_DEPOT, Kit.expires_on > cutoff
    )
    if lot is not None:
        query = query.where(Kit.lot == lot)
    arm_of = _arm_of(ctx)
    by_arm: dict[str, list[_DepotKit]] = {arm.id: [] for arm in ctx.definition.arms}
    for kit_id, number, kit_lot, expires_on, sealed in session.execute(query):
        by_arm[arm_of(number, sealed)].append(_DepotKit(kit_id, number, kit_lot, expires_on))
    for kits in by_arm.values():
        # Never by kit number or row order: shuffled, then the earliest expiry first.
        ctx.rng.shuffle(kits)
        kits.sort(key=lambda kit: (kit.expires_on, kit.lot))
    return by_arm


def _choose(by_arm: dict[str, list[_DepotKit]], quantities: dict[str, int]) -> list[_DepotKit]:
    if any(len(by_arm[arm]) < wanted for arm, wanted in quantities.items()):
        raise InsufficientSupply(
            "The depot does not hold the dispensable kits of every arm this shipment needs; "
            "add stock to the depot (sealroom kits generate) and try again."
        )
    return [kit for arm, wanted in quantities.items() for kit in by_arm[arm][:wanted]]


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _ship(session: Session, shipment: Shipment, kits: list[_DepotKit]) -> list[str]:
    """Move the chosen depot kits onto the shipment's site, in transit (triggers bump the
    site's change counter: every process's view of the site sees them, migration 0008)."""
    moved = 0
    for ids in _chunks([kit.id for kit in kits]):
        moved += session.execute(
            update(Kit)
            .where(Kit.id.in_(ids), Kit.site_id.is_(None), Kit.status == IN_DEPOT)
            .values(site_id=shipment.site_id, status=IN_TRANSIT, shipment_id=shipment.id)
            .execution_options(synchronize_session=False)
        ).rowcount
    if moved != len(kits):
        raise RuntimeError("a depot kit chosen for a shipment had left the depot")
    return sorted(kit.kit_number for kit in kits)


def _site_for_shipment(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id) if SITE_ID.fullmatch(site_id) else None
    if site is None:
        raise ValidationFailed({"site": ["No site with this id."]})
    if site.status != "open":
        raise Conflict(f"Site {site_id} is {site.status}: it receives no shipment.")
    return site


def _audit_created(
    session: Session, ctx: TrialContext, actor: Actor, shipment: Shipment, kits: list[str]
) -> None:
    ctx.audit.append(
        session,
        actor,
        "shipment.created",
        str(shipment.id),
        {
            "shipment": shipment.id,
            "site": shipment.site_id,
            "origin": shipment.origin,
            "lot": shipment.lot,
            "kits": kits,
        },
        site=shipment.site_id,
    )


def create_shipment(
    session: Session, ctx: TrialContext, actor: Actor, submission: Submission[ShipmentRequest]
) -> ShipmentView:
    """Send kits from the depot to a site: ``count`` kits balanced by the arms' ratio, or a
    whole ``lot``; the service chooses them (earliest expiry first, then at random).

    Refused (422) for an unknown site, a count that does not split by the ratio or a lot
    not in the depot, (409) for a closed site or a depot short of any arm. Audited.
    """
    with refusals_audited(session, ctx, actor, shipment_refusal("create"), site=None):
        MANAGE_SHIPMENTS.check(actor)
        request = submission.load()
        site = _site_for_shipment(session, request.site)
        lock_site(session, site.id)
        lock_depot(session)
        cutoff = dispensable_after(ctx.today(), ctx.definition.do_not_dispense_days)
        if request.lot is not None:
            by_arm = _depot_by_arm(session, ctx, cutoff, request.lot)
            quantities = {arm: len(kits) for arm, kits in by_arm.items()}
            if not any(quantities.values()):
                raise ValidationFailed(
                    {"lot": ["No kit of this lot is in the depot with its expiry ahead."]}
                )
        else:
            assert request.count is not None
            ratios = {arm.id: arm.ratio for arm in ctx.definition.arms}
            try:
                quantities = balanced_counts(request.count, ratios)
            except ValueError as error:
                raise ValidationFailed({"count": [f"{str(error).capitalize()}."]}) from None
            by_arm = _depot_by_arm(session, ctx, cutoff)
        chosen = _choose(by_arm, quantities)
        now = ctx.clock()
        shipment = Shipment(
            site_id=site.id,
            status=SHIPMENT_IN_TRANSIT,
            origin=MANUAL,
            lot=request.lot,
            created_at=now,
            created_by=actor.name,
            dispatched_at=now,
        )
        session.add(shipment)
        session.flush()
        kits = _ship(session, shipment, chosen)
        _audit_created(session, ctx, actor, shipment, kits)
        return _view(shipment, kits)


def _in_transit_by_arm(session: Session, ctx: TrialContext, site_id: str) -> Counter[str]:
    arm_of = _arm_of(ctx)
    rows = session.execute(
        select(Kit.kit_number, Kit.sealed_arm).where(
            Kit.site_id == site_id, Kit.status == IN_TRANSIT
        )
    )
    return Counter(arm_of(number, sealed) for number, sealed in rows)


def dispatch_shipment(
    session: Session, ctx: TrialContext, actor: Actor, shipment_id: str
) -> ShipmentView:
    """Fill and send a resupply the service requested: the kits that bring every arm of the
    site back to its ``target`` level, counting what is already on its way.

    A request that needs nothing any more is ``cancelled``. Refused (409) unless the
    shipment is ``requested``, and for a depot short of any arm it needs (the request
    stays). Audited (``shipment.created``, or ``shipment.cancelled``).
    """
    with refusals_audited(
        session, ctx, actor, shipment_refusal("dispatch", shipment_id), site=None
    ):
        MANAGE_SHIPMENTS.check(actor)
        shipment = _visible_shipment(session, actor, shipment_id)
        # The site's supply locks the site (before the depot: the documented order).
        supply = kit_service.site_supply(session, ctx, shipment.site_id)
        lock_depot(session)
        session.refresh(shipment)
        if shipment.status != SHIPMENT_REQUESTED:
            raise Conflict(f"Shipment {shipment.id} is {shipment.status}: only a request is sent.")
        dispensable = {arm: supply.count(arm) for arm in supply.arms}
        levels = ctx.definition.supply.levels(shipment.site_id)
        in_transit = _in_transit_by_arm(session, ctx, shipment.site_id)
        quantities = resupply_quantities(dispensable, in_transit, levels)
        if not any(quantities.values()):
            shipment.status = SHIPMENT_CANCELLED
            session.flush()
            ctx.audit.append(
                session,
                actor,
                "shipment.cancelled",
                str(shipment.id),
                {"shipment": shipment.id, "site": shipment.site_id, "reason": "nothing needed"},
            )
            return _view(shipment, [])
        chosen = _choose(_depot_by_arm(session, ctx, supply.cutoff), quantities)
        shipment.status = SHIPMENT_IN_TRANSIT
        shipment.dispatched_at = ctx.clock()
        session.flush()
        kits = _ship(session, shipment, chosen)
        _audit_created(session, ctx, actor, shipment, kits)
        return _view(shipment, kits)


# Reading shipments -------------------------------------------------------------------------


def _visible_shipment(session: Session, actor: Actor, shipment_id: str) -> Shipment:
    """The shipment, if the actor may see it; the same 404 whether absent or not theirs."""
    shipment = None
    if SHIPMENT_ID.fullmatch(shipment_id):
        shipment = session.get(Shipment, int(shipment_id))
    if (
        shipment is not None
        and actor.role in SITE_ROLES
        and (shipment.site_id != actor.site or shipment.status not in SITE_VISIBLE)
    ):
        shipment = None
    if shipment is None:
        raise NotFound("No shipment with this id is visible to you.")
    return shipment


def _kits_of(session: Session, shipment: Shipment) -> list[Kit]:
    return list(
        session.scalars(select(Kit).where(Kit.shipment_id == shipment.id).order_by(Kit.kit_number))
    )


def _view(
    shipment: Shipment, kits: list[str], received: dict[str, str] | None = None
) -> ShipmentView:
    return ShipmentView(
        id=shipment.id,
        site=shipment.site_id,
        status=shipment.status,
        origin=shipment.origin,
        lot=shipment.lot,
        kits=kits,
        created_at=shipment.created_at,
        dispatched_at=shipment.dispatched_at,
        received_at=shipment.received_at,
        received=received,
    )


def _full_view(session: Session, shipment: Shipment) -> ShipmentView:
    kits = _kits_of(session, shipment)
    numbers = [kit.kit_number for kit in kits]
    return _view(shipment, numbers)


def list_shipments(session: Session, actor: Actor) -> list[ShipmentView]:
    """Every shipment the actor may see, oldest first (a site: its own, once sent)."""
    READ_SHIPMENTS.check(actor)
    query = select(Shipment).order_by(Shipment.id)
    if actor.role in SITE_ROLES:
        query = query.where(Shipment.site_id == actor.site, Shipment.status.in_(SITE_VISIBLE))
    shipments = list(session.scalars(query))
    numbers: dict[int, list[str]] = {shipment.id: [] for shipment in shipments}
    if shipments:
        rows = session.execute(
            select(Kit.shipment_id, Kit.kit_number)
            .where(Kit.shipment_id.in_(list(numbers)))
            .order_by(Kit.kit_number)
        )
        for shipment_id, number in rows:
            numbers[shipment_id].append(number)
    return [_view(shipment, numbers[shipment.id]) for shipment in shipments]


def get_shipment(session: Session, actor: Actor, shipment_id: str) -> ShipmentView:
    """One shipment, if the actor may see it."""
    READ_SHIPMENTS.check(actor)
    return _full_view(session, _visible_shipment(session, actor, shipment_id))


# Receipt -----------------------------------------------------------------------------------


def receive_shipment(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    shipment_id: str,
    submission: Submission[ReceiptRequest],
) -> ShipmentView:
    """The destination's pharmacist receives a shipment: each kit in transit, exactly once,
    ``available``, ``damaged`` or ``lost``.

    Refused (404) for another site's shipment, (409) for one already received, (422) for a
    receipt that misses a kit or names one not in transit in this shipment. Audited.
    """
    with refusals_audited(
        session, ctx, actor, shipment_refusal("receive", shipment_id), site=actor.site
    ):
        RECEIVE_SHIPMENT.check(actor)
        shipment = _visible_shipment(session, actor, shipment_id)
        lock_site(session, shipment.site_id)
        session.refresh(shipment)
        if shipment.status != SHIPMENT_IN_TRANSIT:
            raise Conflict(f"Shipment {shipment.id} is {shipment.status}.")
        request = submission.load()
        travelling = {
            kit.kit_number: kit for kit in _kits_of(session, shipment) if kit.status == IN_TRANSIT
        }
        errors = {
            f"kits.{number}": ["Not a kit in transit in this shipment."]
            for number in sorted(set(request.kits) - set(travelling))
        }
        missing = sorted(set(travelling) - set(request.kits))
        if missing:
            errors["kits"] = [f"Every kit in transit exactly once; missing: {', '.join(missing)}."]
        if errors:
            raise ValidationFailed(errors)
        for number, status in request.kits.items():
            check_transition(IN_TRANSIT, status)
            travelling[number].status = status
        now = ctx.clock()
        shipment.status = SHIPMENT_RECEIVED
        shipment.received_at = now
        shipment.received_by = actor.name
        session.flush()
        received = dict(sorted(request.kits.items()))
        ctx.audit.append(
            session,
            actor,
            "shipment.received",
            str(shipment.id),
            {"shipment": shipment.id, "site": shipment.site_id, "kits": received},
            site=shipment.site_id,
        )
        return _view(shipment, sorted(travelling), received)


# Quarantine and expiry ---------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineChange:
    """A kit quarantined or released: its number, where it is, from and to which status."""

    kit_number: str
    site: str | None
    previous: str
    status: str


def _kit_for_admin(session: Session, kit_number: str) -> Kit:
    kit = None
    if kit_service.KIT_NUMBER.fullmatch(kit_number):
        kit = session.scalars(select(Kit).where(Kit.kit_number == kit_number)).one_or_none()
    if kit is None:
        raise NotFound("No kit with this number is visible to you.")
    return kit


def check_kit_transition(kit_number: str, previous: str, status: str) -> None:
    """Conflict (naming the kit's status) unless a kit may go from ``previous`` to ``status``."""
    try:
        check_transition(previous, status)
    except KitTransitionError as error:
        raise Conflict(f"Kit {kit_number}: {error}.", kit_status=previous) from None


def record_kit_status(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    kit: Kit,
    previous: str,
    status: str,
    reason: str | None,
    *,
    participant: str | None = None,
    visit: str | None = None,
    replacement: str | None = None,
) -> None:
    """Move ``kit`` from ``previous`` to ``status``, audited as ``kit.status_changed`` (its
    site's entry). Shared by the pharmacist's changes and the admin's quarantine."""
    kit.status = status
    session.flush()
    ctx.audit.append(
        session,
        actor,
        "kit.status_changed",
        kit.kit_number,
        {
            "kit": kit.kit_number,
            "site": kit.site_id,
            "from": previous,
            "to": status,
            "reason": reason,
            "participant": participant,
            "visit": visit,
            "replacement": replacement,
        },
        site=kit.site_id,
    )


def set_quarantine(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    kit_number: str,
    submission: Submission[Any],
    *,
    quarantine: bool,
) -> QuarantineChange:
    """Quarantine a kit in stock (a temperature excursion), or release it back to where it
    was (the depot, or its site's available stock), with a reason; audited either way.

    A quarantined kit is never allocated (it is not available); its site's change counter
    moves with it, so every server process's view of the site drops or regains it.
    """
    with refusals_audited(session, ctx, actor, quarantine_refusal(kit_number), site=None):
        QUARANTINE_KITS.check(actor)
        kit = _kit_for_admin(session, kit_number)
        request = submission.load()
        if kit.site_id is not None:
            lock_site(session, kit.site_id)
        else:
            lock_depot(session)
        session.refresh(kit)
        previous = kit.status
        if quarantine:
            status = QUARANTINED
            if previous not in QUARANTINABLE:
                raise Conflict(
                    f"Kit {kit_number} is {previous}: only kits in stock (in the depot or "
                    "available at a site) are quarantined."
                )
        else:
            status = IN_DEPOT if kit.site_id is None else AVAILABLE
        check_kit_transition(kit_number, previous, status)
        record_kit_status(session, ctx, actor, kit, previous, status, request.reason)
        return QuarantineChange(kit_number, kit.site_id, previous, status)


def expire_kits(session: Session, ctx: TrialContext, actor: Actor) -> dict[str, list[str]]:
    """Mark expired every kit past its blinded expiry, at every site and at the depot (R-KIT-3).

    Returns the kit numbers by site (``depot`` for the depot), only where some expired.
    """
    MANAGE_DEPOT.check(actor)
    site_ids = sorted(session.scalars(select(Site.id)))
    for site_id in site_ids:  # every site's lock, then the depot's: the documented order
        lock_site(session, site_id)
    lock_depot(session)
    expired = {site_id: kit_service.mark_expired(session, ctx, site_id) for site_id in site_ids}
    expired["depot"] = kit_service.mark_expired(session, ctx, None)
    return {where: kits for where, kits in expired.items() if kits}


# Inventory figures -------------------------------------------------------------------------


class _StockRow(NamedTuple):
    kit_number: str
    status: str
    expires_on: date
    sealed_arm: str
    allocated_at: datetime | None


def _stock_rows(session: Session, site_id: str, since: datetime) -> list[_StockRow]:
    """The site's kits in stock or on their way, and those allocated since ``since``."""
    return [
        _StockRow(*row)
        for row in session.execute(
            select(Kit.kit_number, Kit.status, Kit.expires_on, Kit.sealed_arm, Kit.allocated_at)
            .where(Kit.site_id == site_id)
            .where(
                Kit.status.in_((AVAILABLE, IN_TRANSIT))
                | (Kit.allocated_at.is_not(None) & (Kit.allocated_at >= since))
            )
        )
    ]


def _figures(rows: Iterable[_StockRow], cutoff: date, since: datetime) -> dict[str, Any]:
    """Stock figures of some kits: by blinded expiry month, dispensable, days of supply."""
    by_month: Counter[str] = Counter()
    dispensable = in_transit = recently = 0
    for row in rows:
        if row.status == AVAILABLE:
            by_month[expiry_month(row.expires_on)] += 1
            dispensable += row.expires_on > cutoff
        elif row.status == IN_TRANSIT:
            in_transit += 1
        if row.allocated_at is not None and row.allocated_at >= since:
            recently += 1
    return {
        "by_expiry_month": dict(sorted(by_month.items())),
        "dispensable": dispensable,
        "in_transit": in_transit,
        "kits_allocated_last_28_days": recently,
        "days_of_supply": days_of_supply(dispensable, recently, RATE_DAYS),
    }


def site_supply_figures(session: Session, ctx: TrialContext, site_id: str) -> dict[str, Any]:
    """The blinded figures ``GET /sites/<site>/inventory`` adds: never by arm."""
    since = ctx.clock() - timedelta(days=RATE_DAYS)
    cutoff = dispensable_after(ctx.today(), ctx.definition.do_not_dispense_days)
    return _figures(_stock_rows(session, site_id, since), cutoff, since)


def supply_report(session: Session, ctx: TrialContext, actor: Actor) -> dict[str, Any]:
    """The statistician's supply report: every site's figures by arm, and the depot's stock
    by arm and lot (R-SHIP). Unsealed here, for the one unblinded role."""
    REPORT_SUPPLY.check(actor)
    arms = [arm.id for arm in ctx.definition.arms]
    arm_of = _arm_of(ctx)
    since = ctx.clock() - timedelta(days=RATE_DAYS)
    cutoff = dispensable_after(ctx.today(), ctx.definition.do_not_dispense_days)
    sites = []
    for site in session.scalars(select(Site).order_by(Site.id)):
        by_arm: dict[str, list[_StockRow]] = {arm: [] for arm in arms}
        for row in _stock_rows(session, site.id, since):
            by_arm[arm_of(row.kit_number, row.sealed_arm)].append(row)
        levels = ctx.definition.supply.levels(site.id)
        sites.append(
            {
                "site": site.id,
                "trigger": levels.trigger,
                "target": levels.target,
                "arms": {arm: _figures(rows, cutoff, since) for arm, rows in by_arm.items()},
            }
        )
    depot: dict[str, dict[str, dict[str, Any]]] = {arm: {} for arm in arms}
    rows = session.execute(
        select(Kit.kit_number, Kit.lot, Kit.expires_on, Kit.sealed_arm).where(
            Kit.site_id.is_(None), Kit.status == IN_DEPOT
        )
    )
    for number, lot, expires_on, sealed in rows:
        entry = depot[arm_of(number, sealed)].setdefault(
            lot, {"lot": lot, "expires_on": expires_on.isoformat(), "kits": 0}
        )
        entry["kits"] += 1
    return {
        "as_of": ctx.clock(),
        "sites": sites,
        "depot": {
            arm: sorted(lots.values(), key=lambda entry: entry["lot"])
            for arm, lots in depot.items()
        },
    }


def count_in_depot(session: Session) -> int:
    """Kits at the depot, whatever their arm (for the command line's summary)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Kit)
            .where(Kit.site_id.is_(None), Kit.status == IN_DEPOT)
        )
        or 0
    )
