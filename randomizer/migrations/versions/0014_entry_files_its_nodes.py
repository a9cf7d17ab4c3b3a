"""An entry's insert files the tree nodes its append completes (issue 9): one statement fewer.

``audit_entry.nodes`` holds the hashes of the perfect subtrees that appending the entry
completed, level 0 (its own leaf hash) first, 32 bytes each: one more for each trailing 1
bit of its ``seq``. A trigger on the entry's insert stores each as the ``audit_node`` row
``(level, seq >> level)``, in the same statement, where proofs and the audit head's check
read them as before; the service no longer sends the nodes in a statement of their own,
under the audit head's lock. The nodes stay append-only (0001, 0002's triggers).

Existing entries keep null (their nodes are already stored); nothing is rewritten in an
append-only table.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_entry", sa.Column("nodes", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION sealroom_entry_files_its_nodes() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO audit_node (level, node_index, hash)
                SELECT level, NEW.seq >> level, substring(NEW.nodes FROM 32 * level + 1 FOR 32)
                  FROM generate_series(0, length(NEW.nodes) / 32 - 1) AS level;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_entry_files_its_nodes AFTER INSERT ON audit_entry "
            "FOR EACH ROW WHEN (NEW.nodes IS NOT NULL) "
            "EXECUTE FUNCTION sealroom_entry_files_its_nodes()"
        )
        return
    op.execute(
        "CREATE TRIGGER audit_entry_files_its_nodes AFTER INSERT ON audit_entry "
        "WHEN NEW.nodes IS NOT NULL BEGIN "
        "INSERT INTO audit_node (level, node_index, hash) "
        "SELECT level.value, NEW.seq >> level.value, substr(NEW.nodes, 32 * level.value + 1, 32) "
        # Levels 0 to 31: ``seq`` is a 32-bit integer, so no append completes more nodes.
        "FROM json_each('[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,"
        "25,26,27,28,29,30,31]') AS level "
        "WHERE level.value < length(NEW.nodes) / 32; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_entry_files_its_nodes ON audit_entry")
        op.execute("DROP FUNCTION IF EXISTS sealroom_entry_files_its_nodes()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_entry_files_its_nodes")
    # Not a batch (SQLite's copy of the table would lose its append-only triggers).
    op.drop_column("audit_entry", "nodes")
