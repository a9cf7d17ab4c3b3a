"""Failed authentications are counted per client (issue 7: the throttle).

``auth_failure`` holds one row per client that sent an invalid token recently: how many in
its current window and when the window began. A running deployment starts with none.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failure",
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client", name=op.f("pk_auth_failure")),
    )
    op.create_index(
        op.f("ix_auth_failure_window_started_at"),
        "auth_failure",
        ["window_started_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_auth_failure_window_started_at"), table_name="auth_failure")
    op.drop_table("auth_failure")
