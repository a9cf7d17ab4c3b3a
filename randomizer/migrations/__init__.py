"""Alembic migrations, inside the package so an installed service can upgrade itself.

``sealroom db upgrade`` brings a running deployment's database to the code's schema; the
service refuses to start on a schema other than the one its code knows (older: upgrade it
first; newer: this code is older than the database and must not touch it).
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

MIGRATIONS_DIR = Path(__file__).parent


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this code was written for."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for this package's migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this code knows."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None for a database no migration has touched)."""
    return MigrationContext.configure(connection).get_current_revision()


def refuse_newer_schema(connection: Connection) -> None:
    """Raise SchemaMismatch if the database was migrated by newer code than this."""
    current = current_revision(connection)
    if current is not None and current not in known_revisions():
        raise SchemaMismatch(
            f"the database's schema is at revision {current}, which this code does not know "
            f"(it knows up to {head_revision()}): it was upgraded by a newer Sealroom; "
            "run that version, never an older one, against it"
        )


def check_schema_current(connection: Connection) -> None:
    """Raise SchemaMismatch unless the database is at the code's head revision."""
    refuse_newer_schema(connection)
    current, head = current_revision(connection), head_revision()
    if current is None:
        raise SchemaMismatch(
            "the database has no schema and holds no trial: run `sealroom init` (or "
            "`sealroom init-demo`), or point SEALROOM_DATABASE_URL at an initialised database"
        )
    if current != head:
        raise SchemaMismatch(
            f"the database's schema is at revision {current or 'none'}, the code's at {head}: "
            "run `sealroom db upgrade` first"
        )


def upgrade(connection: Connection, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema behind ``connection`` up to ``revision``, in its transaction.

    Refuses (SchemaMismatch) a database whose revision this code does not know. Returns the
    revisions before and after.
    """
    refuse_newer_schema(connection)
    before = current_revision(connection)
    command.upgrade(alembic_config(connection), revision)
    return before, current_revision(connection) or ""
