"""A participant's lifecycle after randomisation, and corrections (R-LIFE, R-FIX).

Withdrawal and discontinuation (coordinator or investigator of the site) end dispensing; a
participant randomised in error is flagged by an admin (its slot stays consumed); a wrong
stratum is corrected beside the original by an admin, and the stratum used at
randomisation never changes. Nothing is edited in place: each is one audit entry, and so is
each refusal. The web pages pass the admin's electronic signature with a correction (their
password again and what it means): checked last, refused (422) if the password is not theirs,
and recorded in the correction's entry (21 CFR 11.200).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from randomizer.domain.participants import (
    DISCONTINUED,
    PARTICIPANT_TRANSITIONS,
    RANDOMIZED_IN_ERROR,
    SCREENING_NUMBER,
    WITHDRAWN,
    ReasonRequest,
    StratumCorrectionRequest,
)
from randomizer.errors import Conflict, ValidationFailed
from randomizer.models import Participant, Site, StratumCorrection
from randomizer.roles import CHANGE_PARTICIPANT_STATUS, CORRECT_PARTICIPANT, Actor, Permission
from randomizer.services.context import TrialContext
from randomizer.services.inputs import Submission
from randomizer.services.participants import (
    find_participant,
    latest_correction,
    participant_view,
)
from randomizer.services.refusals import Refusal, refusals_audited
from randomizer.services.users import Signature, signature_record


@dataclass(frozen=True)
class LifecycleStep:
    """One change of a participant's status: which, and the audit action it is recorded as."""

    status: str
    action: str
    permission: Permission


WITHDRAW = LifecycleStep(WITHDRAWN, "participant.withdrawn", CHANGE_PARTICIPANT_STATUS)
DISCONTINUE = LifecycleStep(DISCONTINUED, "participant.discontinued", CHANGE_PARTICIPANT_STATUS)
FLAG_ERROR = LifecycleStep(
    RANDOMIZED_IN_ERROR, "participant.flagged_randomized_in_error", CORRECT_PARTICIPANT
)


STRATUM_CORRECTED = "participant.stratum_corrected"


def lifecycle_refusal(action: str, screening_number: str) -> Refusal:
    """How a refused lifecycle change or correction is audited (service and adapters)."""
    return Refusal(f"{action}_refused", screening_number, SCREENING_NUMBER, "screening_number")


def change_participant_status(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    step: LifecycleStep,
    submission: Submission[ReasonRequest],
    signature: Signature | None = None,
) -> Participant:
    """Withdraw, discontinue or flag a participant, if its lifecycle allows it (409 if not).

    With a ``signature``, it is checked after the input and recorded in the entry.
    """
    with refusals_audited(
        session, ctx, actor, lifecycle_refusal(step.action, screening_number), site=actor.site
    ):
        step.permission.check(actor)
        participant = find_participant(session, actor, screening_number, lock=True)
        previous = participant.status
        if step.status not in PARTICIPANT_TRANSITIONS.get(previous, frozenset()):
            raise Conflict(
                f"Participant {screening_number} is {previous}: it cannot become {step.status}.",
                participant_status=previous,
            )
        request = submission.load()
        signed = _signed(session, ctx, actor, signature)
        participant.status = step.status
        session.flush()
        ctx.audit.append(
            session,
            actor,
            step.action,
            screening_number,
            {
                "site": participant.site_id,
                "from": previous,
                "to": step.status,
                "reason": request.reason,
                **signed,
            },
            site=participant.site_id,
        )
        return participant


def correct_stratum(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[StratumCorrectionRequest],
    signature: Signature | None = None,
) -> Participant:
    """Record the right screening factors of a randomised participant, beside the original.

    The randomisation stands (stratum, slot, kits); the correction says which stratum the
    participant belonged to, for the analysis. With a ``signature``, it is checked after the
    input and recorded in the entry. Returns the participant.
    """
    action = STRATUM_CORRECTED
    with refusals_audited(
        session, ctx, actor, lifecycle_refusal(action, screening_number), site=actor.site
    ):
        CORRECT_PARTICIPANT.check(actor)
        participant = find_participant(session, actor, screening_number, lock=True)
        if participant.stratum_number is None:
            raise Conflict(f"Participant {screening_number} was never randomised: no stratum.")
        request = submission.load()
        site = session.get_one(Site, participant.site_id)
        stratum = ctx.definition.stratum_for({**site.attributes, **request.strata})
        current = latest_correction(session, participant)
        recorded = participant.stratum_number if current is None else current.stratum_number
        if stratum.number == recorded:
            raise ValidationFailed(
                {"strata": [f"The participant is already recorded in stratum {stratum.key}."]}
            )
        signed = _signed(session, ctx, actor, signature)
        correction = StratumCorrection(
            participant_id=participant.id,
            strata=dict(request.strata),
            stratum_number=stratum.number,
            reason=request.reason,
            user_name=actor.name,
            corrected_at=ctx.clock(),
        )
        session.add(correction)
        session.flush()
        ctx.audit.append(
            session,
            actor,
            action,
            screening_number,
            {
                "site": participant.site_id,
                "randomized_stratum": ctx.definition.stratum(participant.stratum_number).key,
                "corrected_stratum": stratum.key,
                "strata": dict(request.strata),
                "reason": request.reason,
                **signed,
            },
            site=participant.site_id,
        )
        return participant


def correction_view(
    session: Session, ctx: TrialContext, actor: Actor, screening_number: str
) -> dict[str, Any]:
    """What an admin sees of a participant of any site before correcting it (never an arm).

    The screening number, site, status, the stratum of the randomisation and the latest
    corrected one, and ``strata``: the screening factors as recorded now (the latest
    correction's, else those given at screening). Refused (403) to a role that may not
    correct; the same 404 for an unknown participant as everywhere.
    """
    CORRECT_PARTICIPANT.check(actor)
    participant = find_participant(session, actor, screening_number)
    view = participant_view(session, ctx, participant)
    current = latest_correction(session, participant)
    strata = dict(participant.screening_strata if current is None else current.strata)
    shown = (
        "screening_number",
        "site",
        "status",
        "screened_on",
        "stratum",
        "corrected_stratum",
        "randomization_number",
        "randomized_at",
    )
    return {**{name: view[name] for name in shown}, "strata": strata}


def _signed(
    session: Session, ctx: TrialContext, actor: Actor, signature: Signature | None
) -> dict[str, Any]:
    """What the entry records of ``signature`` (nothing without one); refused if wrong."""
    if signature is None:
        return {}
    return {"signature": signature_record(session, ctx, actor, signature)}
