"""Initial schema, with the append-only triggers of the audit tables (R-AUD).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

#: Tables whose rows may never be changed or removed once written.
APPEND_ONLY_TABLES = ("audit_entry", "audit_node", "audit_checkpoint")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoint",
        sa.Column("size", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_audit_checkpoint")),
    )
    op.create_table(
        "audit_entry",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("canonical", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("site_id", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entry")),
    )
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_entry_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_entry_subject"), ["subject"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "audit_node",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("node_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "node_index", name=op.f("pk_audit_node")),
    )
    op.create_table(
        "data_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("master_key_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_key")),
    )
    op.create_table(
        "site",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site")),
    )
    op.create_table(
        "stratum",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("next_position", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_stratum")),
        sa.UniqueConstraint("key", name=op.f("uq_stratum_key")),
    )
    op.create_table(
        "participant",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("screening_number", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("screened_on", sa.Date(), nullable=False),
        sa.Column("screening_strata", sa.JSON(), nullable=False),
        sa.Column("stratum_number", sa.Integer(), nullable=True),
        sa.Column("randomization_number", sa.String(length=16), nullable=True),
        sa.Column("randomized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weight_kg", sa.String(length=16), nullable=True),
        sa.Column("sealed_arm", sa.String(length=160), nullable=True),
        sa.Column("unblinded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_participant_site_id_site")),
        sa.ForeignKeyConstraint(
            ["stratum_number"],
            ["stratum.number"],
            name=op.f("fk_participant_stratum_number_stratum"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_participant")),
        sa.UniqueConstraint(
            "randomization_number", name=op.f("uq_participant_randomization_number")
        ),
        sa.UniqueConstraint("screening_number", name=op.f("uq_participant_screening_number")),
    )
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_participant_site_id"), ["site_id"], unique=False)

    op.create_table(
        "trial",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("definition_toml", sa.Text(), nullable=False),
        sa.Column("definition_sha256", sa.String(length=64), nullable=False),
        sa.Column("seed_commitment", sa.String(length=64), nullable=False),
        sa.Column("data_key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["data_key_id"], ["data_key.id"], name=op.f("fk_trial_data_key_id_data_key")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trial")),
    )
    op.create_table(
        "user_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=24), nullable=False),
        sa.Column("site_id", sa.String(length=16), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["site.id"], name=op.f("fk_user_account_site_id_site")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_account")),
        sa.UniqueConstraint("name", name=op.f("uq_user_account_name")),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user_account.id"], name=op.f("fk_api_token_user_id_user_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_token_token_sha256")),
    )
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_token_user_id"), ["user_id"], unique=False)

    op.create_table(
        "idempotency_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_idempotency_record_user_id_user_account"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_record")),
        sa.UniqueConstraint(
            "user_id", "endpoint", "key", name=op.f("uq_idempotency_record_user_id")
        ),
    )
    op.create_table(
        "kit",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kit_number", sa.String(length=16), nullable=False),
        sa.Column("site_id", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lot", sa.String(length=32), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=False),
        sa.Column("sealed_arm", sa.String(length=160), nullable=False),
        sa.Column("participant_id", sa.String(length=36), nullable=True),
        sa.Column("visit", sa.String(length=32), nullable=True),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"], ["participant.id"], name=op.f("fk_kit_participant_id_participant")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_kit_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kit")),
        sa.UniqueConstraint("kit_number", name=op.f("uq_kit_kit_number")),
    )
    with op.batch_alter_table("kit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kit_participant_id"), ["participant_id"], unique=False)
        batch_op.create_index("ix_kit_site_status", ["site_id", "status"], unique=False)

    op.create_table(
        "slot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stratum_number", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("randomization_number", sa.String(length=16), nullable=False),
        sa.Column("sealed_arm", sa.String(length=160), nullable=False),
        sa.Column("participant_id", sa.String(length=36), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"], ["participant.id"], name=op.f("fk_slot_participant_id_participant")
        ),
        sa.ForeignKeyConstraint(
            ["stratum_number"], ["stratum.number"], name=op.f("fk_slot_stratum_number_stratum")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slot")),
        sa.UniqueConstraint("participant_id", name=op.f("uq_slot_participant_id")),
        sa.UniqueConstraint("randomization_number", name=op.f("uq_slot_randomization_number")),
        sa.UniqueConstraint("stratum_number", "position", name=op.f("uq_slot_stratum_number")),
    )

    # The audit log's tip: locked by every append, so it must exist before the first one.
    op.execute(
        "INSERT INTO audit_head (id, size, last_hash) VALUES "
        "(1, 0, '0000000000000000000000000000000000000000000000000000000000000000')"
    )
    create_append_only_triggers()


def downgrade() -> None:
    drop_append_only_triggers()
    op.drop_table("slot")
    with op.batch_alter_table("kit", schema=None) as batch_op:
        batch_op.drop_index("ix_kit_site_status")
        batch_op.drop_index(batch_op.f("ix_kit_participant_id"))

    op.drop_table("kit")
    op.drop_table("idempotency_record")
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_token_user_id"))

    op.drop_table("api_token")
    op.drop_table("user_account")
    op.drop_table("trial")
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_participant_site_id"))

    op.drop_table("participant")
    op.drop_table("stratum")
    op.drop_table("site")
    op.drop_table("data_key")
    op.drop_table("audit_node")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_entry_subject"))
        batch_op.drop_index(batch_op.f("ix_audit_entry_action"))

    op.drop_table("audit_entry")
    op.drop_table("audit_checkpoint")


def create_append_only_triggers() -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on the audit tables."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION sealroom_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'sealroom: % on % refused: the audit trail is append-only',
                    TG_OP, TG_TABLE_NAME;
            END
            $$
            """
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION sealroom_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION sealroom_refuse_change()"
            )
        return
    for table in APPEND_ONLY_TABLES:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'sealroom: {operation} on {table} refused: "
                "the audit trail is append-only'); END"
            )


def drop_append_only_triggers() -> None:
    """Drop the triggers (only a downgrade of the whole schema does this)."""
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS sealroom_refuse_change()")
        return
    for table in APPEND_ONLY_TABLES:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{operation}")
