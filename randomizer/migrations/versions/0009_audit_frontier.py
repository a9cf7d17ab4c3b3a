"""The audit head keeps the Merkle tree's compact range (issue 9): appends read no nodes.

``audit_head.frontier`` holds the hashes of the perfect subtrees that make up the tree at
the head's size (one per 1 bit of the size, largest first), so an append, the new root and
the check that it extends the last signed checkpoint need no scan of ``audit_node``. A
running deployment's frontier is back-filled from its stored nodes, or recomputed from its
entries if a node is missing. Either way the service checks it against the last signed
checkpoint before it signs anything over it (a frontier that does not fit is refused).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from audit.merkle import CompactRange, leaf_hash, root_coords

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_HEAD = sa.table(
    "audit_head",
    sa.column("id", sa.Integer()),
    sa.column("size", sa.Integer()),
    sa.column("frontier", sa.LargeBinary()),
)
_NODE = sa.table(
    "audit_node",
    sa.column("level", sa.Integer()),
    sa.column("node_index", sa.Integer()),
    sa.column("hash", sa.LargeBinary()),
)
_ENTRY = sa.table("audit_entry", sa.column("seq", sa.Integer()), sa.column("canonical", sa.Text()))


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("frontier", sa.LargeBinary(), nullable=True))
    connection = op.get_bind()
    for head_id, size in connection.execute(sa.select(_HEAD.c.id, _HEAD.c.size)).all():
        connection.execute(
            _HEAD.update().where(_HEAD.c.id == head_id).values(frontier=_frontier(size))
        )
    with op.batch_alter_table("audit_head") as batch:
        batch.alter_column("frontier", existing_type=sa.LargeBinary(), nullable=False)


def _frontier(size: int) -> bytes:
    """The compact range at ``size``: its O(log n) stored nodes, else the entries' leaves."""
    connection = op.get_bind()
    coords = root_coords(size)
    nodes: dict[tuple[int, int], bytes] = {}
    for level, index in coords:  # at most 31 primary-key look-ups
        digest = connection.execute(
            sa.select(_NODE.c.hash).where(_NODE.c.level == level, _NODE.c.node_index == index)
        ).scalar_one_or_none()
        if digest is not None:
            nodes[(level, index)] = bytes(digest)
    if all(coord in nodes for coord in coords):
        return CompactRange(size, [nodes[coord] for coord in coords]).to_bytes()
    tree = CompactRange()
    entries = connection.execute(
        sa.select(_ENTRY.c.canonical).where(_ENTRY.c.seq < size).order_by(_ENTRY.c.seq)
    )
    for (canonical,) in entries:
        tree.append(leaf_hash(canonical.encode("utf-8")))
    # Fewer entries than the head claims: this frontier does not fit the head's size, and
    # the service refuses to append until `sealroom audit verify` has been looked at.
    return tree.to_bytes()


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("frontier")
