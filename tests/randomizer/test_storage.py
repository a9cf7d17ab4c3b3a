"""Storage: the schema and its row ids (URS §4, §7, R-NF-2).

The schema is built by the Alembic migrations and declared again by the models; these tests
hold the two together on SQLite and PostgreSQL, and check the habits the storage relies on.
Its one transaction boundary is checked with the other layering rules, in
``tests/test_layering.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, String, inspect, select

from randomizer.db import make_engine
from randomizer.migrations import alembic_config, upgrade
from randomizer.models import AuditHead, Base, Kit, Participant


@pytest.fixture
def migrated(scratch, backend) -> Iterator[Engine]:
    """A fresh database of the test's backend, migrated to head and holding nothing else."""
    engine = make_engine(scratch.new_url(backend))
    with engine.begin() as connection:
        upgrade(connection)
    yield engine
    engine.dispose()


def schema_differences(engine: Engine, metadata: MetaData) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


@pytest.mark.requirement("R-NF-2")
def test_the_migrations_build_exactly_the_schema_the_models_declare(migrated):
    assert schema_differences(migrated, Base.metadata) == []


@pytest.mark.requirement("R-NF-2")
def test_the_schema_comparison_notices_a_column_the_migrations_lack(migrated):
    # The check above is only worth something if a difference would show.
    models = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(models)
    models.tables["kit"].append_column(Column("colour", String(16), nullable=True))

    differences = schema_differences(migrated, models)

    assert [(d[0], d[2], d[3].name) for d in differences] == [("add_column", "kit", "colour")]


@pytest.mark.requirement("R-NF-2")
def test_the_migrations_downgrade_to_nothing_and_upgrade_again(migrated):
    with migrated.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert inspect(migrated).get_table_names() == ["alembic_version"]

    with migrated.begin() as connection:
        upgrade(connection)

    assert schema_differences(migrated, Base.metadata) == []


@pytest.mark.requirement("R-AUD")
def test_the_audit_head_exists_after_migration_with_size_0(migrated):
    with migrated.connect() as connection:
        heads = connection.execute(select(AuditHead.id, AuditHead.size, AuditHead.last_hash)).all()

    assert heads == [(1, 0, "0" * 64)]


def is_uuid4(text: str) -> bool:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == text


@pytest.mark.requirement("R-KIT")
def test_kits_have_random_uuid_row_ids(db):
    with db.reading() as session:
        ids = session.scalars(select(Kit.id)).all()

    assert len(ids) >= 1200
    assert all(is_uuid4(kit_id) for kit_id in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.requirement("R-KIT")
def test_participants_have_random_uuid_row_ids(api, db):
    for number in range(1, 6):
        assert api.screen(f"101-UUID-{number}").status_code == 201

    with db.reading() as session:
        ids = session.scalars(
            select(Participant.id).where(Participant.screening_number.like("101-UUID-%"))
        ).all()

    assert len(ids) == 5
    assert all(is_uuid4(participant_id) for participant_id in ids)
    # Random, not a counter in UUID clothing: no two share even their first 8 hex digits.
    assert len({participant_id[:8] for participant_id in ids}) == 5
