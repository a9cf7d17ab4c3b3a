"""Screening and randomising participants (URS §2, §3, §4, §8; R-LIST-2, R-BLIND).

Lock order, the same in every transaction so that none can wait on another in a cycle:
participant row, then stratum row, then the site row (standing for the site's kits), then
the audit head (taken by the audit log's append, always last). On SQLite the whole
transaction holds the database's write lock from ``BEGIN IMMEDIATE`` on.

A randomisation does its checks in URS §8's order (role, visibility, state, input,
screening window and eligibility, supply and list). A refusal rolls back to a savepoint,
so nothing but its own audit entry remains, and that entry commits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keys import SealedArm
from randomizer.domain import failed_rules, kits_for_visit, randomisable_until
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
from randomizer.models import Kit, Participant, Site, Slot, Stratum
from randomizer.roles import RANDOMIZE, Actor
from randomizer.services import kits as kit_service
from randomizer.services.context import TrialContext
from randomizer.services.trial_setup import SLOT_SEAL_KIND

log = logging.getLogger(__name__)

#: ``\A``/``\Z``, not ``^``/``$``: ``$`` also matches before a trailing newline, which let
#: "S-1\n" (and 33-character numbers, a 500 on PostgreSQL's VARCHAR(32)) through.
SCREENING_NUMBER = re.compile(r"\A[A-Za-z0-9-]{1,32}\Z")
#: The same rule in ECMA-262 syntax, for the OpenAPI document.
SCREENING_NUMBER_PATTERN = "^[A-Za-z0-9-]{1,32}$"
PARTICIPANT_SEAL_KIND = "participant"

SCREENED = "screened"
RANDOMIZED = "randomized"
RANDOMIZED_IN_ERROR = "randomized_in_error"
WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class ScreeningRequest:
    """A validated screening request (``POST /participants``)."""

    screening_number: str
    site: str
    screened_on: date
    strata: Mapping[str, str]


@dataclass(frozen=True)
class RandomizationRequest:
    """A validated randomisation request: weight and every eligibility answer, typed."""

    weight_kg: Decimal
    eligibility: Mapping[str, int | Decimal | bool]


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
    """Record a screened participant at the actor's own site."""
    if request.site != actor.site:
        raise Forbidden(f"You may screen participants only at your own site ({actor.site}).")
    if request.screened_on > ctx.today():
        raise ValidationFailed({"screened_on": ["Must not be in the future (UTC)."]})
    if session.get(Site, request.site) is None:  # a user's site always exists; belt and braces
        raise ValidationFailed({"site": ["No such site."]})
    participant = Participant(
        screening_number=request.screening_number,
        site_id=request.site,
        status=SCREENED,
        screened_on=request.screened_on,
        screening_strata=dict(request.strata),
    )
    try:
        with session.begin_nested():
            session.add(participant)
    except IntegrityError:
        raise Conflict(
            f"Screening number {request.screening_number} is already in use in this trial."
        ) from None
    ctx.audit.append(
        session,
        actor,
        "participant.screened",
        participant.screening_number,
        {
            "site": participant.site_id,
            "screened_on": participant.screened_on.isoformat(),
            "strata": dict(request.strata),
        },
        site=participant.site_id,
    )
    return participant


def find_participant(
    session: Session, actor: Actor, screening_number: str, *, lock: bool = False
) -> Participant:
    """The participant, if the actor may see it; the same 404 whether absent or elsewhere."""
    participant = None
    if SCREENING_NUMBER.fullmatch(screening_number):
        query = select(Participant).where(Participant.screening_number == screening_number)
        if lock:
            query = query.with_for_update()
        participant = session.execute(query).scalar_one_or_none()
    if participant is None or not actor.may_see_site(participant.site_id):
        raise NotFound("No participant with this screening number is visible to you.")
    return participant


def participant_view(
    session: Session, ctx: TrialContext, participant: Participant
) -> dict[str, Any]:
    """The participant as ``GET /participants/<sn>`` shows it: no arm."""
    kits = session.scalars(
        select(Kit.kit_number).where(Kit.participant_id == participant.id).order_by(Kit.kit_number)
    ).all()
    stratum = (
        ctx.definition.stratum(participant.stratum_number).key
        if participant.stratum_number is not None
        else None
    )
    return {
        "screening_number": participant.screening_number,
        "site": participant.site_id,
        "status": participant.status,
        "screened_on": participant.screened_on,
        "stratum": stratum,
        "randomization_number": participant.randomization_number,
        "randomized_at": participant.randomized_at,
        "kits": list(kits),
        "unblinded": participant.unblinded,
    }


def randomize_participant(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    load_request: Callable[[], RandomizationRequest],
) -> Randomization:
    """Randomise a screened participant: next slot of its stratum, week-1 kits of its arm.

    ``load_request`` parses and validates the body; it is called only after the role,
    visibility and state checks, as URS §8 orders them. Every refusal is audited as
    ``participant.randomization_refused`` and leaves nothing else behind.
    """
    try:
        with session.begin_nested():
            return _randomize(session, ctx, actor, screening_number, load_request)
    except Problem as refusal:
        _record_refusal(session, ctx, actor, screening_number, refusal)
        raise


