"""Refuse REPLACE on the audit tables on SQLite (R-AUD).

SQLite's ``REPLACE INTO`` (``INSERT OR REPLACE``) removes a row whose key is taken and
inserts the new one, without firing DELETE triggers (unless ``recursive_triggers`` is on,
which is a per-connection setting): 0001's triggers let it rewrite an entry, a tree node or
a checkpoint. A BEFORE INSERT trigger runs before that removal, so refusing any insert whose
key is already present closes the gap; an ordinary append never has such a key. PostgreSQL
has no REPLACE; its ``INSERT ... ON CONFLICT DO UPDATE`` fires the UPDATE trigger.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: Each append-only table and the condition under which a new row's key is already taken.
KEY_TAKEN = {
    "audit_entry": "seq = NEW.seq",
    "audit_node": "level = NEW.level AND node_index = NEW.node_index",
    "audit_checkpoint": "size = NEW.size",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, taken in KEY_TAKEN.items():
        # Table names and conditions are the constants above: nothing here comes from input.
        refuse_taken_key = (
            f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "  # noqa: S608
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {taken}) "
            f"BEGIN SELECT RAISE(ABORT, 'sealroom: REPLACE on {table} refused: "
            "the audit trail is append-only'); END"
        )
        op.execute(refuse_taken_key)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in KEY_TAKEN:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_replace")
