"""Screening and randomising participants (URS §2, §3, §4, §8; R-LIST-2, R-BLIND).

Locks are taken through :mod:`randomizer.locks`, in its one order (participant, site,
stratum, audit head).

A randomisation does its checks in URS §8's order (role, visibility, state, input,
screening window and eligibility, supply and list). A refusal is audited by
:func:`randomizer.services.refusals.refusals_audited`: nothing but its own entry remains.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keys import SealedArm
from randomizer.domain import (
    Stratum,
    failed_rules,
    kits_for_visit,
    randomisable_until,
    screening_number_for,
    visit_window,
)
from randomizer.domain.participants import (
    RANDOMIZED,
    SCREENED,
    SCREENING_NUMBER,
    SITE_CLOSED,
    RandomizationRequest,
    ScreeningRequest,
    owning_site,
    site_prefix,
)
from randomizer.errors import (
    AlreadyRandomized,
    Conflict,
    Forbidden,
    Ineligible,
    NotFound,
    Problem,
    ScreeningWindow,
    StratumExhausted,
    ValidationFailed,
)
from randomizer.locks import (
    lock_participant,
    lock_participant_and_site,
    lock_site,
    take_stratum_position,
)
from randomizer.models import (
    Kit,
    Participant,
    Site,
    Slot,
    StratumCorrection,
    Unblinding,
)
from randomizer.roles import RANDOMIZE, READ_PARTICIPANT, SCREEN, SITE_ROLES, Actor
from randomizer.services import kits as kit_service
from randomizer.services.context import TrialContext
from randomizer.services.inputs import Submission
from randomizer.services.notifications import alert_stratum_exhausted
from randomizer.services.refusals import Refusal, refusals_audited
from randomizer.services.trial_setup import SLOT_SEAL_KIND

log = logging.getLogger(__name__)

PARTICIPANT_SEAL_KIND = "participant"


@dataclass(frozen=True)
class Randomization:
    """What a site is told of a randomisation: never the arm."""

    screening_number: str
    randomization_number: str
    stratum: str
    randomized_at: datetime
    kits: list[str]
    receipt: dict[str, Any]


def screen_participant(
    session: Session, ctx: TrialContext, actor: Actor, request: ScreeningRequest
) -> Participant:
    """Record a screened participant at the actor's own site.

    A number the site sends must be one of its own (it begins with its site id and a
    hyphen), so that an "already in use" refusal can only be about the site's own
    participants; without one, the service assigns the site's next number under the trial's
    number pattern. Both are decided under the site's lock (as in :mod:`randomizer.locks`),
    so that no two processes give one number.
    """
    SCREEN.check(actor)
    if request.site != actor.site:
        raise Forbidden(f"You may screen participants only at your own site ({actor.site}).")
    if request.screened_on > ctx.today():
        raise ValidationFailed({"screened_on": ["Must not be in the future (UTC)."]})
    pattern = ctx.definition.screening_number_pattern
    if request.screening_number is None and pattern is None:  # the schema requires it then
        raise ValidationFailed({"screening_number": ["Missing data for required field."]})
    site = lock_site(session, request.site)
    if site.status == SITE_CLOSED:
        raise Conflict(f"Site {site.id} is closed: it screens no one.")
    site_ids = session.scalars(select(Site.id)).all()
    if request.screening_number is not None:
        number = request.screening_number
        _check_own_number(number, site.id, site_ids)
    else:
        assert pattern is not None  # checked above
        number = _next_screening_number(session, site.id, pattern, site_ids)
    participant = Participant(
        screening_number=number,
        site_id=request.site,
        status=SCREENED,
        screened_on=request.screened_on,
        screening_strata=dict(request.strata),
    )
    try:
        with session.begin_nested():
            session.add(participant)
    except IntegrityError:
        raise Conflict(f"Screening number {number} is already in use at site {site.id}.") from None
    ctx.audit.append(
        session,
        actor,
        "participant.screened",
        participant.screening_number,
        {
            "site": participant.site_id,
            "screened_on": participant.screened_on.isoformat(),
            "strata": dict(request.strata),
            "number_assigned": request.screening_number is None,
        },
        site=participant.site_id,
    )
    return participant


def _check_own_number(number: str, site: str, site_ids: Sequence[str]) -> None:
    """422 unless ``number`` is among ``site``'s numbers; decided from the site ids alone, so
    the answer is the same whether or not another site holds the number."""
    prefix = site_prefix(site)
    if not number.startswith(prefix):
        raise ValidationFailed(
            {"screening_number": [f"Must begin with your site id and a hyphen ({prefix}...)."]}
        )
    owner = owning_site(number, site_ids)
    if owner is not None and owner != site:  # a longer site id that begins with ours
        raise ValidationFailed(
            {"screening_number": [f"Numbers beginning with {owner}- are site {owner}'s."]}
        )


def _next_screening_number(
    session: Session, site_id: str, pattern: str, site_ids: Sequence[str]
) -> str:
    """The site's first number under ``pattern`` (n = 1, 2, ...) that it has not used yet.

    The caller holds the site's lock. A site with k participants has a free number among
    the first k + 1, so this reads the site's numbers once and stops by then.
    """
    taken = set(
        session.scalars(select(Participant.screening_number).where(Participant.site_id == site_id))
    )
    for n in itertools.count(1):
        number = screening_number_for(pattern, site_id, n)
        if not SCREENING_NUMBER.fullmatch(number):
            raise Conflict(f"Site {site_id} has used every screening number of {pattern}.")
        if number not in taken and owning_site(number, site_ids) == site_id:
            return number
    raise AssertionError("unreachable")  # itertools.count never ends


def find_participant(
    session: Session, actor: Actor, screening_number: str, *, lock: bool = False
) -> Participant:
    """The participant, if the actor may see it; the same 404 whether absent or elsewhere."""
    if lock:
        return _find(actor, screening_number, lambda number: lock_participant(session, number))
    return _find(
        actor,
        screening_number,
        lambda number: session.execute(
            select(Participant).where(Participant.screening_number == number)
        ).scalar_one_or_none(),
    )


_P = TypeVar("_P", Participant, Row[Any])


def _find(actor: Actor, screening_number: str, lookup: Callable[[str], _P | None]) -> _P:
    """What ``lookup`` finds of a well-formed ``screening_number`` (an object or a row), if
    the actor may see it; the same 404 whether it is absent, malformed or at another site."""
    participant = lookup(screening_number) if SCREENING_NUMBER.fullmatch(screening_number) else None
    if participant is None or not actor.may_see_site(participant.site_id):
        raise NotFound("No participant with this screening number is visible to you.")
    return participant


#: The most participants one listing shows (a search narrows it).
LISTING_LIMIT = 500


def list_participants(
    session: Session, ctx: TrialContext, actor: Actor, number_prefix: str = ""
) -> list[dict[str, Any]]:
    """The participants the actor may see, by site and screening number, with their next
    visit; those whose screening number begins with ``number_prefix`` when given.

    A site role sees its own site's; the medical monitor and the sponsor every site's. Never
    an arm; the order (site, number) and the visits say nothing of one.
    """
    READ_PARTICIPANT.check(actor)
    query = select(Participant).order_by(Participant.site_id, Participant.screening_number)
    if actor.role in SITE_ROLES:
        query = query.where(Participant.site_id == actor.site)
    if number_prefix:
        query = query.where(Participant.screening_number.startswith(number_prefix, autoescape=True))
    participants = session.scalars(query.limit(LISTING_LIMIT)).all()
    kits_of: dict[int, list[Kit]] = {}
    if participants:
        for kit in session.scalars(
            select(Kit)
            .where(Kit.participant_id.in_([p.id for p in participants]))
            .order_by(Kit.kit_number)
        ):
            kits_of.setdefault(kit.participant_id or 0, []).append(kit)
    listing = []
    for participant in participants:
        due = [
            visit
            for visit in visit_schedule(ctx, participant, kits_of.get(participant.id, []))
            if visit["status"] == "due"
        ]
        listing.append(
            {
                "screening_number": participant.screening_number,
                "site": participant.site_id,
                "status": participant.status,
                "screened_on": participant.screened_on,
                "randomization_number": participant.randomization_number,
                "unblinded": participant.unblinded,
                "next_visit": due[0] if due else None,
            }
        )
    return listing


def expected_stratum(ctx: TrialContext, site: Site, participant: Participant) -> Stratum:
    """The stratum a screened participant will be randomised in: the site's factors and
    those sent at screening (shown to the site for confirmation before it randomises)."""
    return _stratum_of(ctx, site.attributes, participant.screening_strata)


def _stratum_of(
    ctx: TrialContext, site_attributes: dict[str, Any], screening_strata: dict[str, Any]
) -> Stratum:
    return ctx.definition.stratum_for({**site_attributes, **screening_strata})


def stratum_to_confirm(session: Session, ctx: TrialContext, participant: Participant) -> Stratum:
    """:func:`expected_stratum` of a participant, its site read here."""
    return expected_stratum(ctx, session.get_one(Site, participant.site_id), participant)


def participant_view(
    session: Session, ctx: TrialContext, participant: Participant
) -> dict[str, Any]:
    """The participant as ``GET /participants/<sn>`` shows it: no arm."""
    kits = session.scalars(
        select(Kit).where(Kit.participant_id == participant.id).order_by(Kit.kit_number)
    ).all()
    stratum = (
        ctx.definition.stratum(participant.stratum_number).key
        if participant.stratum_number is not None
        else None
    )
    correction = latest_correction(session, participant)
    corrected = (
        ctx.definition.stratum(correction.stratum_number).key if correction is not None else None
    )
    return {
        "screening_number": participant.screening_number,
        "site": participant.site_id,
        "status": participant.status,
        "screened_on": participant.screened_on,
        "stratum": stratum,
        "randomization_number": participant.randomization_number,
        "randomized_at": participant.randomized_at,
        "kits": [kit.kit_number for kit in kits],
        "unblinded": participant.unblinded,
        "unblindings": unblindings_of(session, participant),
        "corrected_stratum": corrected,
        "visits": visit_schedule(ctx, participant, kits),
    }


def visit_schedule(
    ctx: TrialContext, participant: Participant, kits: Sequence[Kit]
) -> list[dict[str, Any]]:
    """The participant's visits, from its kits: target day, window and status; never the arm.

    Status: ``dispensed`` (with its kits and day), ``due`` (its window has not closed),
    ``missed`` (closed without dispensing), ``stopped`` (a dispensing visit after withdrawal,
    discontinuation or a randomisation in error), or ``assessment`` (a visit that dispenses
    nothing). Empty before randomisation.
    """
    if participant.randomized_at is None:
        return []
    definition = ctx.definition
    by_visit: dict[str, list[Kit]] = {}
    for kit in kits:
        by_visit.setdefault(kit.visit or "", []).append(kit)
    randomized_on, today = participant.randomized_at.date(), ctx.today()
    schedule = []
    for visit in definition.visits:
        opens, closes = visit_window(randomized_on, visit, definition.visit_window_days)
        given = by_visit.get(visit.id, [])
        item: dict[str, Any] = {
            "visit": visit.id,
            "week": visit.week,
            "target_day": (randomized_on + timedelta(days=visit.day())).isoformat(),
            "window": {"from": opens.isoformat(), "to": closes.isoformat()},
            "dispenses": visit.dispenses,
        }
        if given:
            allocated = [kit.allocated_at for kit in given if kit.allocated_at is not None]
            item["status"] = "dispensed"
            item["kits"] = [kit.kit_number for kit in given]
            item["dispensed_on"] = min(allocated).date().isoformat() if allocated else None
        elif not visit.dispenses:
            item["status"] = "assessment"
        elif participant.status != RANDOMIZED:
            item["status"] = "stopped"
        else:
            item["status"] = "due" if today <= closes else "missed"
        schedule.append(item)
    return schedule


def latest_correction(session: Session, participant: Participant) -> StratumCorrection | None:
    """The participant's latest stratum correction, if any."""
    return session.scalars(
        select(StratumCorrection)
        .where(StratumCorrection.participant_id == participant.id)
        .order_by(StratumCorrection.corrected_at.desc())
        .limit(1)
    ).one_or_none()


