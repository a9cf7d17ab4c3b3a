"""Dispensing at the scheduled visits and kit status changes (R-DISP, R-KIT-2, R-BLIND).

A dispensing allocates the visit's kit count (from weight and visit only) of the
participant's arm at its site, chosen as at randomisation: the site must hold that many
kits of EVERY arm (R-BLIND-2), decided before and independently of the allocation. Each
visit is dispensed once, inside its window. Kit status changes follow the state machine of
:mod:`randomizer.domain.kits`; an allocated kit marked damaged or lost is replaced, in the
same transaction, by a kit of the same arm at the same site. Every dispensing, every status
change and every refusal of either is one audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from randomizer.domain import kits_for_visit, visit_window
from randomizer.domain.kits import (
    ALLOCATED,
    KIT_STATUSES,
    NEEDS_REPLACEMENT,
)
from randomizer.domain.participants import (
    RANDOMIZED,
    SCREENING_NUMBER,
    SITE_ID,
    DispenseRequest,
    KitStatusRequest,
)
from randomizer.errors import AlreadyDispensed, Conflict, NotFound, ValidationFailed, VisitWindow
from randomizer.locks import lock_participant, lock_site
from randomizer.models import Kit, Participant, Site
from randomizer.roles import (
    CHANGE_KIT_STATUS,
    DISPENSE,
    READ_INVENTORY,
    READ_KIT,
    SITE_ROLES,
    Actor,
)
from randomizer.services import kits as kit_service
from randomizer.services import shipments
from randomizer.services.context import TrialContext
from randomizer.services.inputs import Submission
from randomizer.services.kits import KIT_NUMBER
from randomizer.services.participants import find_participant, participant_arm
from randomizer.services.refusals import Refusal, refusals_audited


@dataclass(frozen=True)
class Dispensing:
    """What the site is told of a dispensing: the visit, its kit numbers, the day."""

    screening_number: str
    visit: str
    kits: list[str]
    dispensed_on: date


def _kits_of_visit(session: Session, participant: Participant, visit: str) -> list[Kit]:
    return list(
        session.scalars(
            select(Kit)
            .where(Kit.participant_id == participant.id, Kit.visit == visit)
            .order_by(Kit.kit_number)
        )
    )


def dispense_refusal(screening_number: str) -> Refusal:
    """How a refused dispensing is audited (by the service, and by its adapters)."""
    return Refusal(
        "participant.dispense_refused", screening_number, SCREENING_NUMBER, "screening_number"
    )


def kit_status_refusal(kit_number: str) -> Refusal:
    """How a refused kit status change is audited (by the service, and by its adapters)."""
    return Refusal("kit.status_change_refused", kit_number, KIT_NUMBER, "kit_number")


def dispense_kits(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[DispenseRequest],
) -> Dispensing:
    """Allocate a visit's kits to a randomised participant; audited either way."""
    with refusals_audited(session, ctx, actor, dispense_refusal(screening_number), site=actor.site):
        return _dispense(session, ctx, actor, screening_number, submission)


def _dispense(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[DispenseRequest],
) -> Dispensing:
    definition = ctx.definition
    DISPENSE.check(actor)
    participant = find_participant(session, actor, screening_number, lock=True)
    if participant.status != RANDOMIZED:
        raise Conflict(
            f"Participant {screening_number} is {participant.status}: kits are dispensed only "
            "to randomised participants still on treatment."
        )
    request = submission.load()
    visit = definition.visit(request.visit)
    if not visit.dispenses:
        raise ValidationFailed({"visit": [f"Visit {visit.id} dispenses no kits."]})
    given = _kits_of_visit(session, participant, visit.id)
    if given:
        numbers = [kit.kit_number for kit in given]
        raise AlreadyDispensed(
            f"Visit {visit.id} of participant {screening_number} was dispensed already.",
            visit=visit.id,
            kits=numbers,
        )
    assert participant.randomized_at is not None
    opens, closes = visit_window(
        participant.randomized_at.date(), visit, definition.visit_window_days
    )
    today = ctx.today()
    if not opens <= today <= closes:
        raise VisitWindow(
            f"Visit {visit.id} may be dispensed from {opens.isoformat()} to "
            f"{closes.isoformat()} inclusive; today is {today.isoformat()}.",
            visit=visit.id,
            window={"from": opens.isoformat(), "to": closes.isoformat()},
        )
    needed = kits_for_visit(definition, request.weight_kg, visit)
    supply = kit_service.reserve_supply(session, ctx, participant.site_id, needed)
    numbers = kit_service.allocate_kits(
        session, ctx, supply, participant_arm(ctx, participant), needed, participant.id, visit.id
    )
    ctx.audit.append(
        session,
        actor,
        "participant.dispensed",
        screening_number,
        {
            "site": participant.site_id,
            "visit": visit.id,
            "kits": numbers,
            "weight_kg": str(request.weight_kg),
            "dispensed_on": today.isoformat(),
        },
        site=participant.site_id,
    )
    return Dispensing(screening_number, visit.id, numbers, today)


# Kits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KitStatusChange:
    """A kit's status change, and the replacement it was given, if any."""

    kit_number: str
    previous: str
    status: str
    replacement: str | None