def _randomize(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    load_request: Callable[[], RandomizationRequest],
) -> Randomization:
    definition = ctx.definition
    if actor.role not in RANDOMIZE:
        raise Forbidden("Your role may not randomise participants.")
    participant = find_participant(session, actor, screening_number, lock=True)
    if participant.status != SCREENED:
        if participant.randomization_number is not None:
            raise AlreadyRandomized(
                f"Participant {screening_number} is already randomised as "
                f"{participant.randomization_number}.",
                randomization_number=participant.randomization_number,
            )
        raise Conflict(f"Participant {screening_number} is {participant.status}.")
    request = load_request()
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

    site = session.get_one(Site, participant.site_id)
    stratum = definition.stratum_for({**site.attributes, **participant.screening_strata})
    stratum_row = session.execute(
        select(Stratum).where(Stratum.number == stratum.number).with_for_update()
    ).scalar_one()
    kit_service.lock_site(session, site.id)
    visit = definition.first_visit()
    needed = kits_for_visit(definition, request.weight_kg, visit)
    by_arm = kit_service.dispensable_kits_by_arm(session, ctx, site.id)
    kit_service.check_supply(by_arm, needed, site.id)
    if stratum_row.next_position > stratum_row.size:
        log.warning("stratum %s is exhausted: alert the statistician", stratum.key)
        raise StratumExhausted(
            f"Every slot of stratum {stratum.key} is used; the statistician has been alerted. "
            "No slot is ever improvised.",
            stratum=stratum.key,
        )

    slot = session.execute(
        select(Slot).where(
            Slot.stratum_number == stratum.number, Slot.position == stratum_row.next_position
        )
    ).scalar_one()
    arm = ctx.sealer.unseal_arm(
        SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, slot.randomization_number
    )
    kit_numbers = kit_service.allocate_kits(
        session, ctx, by_arm[arm], needed, participant, visit.id
    )
    now = ctx.clock()
    stratum_row.next_position += 1
    slot.participant_id = participant.id
    slot.used_at = now
    sealed = ctx.sealer.seal_arm(arm, PARTICIPANT_SEAL_KIND, participant.screening_number)
    participant.status = RANDOMIZED
    participant.stratum_number = stratum.number
    participant.randomization_number = slot.randomization_number
    participant.randomized_at = now
    participant.weight_kg = str(request.weight_kg)
    participant.sealed_arm = sealed.to_text()
    session.flush()

    entry = ctx.audit.append(
        session,
        actor,
        "participant.randomized",
        participant.screening_number,
        {
            "site": site.id,
            "randomization_number": slot.randomization_number,
            "stratum": stratum.key,
            "visit": visit.id,
            "kits": kit_numbers,
            "weight_kg": str(request.weight_kg),
            "eligibility": {key: _json_value(value) for key, value in request.eligibility.items()},
            "sealed_arm": sealed.to_json(),
        },
        site=site.id,
    )
    checkpoint = ctx.audit.checkpoint(session)
    size = entry.seq + 1
    receipt = {
        "seq": entry.seq,
        "entry": entry.canonical.decode("utf-8"),
        "checkpoint": checkpoint,
        "inclusion_proof": ctx.audit.inclusion_proof(session, entry.seq, size),
    }
    return Randomization(
        screening_number=participant.screening_number,
        randomization_number=slot.randomization_number,
        stratum=stratum.key,
        randomized_at=now,
        kits=kit_numbers,
        receipt=receipt,
    )


def _record_refusal(
    session: Session, ctx: TrialContext, actor: Actor, screening_number: str, refusal: Problem
) -> None:
    """Audit a refused randomisation; the refusal then commits with its entry only."""
    data: dict[str, Any] = {"reason": refusal.type_name, "status": refusal.status}
    if "failed_rules" in refusal.extra:
        data["failed_rules"] = [rule["id"] for rule in refusal.extra["failed_rules"]]
    if "errors" in refusal.extra:
        # Field paths may echo keys a client invented: keep them short and printable.
        data["fields"] = sorted({_printable(path) for path in refusal.extra["errors"]})[:50]
    if "randomization_number" in refusal.extra:
        data["randomization_number"] = refusal.extra["randomization_number"]
    valid = SCREENING_NUMBER.fullmatch(screening_number) is not None
    if not valid:
        data["screening_number"] = _printable(screening_number)
    ctx.audit.append(
        session,
        actor,
        "participant.randomization_refused",
        screening_number if valid else None,
        data,
        site=actor.site,
    )
    refusal.recorded = True


def _json_value(value: int | Decimal | bool) -> int | str | bool:
    """Audit data holds no floats: decimals are written as strings (URS §7)."""
    return str(value) if isinstance(value, Decimal) else value


def _printable(text: str, limit: int = 64) -> str:
    cleaned = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
