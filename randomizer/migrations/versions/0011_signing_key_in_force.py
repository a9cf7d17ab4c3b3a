"""The audit head names the checkpoint-signing key in force (issue 15, R-KEY-1).

``audit_head.signing_key`` is the fingerprint (``sk-<16 hex>``) of the key that signs
checkpoints, set by ``sealroom keys rotate-signing`` in the hand-over's own transaction.
Every appending transaction locks the head anyway, so each serving process learns of a
rotation at its next append, at no extra query. Existing deployments get NULL: no rotation
yet, the key in ``signing/ed25519.key`` signs.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("signing_key", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("signing_key")
