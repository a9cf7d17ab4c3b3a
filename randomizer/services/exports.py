"""The audit trail's export (URS §7 Export, R-REP-5), which records itself.

The ``export.created`` entry is written *into* the export it describes, as its last line:
the file then ends exactly at a size the log has a signed checkpoint for, so an export
followed by ``GET /audit/checkpoint`` verifies with the standalone verifier (unless the
service appended more in between, which the verifier reports as the log having grown).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from randomizer.locks import lock_audit_head
from randomizer.models import AuditEntry
from randomizer.roles import READ_AUDIT_ENTRIES, Actor
from randomizer.services.context import TrialContext


@dataclass(frozen=True)
class AuditExport:
    """What was written: every line counted, and the SHA-256 of the whole file."""

    entries: int
    sha256: str


def export_audit(session: Session, ctx: TrialContext, actor: Actor, out: BinaryIO) -> AuditExport:
    """Write every entry's canonical bytes, one a line in seq order, ending with its own entry.

    The head is locked first, so no entry can be appended between the last one read and the
    ``export.created`` entry: the file has no gap. That entry's ``data`` gives the number of
    entries before it and the SHA-256 of their lines (it cannot hash the line it is on).
    """
    READ_AUDIT_ENTRIES.check(actor)
    size = lock_audit_head(session).size
    before = hashlib.sha256()
    whole = hashlib.sha256()
    for canonical in session.scalars(
        select(AuditEntry.canonical)
        .where(AuditEntry.seq < size)
        .order_by(AuditEntry.seq)
        .execution_options(yield_per=2000)
    ):
        line = canonical.encode("utf-8") + b"\n"
        out.write(line)
        before.update(line)
        whole.update(line)
    entry = ctx.audit.append(
        session,
        actor,
        "export.created",
        ctx.definition.id,
        {"kind": "audit", "entries": size, "sha256": before.hexdigest()},
    )
    last = entry.canonical + b"\n"
    out.write(last)
    whole.update(last)
    return AuditExport(entries=size + 1, sha256=whole.hexdigest())
