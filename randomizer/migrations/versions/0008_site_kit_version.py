"""A change counter per site for its kits (issue 9: a randomisation's cost independent of stock).

- ``site.kit_version`` counts the changes to the site's kits; ``kit.site_version`` is the
  site's count at the kit's latest change (index ``(site_id, site_version)``). A server
  process keeps the arms of a site's available kits unsealed in memory and, under the
  site's lock, reads only the kits changed since the version it last saw
  (:mod:`randomizer.services.kit_stock`).
- Triggers, not the code, keep the counters: every INSERT or UPDATE of a kit at a site
  bumps the site's counter in the same transaction and stamps the kit with it, whoever
  wrote it (a service, a migration, a person with ``psql``), so no writer can forget.
  On PostgreSQL a row trigger stamps the kit and a statement trigger bumps the counter
  once per statement (a per-row bump would stack one version of the site's row per kit
  of a shipment); on SQLite, whose triggers are per row only, each kit bumps it.
- A kit never leaves the site it was received at, and is never deleted: both are refused
  (a cache reading a site's changed kits would not see a kit that left). Kits at no site
  yet (a depot) are free.

A running deployment's kits count as one change: each site holding kits is at version 1,
and its kits too.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LEAVES = "a kit never leaves the site it was received at"
DELETED = "a kit at a site is never deleted"

# The messages are the constants above: nothing here comes from input.
POSTGRESQL_UP = (
    f"""
    CREATE FUNCTION kit_stamp_site_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_trigger_depth() > 1 THEN  -- the re-stamp below
            RETURN NEW;
        END IF;
        IF TG_OP = 'DELETE' THEN
            IF OLD.site_id IS NOT NULL THEN
                RAISE EXCEPTION '{DELETED}' USING ERRCODE = 'check_violation';
            END IF;
            RETURN OLD;
        END IF;
        IF TG_OP = 'UPDATE' AND OLD.site_id IS NOT NULL
                AND NEW.site_id IS DISTINCT FROM OLD.site_id THEN
            RAISE EXCEPTION '{LEAVES}' USING ERRCODE = 'check_violation';
        END IF;
        NEW.site_version := COALESCE(
            (SELECT kit_version + 1 FROM site WHERE id = NEW.site_id), 0);
        RETURN NEW;
    END $$
    """,  # noqa: S608
    # The bump waits for whoever holds the site's row (locks.lock_site): a writer that
    # came without that lock is serialised here, and if another transaction moved the
    # counter meanwhile, its kits are stamped again with the counter it ends at.
    """
    CREATE FUNCTION kit_bump_site_version() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bumped RECORD;
    BEGIN
        IF pg_trigger_depth() > 1 THEN
            RETURN NULL;
        END IF;
        FOR bumped IN
            UPDATE site SET kit_version = kit_version + 1
                WHERE id IN (SELECT site_id FROM changed_kits)
                RETURNING id, kit_version
        LOOP
            UPDATE kit SET site_version = bumped.kit_version
                WHERE id IN (SELECT id FROM changed_kits WHERE site_id = bumped.id)
                AND site_version <> bumped.kit_version;
        END LOOP;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER kit_stamp_site_version BEFORE INSERT OR UPDATE OR DELETE ON kit "
    "FOR EACH ROW EXECUTE FUNCTION kit_stamp_site_version()",
    "CREATE TRIGGER kit_insert_bumps_site_version AFTER INSERT ON kit "
    "REFERENCING NEW TABLE AS changed_kits "
    "FOR EACH STATEMENT EXECUTE FUNCTION kit_bump_site_version()",
    "CREATE TRIGGER kit_update_bumps_site_version AFTER UPDATE ON kit "
    "REFERENCING NEW TABLE AS changed_kits "
    "FOR EACH STATEMENT EXECUTE FUNCTION kit_bump_site_version()",
)
POSTGRESQL_DOWN = (
    "DROP TRIGGER kit_update_bumps_site_version ON kit",
    "DROP TRIGGER kit_insert_bumps_site_version ON kit",
    "DROP TRIGGER kit_stamp_site_version ON kit",
    "DROP FUNCTION kit_bump_site_version()",
    "DROP FUNCTION kit_stamp_site_version()",
)

_SQLITE_BUMP = """
    BEGIN
        UPDATE site SET kit_version = kit_version + 1 WHERE id = NEW.site_id;
        UPDATE kit SET site_version = (SELECT kit_version FROM site WHERE id = NEW.site_id)
            WHERE id = NEW.id;
    END
"""
SQLITE_UP = (
    # The stamp below is itself an UPDATE of the kit: "site_version unchanged" tells a
    # writer's update from the trigger's own.
    "CREATE TRIGGER kit_insert_bumps_site_version AFTER INSERT ON kit "
    f"WHEN NEW.site_id IS NOT NULL {_SQLITE_BUMP}",
    "CREATE TRIGGER kit_update_bumps_site_version AFTER UPDATE ON kit "
    f"WHEN NEW.site_id IS NOT NULL AND NEW.site_version IS OLD.site_version {_SQLITE_BUMP}",
    "CREATE TRIGGER kit_stays_at_its_site BEFORE UPDATE OF site_id ON kit "
    "WHEN OLD.site_id IS NOT NULL AND NEW.site_id IS NOT OLD.site_id "
    f"BEGIN SELECT RAISE(ABORT, '{LEAVES}'); END",
    "CREATE TRIGGER kit_never_deleted BEFORE DELETE ON kit WHEN OLD.site_id IS NOT NULL "
    f"BEGIN SELECT RAISE(ABORT, '{DELETED}'); END",
)
SQLITE_DOWN = tuple(
    f"DROP TRIGGER {name}"
    for name in (
        "kit_never_deleted",
        "kit_stays_at_its_site",
        "kit_update_bumps_site_version",
        "kit_insert_bumps_site_version",
    )
)


def upgrade() -> None:
    for table, column in (("site", "kit_version"), ("kit", "site_version")):
        op.add_column(table, sa.Column(column, sa.Integer(), server_default="0", nullable=False))
    # Back-filled before the triggers exist: the kits already there are one change.
    op.execute("UPDATE kit SET site_version = 1 WHERE site_id IS NOT NULL")
    op.execute("UPDATE site SET kit_version = 1 WHERE id IN (SELECT site_id FROM kit)")
    op.create_index("ix_kit_site_version", "kit", ["site_id", "site_version"], unique=False)
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_UP if sqlite else POSTGRESQL_UP:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_DOWN if sqlite else POSTGRESQL_DOWN:
        op.execute(statement)
    op.drop_index("ix_kit_site_version", table_name="kit")
    if sqlite:
        op.execute("ALTER TABLE kit DROP COLUMN site_version")
        op.execute("ALTER TABLE site DROP COLUMN kit_version")
    else:
        op.drop_column("kit", "site_version")
        op.drop_column("site", "kit_version")
