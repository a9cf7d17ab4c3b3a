"""Web sign-in (issue 13): users' password hashes and the server-side session table.

``user_account`` gains ``password_hash`` (an Argon2id hash; none until ``sealroom users
password`` sets one, so a running deployment's users cannot sign in to the pages until
then, while their API tokens go on working), ``password_changed_at`` and ``language`` (the
pages' language, chosen per user; none: English). ``web_session`` holds one row per
signed-in browser: only the SHA-256 of its random id, its user, and when it began, was last
used, expires and ended. A deployment starts with none.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable), not a batch: SQLite's batch copies the table, which the
    # tables referencing user_account refuse while foreign keys are enforced.
    op.add_column("user_account", sa.Column("password_hash", sa.String(length=255), nullable=True))
    op.add_column(
        "user_account", sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("user_account", sa.Column("language", sa.String(length=8), nullable=True))
    op.create_table(
        "web_session",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user_account.id"], name=op.f("fk_web_session_user_id_user_account")
        ),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_web_session")),
    )
    op.create_index(op.f("ix_web_session_user_id"), "web_session", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_web_session_user_id"), table_name="web_session")
    op.drop_table("web_session")
    # As in 0004: SQLite's own DROP COLUMN, not a batch copy (see upgrade()).
    sqlite = op.get_bind().dialect.name == "sqlite"
    for column in ("language", "password_changed_at", "password_hash"):
        if sqlite:
            op.execute(f"ALTER TABLE user_account DROP COLUMN {column}")
        else:
            op.drop_column("user_account", column)
