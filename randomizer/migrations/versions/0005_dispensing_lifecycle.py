"""Dispensing and the participant's lifecycle: ``discontinued``, replacements, corrections.

- ``participant.status`` may also be ``discontinued`` (R-LIFE): the CHECK constraint (the
  triggers of the same name on SQLite) is replaced by one that allows it.
- ``kit.replaces_kit_id``: the kit an allocated kit marked damaged or lost was replaced by
  points back at it (R-KIT-2).
- ``stratum_correction``: a wrong stratum is corrected beside the original, never in place
  (R-FIX); the stratum used at randomisation never changes.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BEFORE = ("screened", "randomized", "randomized_in_error", "withdrawn")
AFTER = (*BEFORE, "discontinued")


def _set_participant_statuses(values: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{value}'" for value in values)
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_participant_status"), "participant", type_="check")
        op.create_check_constraint(
            op.f("ck_participant_status"), "participant", f"status IN ({listed})"
        )
        return
    for event, when in (("insert", "INSERT"), ("update", "UPDATE OF status")):
        op.execute(f"DROP TRIGGER IF EXISTS ck_participant_status_{event}")
        # Names and values are the constants above: nothing here comes from input.
        op.execute(
            f"CREATE TRIGGER ck_participant_status_{event} BEFORE {when} ON participant "
            f"WHEN NEW.status NOT IN ({listed}) "
            "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: ck_participant_status'); END"
        )


def upgrade() -> None:
    _set_participant_statuses(AFTER)
    op.add_column("kit", sa.Column("replaces_kit_id", sa.String(length=36), nullable=True))
    op.create_table(
        "stratum_correction",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("participant_id", sa.String(length=36), nullable=False),
        sa.Column("strata", sa.JSON(), nullable=False),
        sa.Column("stratum_number", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("corrected_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participant.id"],
            name=op.f("fk_stratum_correction_participant_id_participant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stratum_correction")),
    )
    op.create_index(
        op.f("ix_stratum_correction_participant_id"),
        "stratum_correction",
        ["participant_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_stratum_correction_participant_id"), table_name="stratum_correction")
    op.drop_table("stratum_correction")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE kit DROP COLUMN replaces_kit_id")
    else:
        op.drop_column("kit", "replaces_kit_id")
    _set_participant_statuses(BEFORE)
