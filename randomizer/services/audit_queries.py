"""Reading the audit trail over HTTP: entries, proofs, checkpoints (URS §7, §8).

Entries and tree nodes are append-only, so a proof up to a size the log has reached is
stable, whatever is being appended meanwhile.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import verify_consistency
from audit.checkpoint import CheckpointError, VerifierKey, parse_checkpoint, verify_checkpoint
from audit.rotation import ROTATED, signing_rotation
from randomizer.errors import NotFound, ValidationFailed
from randomizer.models import AuditEntry
from randomizer.roles import PROVE_ANY_INCLUSION, PROVE_INCLUSION, Actor
from randomizer.services.audit_log import AuditLog

#: At most this many entries in one ``GET /audit/entries``; the default page is smaller.
MAX_ENTRIES, DEFAULT_ENTRIES = 10_000, 1_000
#: The largest seq the audit_entry.seq column holds (PostgreSQL's 32-bit integer).
SEQ_MAX = 2**31 - 1


def entries(session: Session, start: int, end: int | None) -> list[str]:
    """Canonical entries with ``start <= seq < end``, in seq order."""
    end = start + DEFAULT_ENTRIES if end is None else end
    if end < start:
        raise ValidationFailed({"end": ["Must not be less than start."]})
    if end - start > MAX_ENTRIES:
        raise ValidationFailed({"end": [f"At most {MAX_ENTRIES} entries at a time."]})
    return list(
        session.scalars(
            select(AuditEntry.canonical)
            # seq <= end - 1 rather than seq < end: the default end (start + 1,000) may
            # pass what the seq column holds (a 500 on PostgreSQL), and no seq is beyond it.
            .where(AuditEntry.seq >= start, AuditEntry.seq <= min(end - 1, SEQ_MAX))
            .order_by(AuditEntry.seq)
        )
    )


def inclusion(session: Session, actor: Actor, index: int, size: int) -> dict[str, Any]:
    """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries.

    Site staff may prove only entries about their own site; for any other entry they get
    the same 404 as for an entry that does not exist.
    """
    PROVE_INCLUSION.check(actor)
    _check_size(session, "size", size)
    if index >= size:
        raise ValidationFailed({"index": ["Must be less than size."]})
    if actor.role not in PROVE_ANY_INCLUSION:
        site = session.scalar(select(AuditEntry.site_id).where(AuditEntry.seq == index))
        if site is None or site != actor.site:
            raise NotFound("No audit entry with this index is visible to you.")
    return {"index": index, "size": size, "hashes": AuditLog.inclusion_proof(session, index, size)}


def consistency(session: Session, first: int, second: int) -> dict[str, Any]:
    """RFC 9162 consistency proof from the tree of ``first`` to that of ``second`` entries."""
    if first < 1:
        raise ValidationFailed({"first": ["Must be at least 1."]})
    if second < first:
        raise ValidationFailed({"second": ["Must not be less than first."]})
    _check_size(session, "second", second)
    return {
        "first": first,
        "second": second,
        "hashes": AuditLog.consistency_proof(session, first, second),
    }


def key_hand_overs(session: Session) -> list[dict[str, Any]]:
    """Every signing-key hand-over (R-KEY-1): the ``key.rotated`` entry, the checkpoint both
    keys signed, and the entry's inclusion proof in it, oldest first.

    Nothing in them is secret (ids and public verifier keys): any user may fetch them, so
    that a monitor holding the outgoing key can follow to the incoming one by itself.
    """
    found = []
    for seq, canonical in session.execute(
        select(AuditEntry.seq, AuditEntry.canonical)
        .where(AuditEntry.action == ROTATED)
        .order_by(AuditEntry.seq)
    ):
        if signing_rotation(canonical.encode("utf-8")) is None:
            continue  # a master or data key rotation: nothing for a verifier to follow
        note = AuditLog.checkpoint_at(session, seq + 1)
        if note is None:
            continue  # not a hand-over: a verifier will say so
        found.append(
            {
                "seq": seq,
                "entry": canonical,
                "checkpoint": note,
                "inclusion_proof": AuditLog.inclusion_proof(session, seq, seq + 1),
            }
        )
    return found


def latest_checkpoint(session: Session) -> str:
    """The newest signed checkpoint note."""
    note = AuditLog.latest_checkpoint(session)
    if note is None:
        raise NotFound("The audit log holds no checkpoint yet.")
    return note


def _check_size(session: Session, name: str, size: int) -> None:
    current = AuditLog.size(session)
    if size < 1 or size > current:
        raise ValidationFailed({name: [f"Must be between 1 and the log's size ({current})."]})


def search_entries(
    session: Session, start: int, limit: int, action: str = "", subject: str = ""
) -> list[str]:
    """Up to ``limit`` canonical entries from seq ``start`` on, in seq order, of one action
    and/or one subject when given (the auditor's pages)."""
    query = select(AuditEntry.canonical).where(AuditEntry.seq >= max(0, min(start, SEQ_MAX)))
    if action:
        query = query.where(AuditEntry.action == action)
    if subject:
        query = query.where(AuditEntry.subject == subject)
    return list(session.scalars(query.order_by(AuditEntry.seq).limit(min(limit, MAX_ENTRIES))))


def check_checkpoint(session: Session, verifier_key: VerifierKey, note: str) -> dict[str, Any]:
    """Whether the stored log extends a checkpoint the auditor kept (pasted in).

    The note must be signed by ``verifier_key``; then the latest checkpoint must be at least
    as large and the consistency proof between the two must hold. A log shorter than the
    note, or one that does not extend it, was rolled back or rewritten since.
    """
    try:
        kept = verify_checkpoint(note.replace("\r\n", "\n"), verifier_key)
    except CheckpointError as error:
        raise ValidationFailed({"checkpoint": [str(error)]}) from None
    latest_note = latest_checkpoint(session)
    latest, _signatures = parse_checkpoint(latest_note)
    if kept.origin != latest.origin:
        raise ValidationFailed({"checkpoint": [f"Not this log's checkpoint ({latest.origin})."]})
    result: dict[str, Any] = {"kept": kept.size, "latest": latest.size, "checkpoint": latest_note}
    if kept.size > latest.size:
        return {**result, "consistent": False, "why": "the log is now shorter than your checkpoint"}
    proof = (
        [base64.b64decode(h) for h in AuditLog.consistency_proof(session, kept.size, latest.size)]
        if kept.size < latest.size
        else []
    )
    consistent = verify_consistency(kept.size, latest.size, kept.root, latest.root, proof)
    return {
        **result,
        "consistent": consistent,
        "why": "" if consistent else "the log does not extend your checkpoint: it was rewritten",
    }
