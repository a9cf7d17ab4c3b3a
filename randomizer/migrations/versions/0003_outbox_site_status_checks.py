"""The outbox, open and closed sites, and CHECK constraints on every status column.

- ``outbox_message``: messages written in the transaction of the change they announce and
  delivered after it commits (the unblinding notification, R-UNB-2).
- ``site.status`` (``open`` or ``closed``) and ``site.closed_at``: every existing site of a
  running deployment becomes ``open``.
- ``participant.status`` and ``kit.status`` may hold only the statuses of URS §4 and §8.
  PostgreSQL gets CHECK constraints. SQLite cannot add a constraint to an existing table
  without rebuilding it (and rebuilding ``participant`` would break the foreign keys that
  point at it), so there triggers of the same name refuse the same values.

The status lists are written out here, not imported: a migration is history and must not
change when the code does.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATUSES = {
    "participant": ("screened", "randomized", "randomized_in_error", "withdrawn"),
    "kit": (
        "in_depot",
        "in_transit",
        "available",
        "allocated",
        "dispensed",
        "damaged",
        "lost",
        "returned",
        "expired",
        "quarantined",
    ),
}
SITE_STATUSES = ("open", "closed")
OUTBOX_STATUSES = ("pending", "delivered")


def _one_of(values: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{value}'" for value in values))


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "outbox_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_one_of(OUTBOX_STATUSES), name=op.f("ck_outbox_message_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_message")),
    )
    op.create_index("ix_outbox_message_status", "outbox_message", ["status"], unique=False)

    if sqlite:
        # SQLite adds a column with its CHECK in one statement (and no table rebuild).
        op.execute(
            "ALTER TABLE site ADD COLUMN status VARCHAR(16) DEFAULT 'open' NOT NULL "
            f"CONSTRAINT ck_site_status CHECK ({_one_of(SITE_STATUSES)})"
        )
    else:
        op.add_column(
            "site",
            sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        )
        op.create_check_constraint(op.f("ck_site_status"), "site", _one_of(SITE_STATUSES))
    op.add_column("site", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))

    for table, values in STATUSES.items():
        if not sqlite:
            op.create_check_constraint(op.f(f"ck_{table}_status"), table, _one_of(values))
            continue
        for event, when in (("INSERT", "INSERT"), ("UPDATE", "UPDATE OF status")):
            # Names and values are the constants above: nothing here comes from input.
            op.execute(
                f"CREATE TRIGGER ck_{table}_status_{event.lower()} BEFORE {when} ON {table} "
                f"WHEN NEW.status NOT IN ({', '.join(repr(v) for v in values)}) "
                f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: ck_{table}_status'); END"
            )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in STATUSES:
        if sqlite:
            for event in ("insert", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS ck_{table}_status_{event}")
        else:
            op.drop_constraint(op.f(f"ck_{table}_status"), table, type_="check")
    if sqlite:
        # SQLite drops a column with its column CHECK, without rebuilding the table.
        op.execute("ALTER TABLE site DROP COLUMN closed_at")
        op.execute("ALTER TABLE site DROP COLUMN status")
    else:
        op.drop_column("site", "closed_at")
        op.drop_constraint(op.f("ck_site_status"), "site", type_="check")
        op.drop_column("site", "status")
    op.drop_index("ix_outbox_message_status", table_name="outbox_message")
    op.drop_table("outbox_message")