def participant_arm(ctx: TrialContext, participant: Participant) -> str:
    """The participant's arm id, unsealed: for the allocation of its kits and for unblinding.

    Never put it in anything a blinded role receives.
    """
    if participant.sealed_arm is None:
        raise ValueError(f"participant {participant.screening_number} has no arm")
    return ctx.sealer.unseal_arm(
        SealedArm.from_text(participant.sealed_arm),
        PARTICIPANT_SEAL_KIND,
        participant.screening_number,
    )


def unblindings_of(session: Session, participant: Participant) -> list[dict[str, Any]]:
    """Who unblinded a participant and when, oldest first: what blinded readers may see."""
    rows = session.scalars(
        select(Unblinding)
        .where(Unblinding.participant_id == participant.id)
        .order_by(Unblinding.audit_seq)
    )
    return [{"by": row.user_name, "role": row.role, "at": row.unblinded_at} for row in rows]


def randomization_refusal(screening_number: str) -> Refusal:
    """How a refused randomisation is audited (by the service, and by its adapters)."""
    return Refusal(
        "participant.randomization_refused", screening_number, SCREENING_NUMBER, "screening_number"
    )


def randomize_participant(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[RandomizationRequest],
) -> Randomization:
    """Randomise a screened participant: next slot of its stratum, week-1 kits of its arm.

    ``submission`` is validated only after the role, visibility and state checks, as URS §8
    orders them. Every refusal is audited as ``participant.randomization_refused`` and
    leaves nothing else behind.
    """
    with refusals_audited(
        session,
        ctx,
        actor,
        randomization_refusal(screening_number),
        site=actor.site,
        on_refusal=lambda refusal: _alert(session, ctx, refusal),
        refuses_before_writing=True,
    ):
        return _randomize(session, ctx, actor, screening_number, submission)


