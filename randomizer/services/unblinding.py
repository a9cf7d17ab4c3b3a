"""Emergency unblinding (URS §6, R-UNB, R-UNB-2, R-UNB-3).

One participant per request, by an investigator of its site or a medical monitor, with a
declared reason and an event reference. Write-ahead: the ``participant.unblinded`` entry
(the arm in it sealed) and its signed checkpoint are written in the transaction that marks
the participant unblinded; the caller hands the arm out only once that transaction has
committed (``randomizer.api.unblinding``), so no arm ever leaves the service unrecorded.
Every refusal is one ``participant.unblind_refused`` entry, committed although the request
failed.

Refusals in URS §6's order: a role that may not unblind gets the same 403 whoever the
participant is (the role is checked before anything is looked up); an investigator of
another site gets the same 404 as for an unknown participant; one never randomised is 409;
then the input (422).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from randomizer.domain.participants import SCREENING_NUMBER, UnblindRequest
from randomizer.errors import Conflict
from randomizer.models import Participant, Unblinding
from randomizer.roles import READ_UNBLINDINGS, UNBLIND, Actor
from randomizer.services.context import TrialContext
from randomizer.services.inputs import Submission
from randomizer.services.notifications import announce_unblinding
from randomizer.services.participants import (
    PARTICIPANT_SEAL_KIND,
    find_participant,
    participant_arm,
)
from randomizer.services.refusals import Refusal, refusals_audited
from randomizer.services.users import Signature, signature_record


@dataclass(frozen=True)
class UnblindingResult:
    """What the physician who unblinded is told: the arm, and the receipt of the record."""

    screening_number: str
    arm_id: str
    arm_label: str
    unblinded_at: datetime
    receipt: dict[str, Any]
    notified: list[str]


def unblind_refusal(screening_number: str) -> Refusal:
    """How a refused unblinding is audited: the screening number always as sent (URS §6)."""
    return Refusal(
        "participant.unblind_refused",
        screening_number,
        SCREENING_NUMBER,
        "screening_number",
        record_as_sent=True,
    )


def unblind_participant(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[UnblindRequest],
    signature: Signature | None = None,
) -> UnblindingResult:
    """Break the blind for one participant; audited whether it succeeds or is refused.

    The web pages pass the requester's electronic ``signature`` (their password again and
    what it means): checked after the input, refused (422) if the password is not theirs,
    and recorded in the ``participant.unblinded`` entry (21 CFR 11.200).
    """
    with refusals_audited(session, ctx, actor, unblind_refusal(screening_number), site=actor.site):
        return _unblind(session, ctx, actor, screening_number, submission, signature)


def _unblind(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    screening_number: str,
    submission: Submission[UnblindRequest],
    signature: Signature | None,
) -> UnblindingResult:
    UNBLIND.check(actor)
    participant = find_participant(session, actor, screening_number, lock=True)
    if participant.randomization_number is None or participant.sealed_arm is None:
        raise Conflict(
            f"Participant {screening_number} was never randomised: there is no arm to reveal."
        )
    request = submission.load()
    signed = signature_record(session, ctx, actor, signature) if signature is not None else None
    arm_id = participant_arm(ctx, participant)
    arm = ctx.definition.arm(arm_id)
    now = ctx.clock()
    participant.unblinded = True
    entry = ctx.audit.append(
        session,
        actor,
        "participant.unblinded",
        screening_number,
        {
            "site": participant.site_id,
            "randomization_number": participant.randomization_number,
            "reason": request.reason,
            "event_reference": request.event_reference,
            "detail": request.detail,
            "sealed_arm": ctx.sealer.seal_arm(
                arm_id, PARTICIPANT_SEAL_KIND, screening_number
            ).to_json(),
            **({"signature": signed} if signed is not None else {}),
        },
        site=participant.site_id,
    )
    unblinding = Unblinding(
        participant_id=participant.id,
        user_name=actor.name,
        role=actor.role,
        reason=request.reason,
        event_reference=request.event_reference,
        detail=request.detail,
        unblinded_at=now,
        audit_seq=entry.seq,
    )
    session.add(unblinding)
    session.flush()
    receipt = ctx.audit.receipt(session, entry)
    notified = announce_unblinding(session, ctx, participant, unblinding)
    return UnblindingResult(
        screening_number=screening_number,
        arm_id=arm.id,
        arm_label=arm.label,
        unblinded_at=now,
        receipt=receipt,
        notified=notified,
    )


def list_unblindings(session: Session, ctx: TrialContext, actor: Actor) -> list[dict[str, Any]]:
    """R-UNB-3: every unblinding, oldest first; with its arm for the statistician only.

    The sponsor, the medical monitor and the auditor get exactly the same list without the
    ``arm`` key: the queries and the work are the same whatever the arms.
    """
    READ_UNBLINDINGS.check(actor)
    rows = session.execute(
        select(Unblinding, Participant)
        .join(Participant, Participant.id == Unblinding.participant_id)
        .order_by(Unblinding.audit_seq)
    ).all()
    listing = []
    for unblinding, participant in rows:
        item: dict[str, Any] = {
            "screening_number": participant.screening_number,
            "site": participant.site_id,
            "randomization_number": participant.randomization_number,
            "unblinded_at": unblinding.unblinded_at,
            "by": unblinding.user_name,
            "role": unblinding.role,
            "reason": unblinding.reason,
            "event_reference": unblinding.event_reference,
            "detail": unblinding.detail,
            "audit_seq": unblinding.audit_seq,
        }
        # Unsealed for every reader, blinded or not: the same work whatever the arms.
        arm_id = participant_arm(ctx, participant)
        if not actor.blinded:
            arm = ctx.definition.arm(arm_id)
            item["arm"] = {"id": arm.id, "label": arm.label}
        listing.append(item)
    return listing