def _visible_kit(session: Session, actor: Actor, kit_number: str) -> Kit:
    """The kit, if the actor may see it; the same 404 whether absent or at another site."""
    kit = None
    if KIT_NUMBER.fullmatch(kit_number):
        kit = session.scalars(select(Kit).where(Kit.kit_number == kit_number)).one_or_none()
    if kit is None:
        visible = False
    elif kit.site_id is None:  # at the depot: for the roles that see every site
        visible = actor.role not in SITE_ROLES
    else:
        visible = actor.may_see_site(kit.site_id)
    if not visible:
        raise NotFound("No kit with this number is visible to you.")
    return kit


def change_kit_status(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    kit_number: str,
    submission: Submission[KitStatusRequest],
) -> KitStatusChange:
    """Change a kit's status along the state machine; replace an allocated kit lost or damaged.

    Refused (409) for a change the state machine does not allow, and (409 insufficient
    supply, decided over every arm) when a replacement is due and the site cannot give one:
    then nothing changes. Audited either way.
    """
    with refusals_audited(session, ctx, actor, kit_status_refusal(kit_number), site=actor.site):
        return _change_kit_status(session, ctx, actor, kit_number, submission)


def _change_kit_status(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    kit_number: str,
    submission: Submission[KitStatusRequest],
) -> KitStatusChange:
    CHANGE_KIT_STATUS.check(actor)
    kit = _visible_kit(session, actor, kit_number)
    # Lock order: the participant the kit belongs to, then the site (its kits).
    participant = None
    if kit.participant_id is not None:
        owner = session.get_one(Participant, kit.participant_id)
        participant = lock_participant(session, owner.screening_number)
    request = submission.load()
    if kit.site_id is None:
        raise Conflict(f"Kit {kit_number} is at the depot: an admin ships or quarantines it.")
    lock_site(session, kit.site_id)
    session.refresh(kit)
    previous = kit.status
    shipments.check_kit_transition(kit_number, previous, request.status)
    replacement = None
    if previous == ALLOCATED and request.status in NEEDS_REPLACEMENT:
        assert participant is not None and kit.visit is not None
        supply = kit_service.reserve_supply(session, ctx, kit.site_id, 1)
        (replacement,) = kit_service.allocate_kits(
            session,
            ctx,
            supply,
            participant_arm(ctx, participant),
            1,
            participant.id,
            kit.visit,
            replaces=kit.id,
        )
    shipments.record_kit_status(
        session,
        ctx,
        actor,
        kit,
        previous,
        request.status,
        request.reason,
        participant=participant.screening_number if participant else None,
        visit=kit.visit,
        replacement=replacement,
    )
    return KitStatusChange(kit_number, previous, request.status, replacement)


def kit_view(session: Session, actor: Actor, kit_number: str) -> dict[str, Any]:
    """A kit as its site's pharmacist or an admin sees it: never its arm."""
    READ_KIT.check(actor)
    kit = _visible_kit(session, actor, kit_number)
    participant = session.get_one(Participant, kit.participant_id) if kit.participant_id else None
    replaces = session.get(Kit, kit.replaces_kit_id) if kit.replaces_kit_id else None
    return {
        "kit_number": kit.kit_number,
        "status": kit.status,
        "site": kit.site_id,
        "lot": kit.lot,
        "expires_on": kit.expires_on,
        "participant": participant.screening_number if participant else None,
        "visit": kit.visit,
        "allocated_at": kit.allocated_at,
        "replaces": replaces.kit_number if replaces else None,
    }


def site_inventory(
    session: Session, ctx: TrialContext, actor: Actor, site_id: str
) -> dict[str, Any]:
    """Counts of a site's kits by status (every status, zeros too), its available kits by
    blinded expiry month and its days of supply at the recent rate; never by arm."""
    READ_INVENTORY.check(actor)
    if (
        not SITE_ID.fullmatch(site_id)
        or not actor.may_see_site(site_id)
        or session.get(Site, site_id) is None
    ):
        raise NotFound("No site with this id is visible to you.")
    counts = dict(
        session.execute(
            select(Kit.status, func.count()).where(Kit.site_id == site_id).group_by(Kit.status)
        ).all()
    )
    return {
        "site": site_id,
        "counts": {status: counts.get(status, 0) for status in KIT_STATUSES},
        **shipments.site_supply_figures(session, ctx, site_id),
        "as_of": ctx.clock(),
    }


#: The most kits one page of a site's kit list shows.
KIT_PAGE = 100


def site_kits(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    site_id: str,
    status: str | None = None,
    page: int = 0,
) -> list[dict[str, Any]]:
    """A site's kits (of one status when given), earliest expiry first: number, status, lot,
    expiry and to whom and at which visit each was given; never an arm.

    The order (expiry, then kit number, both blind) and the page size say nothing of an arm.
    """
    site_inventory(session, ctx, actor, site_id)  # the same role and visibility checks
    query = select(Kit).where(Kit.site_id == site_id)
    if status is not None:
        query = query.where(Kit.status == status)
    kits = session.scalars(
        query.order_by(Kit.expires_on, Kit.kit_number)
        .offset(max(page, 0) * KIT_PAGE)
        .limit(KIT_PAGE)
    ).all()
    owners = {
        participant.id: participant.screening_number
        for participant in session.scalars(
            select(Participant).where(
                Participant.id.in_({kit.participant_id for kit in kits if kit.participant_id})
            )
        )
    }
    return [
        {
            "kit_number": kit.kit_number,
            "status": kit.status,
            "lot": kit.lot,
            "expires_on": kit.expires_on,
            "participant": owners.get(kit.participant_id) if kit.participant_id else None,
            "visit": kit.visit,
        }
        for kit in kits
    ]
