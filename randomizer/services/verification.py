"""Verifying the stored audit log (URS §7, §9): what `sealroom audit verify` and `sealroom
restore` check, read from one snapshot of the database.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.checkpoint import VerifierKey
from audit.verify import VerifyReport, verify_log
from randomizer.models import AuditCheckpoint, AuditEntry, AuditHead


def read_snapshot(session: Session) -> None:
    """Make every read of ``session`` see one state of the database, however long it runs.

    PostgreSQL: a read-only REPEATABLE READ transaction (never a serialisation failure for
    reads). SQLite: any open transaction is a snapshot (WAL); one is opened if the session
    has none yet.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )
        return
    connection = session.connection()
    if not connection.connection.driver_connection.in_transaction:
        connection.exec_driver_sql("BEGIN")


def verify_stored_log(
    session: Session, verifier_key: VerifierKey, trusted: Sequence[str] = ()
) -> tuple[VerifyReport, int]:
    """Recompute the chain, the tree and every stored checkpoint against ``verifier_key``.

    ``trusted`` are checkpoint notes saved elsewhere that the log must still extend. Reads
    one snapshot: the service may go on appending meanwhile. Returns the report and the
    number of stored checkpoints checked.
    """
    # Every stored entry and checkpoint is read, whatever audit_head says: the head is a
    # lock and a cache, and verify_log reports one that disagrees.
    read_snapshot(session)
    checkpoints = list(session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)))
    size, head = session.execute(select(AuditHead.size, AuditHead.last_hash)).one()
    entries = (
        canonical.encode("utf-8")
        for canonical in session.scalars(
            select(AuditEntry.canonical).order_by(AuditEntry.seq).execution_options(yield_per=2000)
        )
    )
    report = verify_log(
        entries, checkpoints, verifier_key, list(trusted), head_hash=head, head_size=size
    )
    return report, len(checkpoints)
