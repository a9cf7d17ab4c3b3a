"""Emergency unblinding: the unblinding table, users' e-mail, the outbox's back-off and subject.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unblinding",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("participant_id", sa.String(length=36), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("event_reference", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("unblinded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participant.id"],
            name=op.f("fk_unblinding_participant_id_participant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unblinding")),
        sa.UniqueConstraint("audit_seq", name=op.f("uq_unblinding_audit_seq")),
    )
    op.create_index(
        op.f("ix_unblinding_participant_id"), "unblinding", ["participant_id"], unique=False
    )
    # Plain ADD COLUMN on both engines: nullable columns need no table rebuild on SQLite.
    op.add_column("user_account", sa.Column("email", sa.String(length=254), nullable=True))
    op.add_column(
        "outbox_message", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("outbox_message", sa.Column("about", sa.String(length=64), nullable=True))
    op.add_column(
        "outbox_message", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, column in (
        ("outbox_message", "claimed_until"),
        ("outbox_message", "about"),
        ("outbox_message", "next_attempt_at"),
        ("user_account", "email"),
    ):
        if sqlite:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)
    op.drop_index(op.f("ix_unblinding_participant_id"), table_name="unblinding")
    op.drop_table("unblinding")
