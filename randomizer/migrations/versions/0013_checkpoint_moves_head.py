"""Storing a signed checkpoint moves the audit head (issue 9): one statement fewer an append.

``audit_checkpoint`` gains ``last_hash`` and ``frontier``: the hash of the last entry the
checkpoint covers and the tree's compact range at its size, the state of the head it
signs. A trigger on its insert sets ``audit_head`` to that state, so the appending
transaction writes its head once, with its checkpoint, instead of updating the head row at
every append: the database itself now keeps the committed head where the newest stored
checkpoint says it is. The trigger refuses a checkpoint that would move the head back.

The head row is only moved by a checkpoint that records that state; one stored before
this revision (``frontier`` null) leaves the head alone, and a running deployment's
checkpoints keep null in both columns: nothing is rewritten in an append-only table.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The head's one row is id 1 (``randomizer.locks.HEAD_ID``); the statements are constants.


def upgrade() -> None:
    op.add_column("audit_checkpoint", sa.Column("last_hash", sa.String(64), nullable=True))
    op.add_column("audit_checkpoint", sa.Column("frontier", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION sealroom_checkpoint_moves_head() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE audit_head
                   SET size = NEW.size, last_hash = NEW.last_hash, frontier = NEW.frontier
                 WHERE id = 1 AND size <= NEW.size;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'sealroom: a checkpoint behind the audit head refused';
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoint_moves_head AFTER INSERT ON audit_checkpoint "
            "FOR EACH ROW WHEN (NEW.frontier IS NOT NULL) "
            "EXECUTE FUNCTION sealroom_checkpoint_moves_head()"
        )
        return
    op.execute(
        "CREATE TRIGGER audit_checkpoint_not_behind_head BEFORE INSERT ON audit_checkpoint "
        "WHEN NEW.frontier IS NOT NULL AND NEW.size < "
        "(SELECT size FROM audit_head WHERE id = 1) "
        "BEGIN SELECT RAISE(ABORT, 'sealroom: a checkpoint behind the audit head refused'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoint_moves_head AFTER INSERT ON audit_checkpoint "
        "WHEN NEW.frontier IS NOT NULL "
        "BEGIN UPDATE audit_head "
        "SET size = NEW.size, last_hash = NEW.last_hash, frontier = NEW.frontier "
        "WHERE id = 1; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_moves_head ON audit_checkpoint")
        op.execute("DROP FUNCTION IF EXISTS sealroom_checkpoint_moves_head()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_moves_head")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_not_behind_head")
    # Not a batch (SQLite's copy of the table would lose its append-only triggers): SQLite
    # drops a column in place since 3.35.
    op.drop_column("audit_checkpoint", "frontier")
    op.drop_column("audit_checkpoint", "last_hash")
