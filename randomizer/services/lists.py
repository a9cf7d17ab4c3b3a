"""The statistician's unblinded list export (URS §9 ``sealroom lists export``)."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from keys import SealedArm
from randomizer.domain import generate_lists, parse_seed, randomization_number, seed_commitment
from randomizer.errors import Conflict, Forbidden, ValidationFailed
from randomizer.models import Slot, Trial
from randomizer.roles import SYSTEM
from randomizer.services.context import TrialContext
from randomizer.services.refusals import refusals_audited
from randomizer.services.trial_setup import SLOT_SEAL_KIND

#: The action that records a refused export: what was wrong, never the seed.
EXPORT_REFUSED = "export.refused"
_KIND = "randomisation-lists"


def export_lists(
    session: Session, ctx: TrialContext, seed_hex: str | Callable[[], str]
) -> list[tuple[str, str, str]]:
    """Every slot as (stratum key, randomisation number, arm id), regenerated from the seed.

    ``seed_hex`` is the seed's hexadecimal text, or a function that reads it (from a file,
    say) and raises ``ValueError`` saying why it cannot (a message that never holds the seed).

    Refused unless the seed matches the stored commitment. The regenerated lists are also
    checked against the sealed slots in the database, so the export proves that what the
    service allocates from is exactly the seed's list. The export itself is audited, and so
    is every refusal (an unreadable, malformed or wrong seed, stored slots that differ), as
    ``export.refused``: it commits although the export fails, and records why, not the seed.
    """
    with refusals_audited(
        session, ctx, SYSTEM, EXPORT_REFUSED, ctx.definition.id, site=None, data={"kind": _KIND}
    ):
        return _export_lists(session, ctx, seed_hex)


def _export_lists(
    session: Session, ctx: TrialContext, seed_hex: str | Callable[[], str]
) -> list[tuple[str, str, str]]:
    try:
        seed = parse_seed(seed_hex() if callable(seed_hex) else seed_hex)
    except ValueError as exc:
        raise ValidationFailed({"seed": [str(exc)]}) from None
    trial = session.get_one(Trial, ctx.definition.id)
    if not hmac.compare_digest(seed_commitment(seed), trial.seed_commitment):
        raise Forbidden("This seed does not match the stored list's commitment.")
    lists = generate_lists(seed, ctx.definition)
    stored = {
        slot.randomization_number: slot
        for slot in session.scalars(select(Slot).order_by(Slot.stratum_number, Slot.position))
    }
    rows = []
    for stratum in ctx.definition.strata():
        for position, arm in enumerate(lists[stratum.number], start=1):
            number = randomization_number(stratum.number, position)
            slot = stored.pop(number, None)
            if slot is None or arm != ctx.sealer.unseal_arm(
                SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, number
            ):
                raise Conflict(f"Stored slot {number} differs from the seed's list.")
            rows.append((stratum.key, number, arm))
    if stored:
        raise Conflict(f"{len(stored)} stored slots are not in the seed's list.")
    ctx.audit.append(
        session,
        SYSTEM,
        "export.created",
        ctx.definition.id,
        {
            "kind": _KIND,
            "seed_commitment": trial.seed_commitment,
        },
    )
    return rows
