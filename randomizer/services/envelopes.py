"""Downtime code-break (R-KEY-4): sealed envelopes made in advance, and the record afterwards.

``sealroom keys emergency-envelopes`` writes one envelope per list slot (every slot, used or
not, so the set shows nothing about enrolment), each the slot's arm encrypted to the medical
monitor's safety-line key (:mod:`keys.envelopes`), and audits the set's digest so an
inspector can tell which set was in circulation. When the service is down, the safety line
opens the one envelope it needs with ``sealroom keys open-envelope`` (no database, no
service); ``sealroom unblind-record --offline`` enters that unblinding into the audit trail
once the service is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from keys import SealedArm
from keys.envelopes import fingerprint, parse_public_key, seal_envelope, write_envelope_set
from randomizer.errors import ValidationFailed
from randomizer.models import Participant, Slot, Unblinding
from randomizer.roles import Actor
from randomizer.services.context import TrialContext
from randomizer.services.notifications import announce_unblinding
from randomizer.services.participants import PARTICIPANT_SEAL_KIND
from randomizer.services.trial_setup import SLOT_SEAL_KIND

#: The longest free text an offline record takes (as the online unblinding's fields).
_MAX_TEXT = 64


@dataclass(frozen=True)
class EnvelopeSet:
    """What was written: how many envelopes, the manifest's SHA-256, the recipient's key."""

    envelopes: int
    set_sha256: str
    recipient: str


def create_emergency_envelopes(
    session: Session, ctx: TrialContext, actor: Actor, recipient_line: str, out: Path
) -> EnvelopeSet:
    """One envelope per slot in ``out``, to the recipient's key; audit ``envelopes.created``.

    The entry names the count, the set's SHA-256 and the recipient key's fingerprint, never
    an arm. Files are written before the transaction commits: if it fails, the directory
    holds a set that no entry names, which the README tells the statistician to destroy.
    """
    recipient = parse_public_key(recipient_line)
    envelopes = {}
    for slot in session.scalars(select(Slot).order_by(Slot.stratum_number, Slot.position)):
        arm_id = ctx.sealer.unseal_arm(
            SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, slot.randomization_number
        )
        envelopes[slot.randomization_number] = seal_envelope(
            recipient,
            ctx.definition.id,
            slot.randomization_number,
            arm_id,
            ctx.definition.arm(arm_id).label,
        )
    digest = write_envelope_set(out, envelopes)
    made = EnvelopeSet(len(envelopes), digest, fingerprint(recipient))
    ctx.audit.append(
        session,
        actor,
        "envelopes.created",
        digest,
        {"envelopes": made.envelopes, "set_sha256": digest, "recipient": made.recipient},
    )
    return made


@dataclass(frozen=True)
class OfflineRecord:
    """An offline unblinding as recorded: its entry's seq and the participant, if any."""

    seq: int
    screening_number: str | None


def record_offline_unblinding(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    randomization_number: str,
    opened_by: str,
    opened_at: datetime,
    reason: str,
    event_reference: str,
    set_sha256: str,
) -> OfflineRecord:
    """Enter an envelope opened while the service was down into the trail.

    The participant holding that number is marked unblinded and the unblinding announced as
    any other (R-UNB-2); an envelope of a slot no one holds yet is recorded all the same, as
    ``envelope.opened``: that slot's arm is known now. The arm itself is in the entry only
    sealed, as for an online unblinding.
    """
    errors: dict[str, list[str]] = {}
    for name, value in (
        ("opened_by", opened_by),
        ("reason", reason),
        ("event_reference", event_reference),
    ):
        if not 1 <= len(value) <= _MAX_TEXT or not value.isprintable():
            errors[name] = [f"1 to {_MAX_TEXT} printable characters."]
    if reason not in ctx.definition.unblinding_reasons:
        errors["reason"] = [f"Must be one of: {', '.join(ctx.definition.unblinding_reasons)}."]
    if opened_at.tzinfo is None or opened_at > ctx.clock():
        errors["opened_at"] = ["A time with its UTC offset, not in the future."]
    slot = session.scalars(
        select(Slot).where(Slot.randomization_number == randomization_number)
    ).one_or_none()
    if slot is None:
        errors["randomization_number"] = ["No slot has this randomisation number."]
    if errors:
        raise ValidationFailed(errors)
    assert slot is not None
    data = {
        "offline": True,
        "randomization_number": randomization_number,
        "opened_by": opened_by,
        "opened_at": opened_at.isoformat(),
        "reason": reason,
        "event_reference": event_reference,
        "envelope_set_sha256": set_sha256,
    }
    participant = session.get(Participant, slot.participant_id) if slot.participant_id else None
    if participant is None:
        entry = ctx.audit.append(session, actor, "envelope.opened", randomization_number, data)
        return OfflineRecord(entry.seq, None)
    participant.unblinded = True
    arm_id = ctx.sealer.unseal_arm(
        SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, randomization_number
    )
    entry = ctx.audit.append(
        session,
        actor,
        "participant.unblinded",
        participant.screening_number,
        {
            **data,
            "site": participant.site_id,
            "sealed_arm": ctx.sealer.seal_arm(
                arm_id, PARTICIPANT_SEAL_KIND, participant.screening_number
            ).to_json(),
        },
        site=participant.site_id,
    )
    unblinding = Unblinding(
        participant_id=participant.id,
        user_name=opened_by,
        role="medical_monitor",
        reason=reason,
        event_reference=event_reference,
        detail=f"offline code-break envelope, opened {opened_at.isoformat()}",
        unblinded_at=opened_at,
        audit_seq=entry.seq,
    )
    session.add(unblinding)
    session.flush()
    announce_unblinding(session, ctx, participant, unblinding)
    return OfflineRecord(entry.seq, participant.screening_number)
