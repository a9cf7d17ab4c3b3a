"""A participant's lifecycle after randomisation, and corrections (R-LIFE, R-FIX).

Withdrawal and discontinuation (coordinator or investigator of the site) end dispensing; a
participant randomised in error is flagged by an admin (its slot stays consumed); a wrong
stratum is corrected beside the original by an admin, and the stratum used at
randomisation never changes. Nothing is edited in place: each is one audit entry, and so is
each refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from randomizer.services.participants import find_participant, latest_correction
from randomizer.services.refusals import Refusal, refusals_audited


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
) -> Participant:
    """Withdraw, discontinue or flag a participant, if its lifecycle allows it (409 if not)."""
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
) -> Participant:
    """Record the right screening factors of a randomised participant, beside the original.

    The randomisation stands (stratum, slot, kits); the correction says which stratum the
    participant belonged to, for the analysis. Returns the participant.
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
            },
            site=participant.site_id,
        )
        return participant