def _alert(session: Session, ctx: TrialContext, refusal: Problem) -> None:
    if isinstance(refusal, StratumExhausted):
        alert_stratum_exhausted(session, ctx, refusal.extra["stratum"])


def _randomize(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[RandomizationRequest],
) -> Randomization:
    definition = ctx.definition
    RANDOMIZE.check(actor)
    # The participant and its site, locked and read in one statement (the lookup and the
    # visibility rule are find_participant's).
    participant = _find(
        actor, screening_number, lambda number: lock_participant_and_site(session, number)
    )
    if participant.status != SCREENED:
        if participant.randomization_number is not None:
            raise AlreadyRandomized(
                f"Participant {screening_number} is already randomised as "
                f"{participant.randomization_number}.",
                randomization_number=participant.randomization_number,
            )
        raise Conflict(f"Participant {screening_number} is {participant.status}.")
    site_id = participant.site_id
    _refuse_at_a_closed_site(site_id, participant.site_status)
    request = submission.load()
    until = randomisable_until(participant.screened_on, definition.screening_window_days)
    if ctx.today() > until:
        raise ScreeningWindow(
            f"Screened on {participant.screened_on.isoformat()}: randomisation was possible "
            f"until {until.isoformat()} inclusive ({definition.screening_window_days} days).",
            screened_on=participant.screened_on.isoformat(),
            randomisable_until=until.isoformat(),
        )
    failed = failed_rules(definition.eligibility_rules, request.eligibility)
    if failed:
        raise Ineligible(
            f"Participant {screening_number} does not meet "
            f"{len(failed)} eligibility criteri{'on' if len(failed) == 1 else 'a'}.",
            failed_rules=[{"id": rule.id, "text": rule.text} for rule in failed],
        )

    stratum = _stratum_of(ctx, participant.site_attributes, participant.screening_strata)
    visit = definition.first_visit()
    needed = kits_for_visit(definition, request.weight_kg, visit)
    supply = kit_service.site_supply(
        session,
        ctx,
        site_id,
        locked=kit_service.SiteLocked(participant.site_status, participant.site_kit_version),
    )
    kit_service.check_supply(supply, needed)
    # The stratum last, just before its slot: nothing is written before this statement, and
    # it writes nothing when it refuses.
    position = take_stratum_position(session, stratum.number)
    if position is None:
        log.warning("stratum %s is exhausted: the statistician is alerted", stratum.key)
        raise StratumExhausted(
            f"Every slot of stratum {stratum.key} is used; the statistician has been alerted. "
            "No slot is ever improvised.",
            stratum=stratum.key,
        )

    # Every check is made: nothing below refuses (refusals_audited(refuses_before_writing=True)
    # holds the block to that).
    kit_service.expire_past(session, ctx, supply)
    connection = session.connection()
    now = ctx.clock()
    slot = connection.execute(
        _TAKE_SLOT,
        {
            "stratum": stratum.number,
            "at": position,
            "participant": participant.id,
            "used_at": now,
        },
    ).one_or_none()
    if slot is None:  # the stratum lock makes this impossible; never give a slot twice
        raise RuntimeError(f"slot {position} of stratum {stratum.key} is already used")
    arm = ctx.sealer.unseal_arm(
        SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, slot.randomization_number
    )
    kit_numbers = kit_service.allocate_kits(
        session, ctx, supply, arm, needed, participant.id, visit.id
    )
    sealed = ctx.sealer.seal_arm(arm, PARTICIPANT_SEAL_KIND, participant.screening_number)
    connection.execute(
        _RANDOMIZE_PARTICIPANT,
        {
            "participant": participant.id,
            "new_status": RANDOMIZED,
            "new_stratum_number": stratum.number,
            "new_randomization_number": slot.randomization_number,
            "new_randomized_at": now,
            "new_weight_kg": str(request.weight_kg),
            "new_sealed_arm": sealed.to_text(),
        },
    )

    entry = ctx.audit.append(
        session,
        actor,
        "participant.randomized",
        participant.screening_number,
        {
            "site": site_id,
            "randomization_number": slot.randomization_number,
            "stratum": stratum.key,
            "visit": visit.id,
            "kits": kit_numbers,
            "weight_kg": str(request.weight_kg),
            "eligibility": {key: _json_value(value) for key, value in request.eligibility.items()},
            "sealed_arm": sealed.to_json(),
        },
        site=site_id,
    )
    receipt = ctx.audit.receipt(session, entry)
    return Randomization(
        screening_number=participant.screening_number,
        randomization_number=slot.randomization_number,
        stratum=stratum.key,
        randomized_at=now,
        kits=kit_numbers,
        receipt=receipt,
    )


