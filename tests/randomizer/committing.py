"""A real database whose commits are real: for tests that look from another connection.

The ``db`` fixture's transactions are savepoints of one rolled-back transaction, so nothing
it "commits" is ever visible to another connection. Tests of what happens *after* a commit
(callbacks, delivery rounds racing each other) use :func:`committing_trial` instead: a
fresh demo database of their own (a few kits only, so it is quick to build), a
:class:`~randomizer.db.Database` over it and an observer engine that is not the service's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from randomizer.db import Database
from randomizer.services.context import TrialContext, load_trial_context
from tests.conftest import Clock, Scratch, make_trial_database


@dataclass
class Committing:
    """A real database, the service's view of it and a separate observer."""

    backend: str
    url: str
    database: Database
    ctx: TrialContext
    #: A separate engine (its own pool, its own connections): what another process sees.
    observer: Engine

    def scalar(self, statement: Any) -> Any:
        """One value read on a fresh connection of the observer, outside any service session."""
        with self.observer.connect() as connection:
            return connection.execute(statement).scalar()

    def scalars(self, statement: Any) -> list[Any]:
        with self.observer.connect() as connection:
            return list(connection.execute(statement).scalars())


def committing_trial(
    scratch: Scratch, backend: str, directory: Path, clock: Clock
) -> Iterator[Committing]:
    """Yield a :class:`Committing` over a new demo database of ``backend``; dispose after."""
    trial = make_trial_database(scratch, backend, directory, kits_per_arm=4)
    database = Database(trial.url)
    with database.reading() as session:
        ctx = load_trial_context(session, trial.settings.keys_dir, {}, clock=clock)
    observer = create_engine(database.url)
    try:
        yield Committing(backend, trial.url, database, ctx, observer)
    finally:
        observer.dispose()
        database.dispose()
