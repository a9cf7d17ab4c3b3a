"""Depot stock and shipments (issue 12, R-SHIP).

- ``shipment``: one shipment from the depot to a site, ``requested`` (a resupply the
  service asked for; no kits chosen yet), ``in_transit`` (kits chosen and on their way) or
  ``received`` (each kit received available, damaged or lost), or ``cancelled`` (a
  request that needed nothing any more when the depot came to dispatch it).
- ``kit.shipment_id``: the shipment that took the kit from the depot to its site.

The rule of 0008 stands and is the one a shipment needs: a depot kit has no site
(``site_id`` null) and gets one exactly once, when it is shipped; that update is a change
of the destination site's kits like any other, so the triggers of 0008 bump
``site.kit_version`` and stamp the kit, and every server process's view of the site
(:mod:`randomizer.services.kit_stock`) reads it at its next allocation there. A kit never
leaves the site it was shipped to, and a kit at a site is never deleted. What 0008 left
free is now closed: a kit without a site is at the depot, so it may only be in a depot
status (``in_depot``, ``quarantined`` there, or taken out of stock there: ``damaged``,
``lost``, ``expired``); it can never be ``available`` or ``allocated`` nowhere.

Existing data: every kit so far was stocked straight onto its site (no depot yet), so no
row needs changing; the new trigger is checked by a select first so that an upgrade over
data that breaks it stops with the kits named, not half-done.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SHIPMENT_STATUSES = ("requested", "in_transit", "received", "cancelled")
DEPOT_STATUSES = ("in_depot", "quarantined", "damaged", "lost", "expired")
AT_THE_DEPOT = "a kit without a site is at the depot: only a depot status"


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


# Names and values are the constants above: nothing here comes from input.
POSTGRESQL_UP = (
    f"""
    CREATE FUNCTION kit_at_the_depot() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.site_id IS NULL AND NEW.status NOT IN ({_listed(DEPOT_STATUSES)}) THEN
            RAISE EXCEPTION '{AT_THE_DEPOT}' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER kit_at_the_depot BEFORE INSERT OR UPDATE ON kit "
    "FOR EACH ROW EXECUTE FUNCTION kit_at_the_depot()",
)
POSTGRESQL_DOWN = (
    "DROP TRIGGER kit_at_the_depot ON kit",
    "DROP FUNCTION kit_at_the_depot()",
)
SQLITE_UP = tuple(
    f"CREATE TRIGGER kit_at_the_depot_{event.lower()} BEFORE {event} ON kit "
    f"WHEN NEW.site_id IS NULL AND NEW.status NOT IN ({_listed(DEPOT_STATUSES)}) "
    f"BEGIN SELECT RAISE(ABORT, '{AT_THE_DEPOT}'); END"
    for event in ("INSERT", "UPDATE")
)
SQLITE_DOWN = ("DROP TRIGGER kit_at_the_depot_update", "DROP TRIGGER kit_at_the_depot_insert")


def upgrade() -> None:
    op.create_table(
        "shipment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("lot", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            f"status IN ({_listed(SHIPMENT_STATUSES)})", name=op.f("ck_shipment_status")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_shipment_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment")),
    )
    op.create_index("ix_shipment_site_status", "shipment", ["site_id", "status"], unique=False)
    op.add_column("kit", sa.Column("shipment_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_kit_shipment_id"), "kit", ["shipment_id"], unique=False)
    stray = op.get_bind().execute(
        sa.text(
            "SELECT kit_number FROM kit WHERE site_id IS NULL "  # noqa: S608 (constants)
            f"AND status NOT IN ({_listed(DEPOT_STATUSES)}) ORDER BY kit_number"
        )
    )
    numbers = [row[0] for row in stray]
    if numbers:
        raise RuntimeError(f"{AT_THE_DEPOT}; these kits are not: {', '.join(numbers[:20])}")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_UP if sqlite else POSTGRESQL_UP:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_DOWN if sqlite else POSTGRESQL_DOWN:
        op.execute(statement)
    op.drop_index(op.f("ix_kit_shipment_id"), table_name="kit")
    if sqlite:
        op.execute("ALTER TABLE kit DROP COLUMN shipment_id")
    else:
        op.drop_column("kit", "shipment_id")
    op.drop_index("ix_shipment_site_status", table_name="shipment")
    op.drop_table("shipment")