# A randomisation's own writes, built once, in Core: under the site and stratum locks (on
# SQLite under the write lock) the ORM's unit of work cost more than the statements.
_SLOTS = Slot.__table__
#: Takes the slot at the stratum's position, and reads it, in one statement.
_TAKE_SLOT = (
    update(_SLOTS)
    .where(
        _SLOTS.c.stratum_number == bindparam("stratum"),
        _SLOTS.c.position == bindparam("at"),
        _SLOTS.c.participant_id.is_(None),
    )
    .values(participant_id=bindparam("participant"), used_at=bindparam("used_at"))
    .returning(_SLOTS.c.randomization_number, _SLOTS.c.sealed_arm)
)
_PARTICIPANTS = Participant.__table__
_RANDOMIZE_PARTICIPANT = (
    update(_PARTICIPANTS)
    .where(_PARTICIPANTS.c.id == bindparam("participant"))
    .values(
        {
            column: bindparam(f"new_{column}")
            for column in (
                "status",
                "stratum_number",
                "randomization_number",
                "randomized_at",
                "weight_kg",
                "sealed_arm",
            )
        }
    )
)


def _refuse_at_a_closed_site(site_id: str, status: str) -> None:
    if status == SITE_CLOSED:
        raise Conflict(f"Site {site_id} is closed: it randomises no one.")


def _json_value(value: int | Decimal | bool) -> int | str | bool:
    """Audit data holds no floats: decimals are written as strings (URS §7)."""
    return str(value) if isinstance(value, Decimal) else value
