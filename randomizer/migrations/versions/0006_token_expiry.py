"""API tokens expire (issue 7: ``SEALROOM_TOKEN_DAYS``, default 365).

A running deployment's tokens get the default lifetime from the day they were issued: a
token issued more than 365 days ago stops working at once and is renewed with
``sealroom users token``.

Revision ID: 0006
Revises: 0005
"""

from datetime import UTC, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LIFETIME = timedelta(days=365)


def upgrade() -> None:
    op.add_column("api_token", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table(
        "api_token",
        sa.column("id", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    connection = op.get_bind()
    for token_id, created_at in connection.execute(sa.select(tokens.c.id, tokens.c.created_at)):
        if created_at.tzinfo is None:  # SQLite gives naive UTC back
            created_at = created_at.replace(tzinfo=UTC)
        connection.execute(
            tokens.update()
            .where(tokens.c.id == token_id)
            .values(expires_at=(created_at + LIFETIME).astimezone(UTC))
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE api_token DROP COLUMN expires_at")
    else:
        op.drop_column("api_token", "expires_at")
