"""Engine, sessions and the one transaction boundary.

Services only ``flush``; :meth:`Database.transaction` is the one place that commits, so a
state change and its audit entry can never part. Callbacks registered with
:func:`before_commit` (the audit log's checkpoint) run inside the same transaction, just
before it commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from randomizer.errors import Problem

_BEFORE_COMMIT = "sealroom.before_commit"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (``postgresql://...``)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite, every transaction begins with ``BEGIN IMMEDIATE``.

    SQLite has no row locks: taking the write lock when the transaction starts (instead of
    at its first write) is what serialises two randomisations, and it avoids the deadlock of
    two readers that both try to upgrade to writers.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module so that "begin" below is ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def before_commit(session: Session, name: str, callback: Callable[[Session], None]) -> None:
    """Run ``callback(session)`` once, just before this session's transaction commits.

    Registering the same ``name`` twice keeps one callback: the audit log asks for one
    checkpoint per transaction however many entries it appended.
    """
    session.info.setdefault(_BEFORE_COMMIT, {})[name] = callback


class Database:
    """A database: its engine and a factory of sessions."""

    def __init__(self, url: str, *, bind: Connection | None = None) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url) if bind is None else bind.engine
        # Tests bind sessions to an outer connection whose transaction they roll back; each
        # "commit" then only releases a savepoint (warehouse's conftest does the same).
        options: dict[str, Any] = {"expire_on_commit": False}
        if bind is not None:
            options["join_transaction_mode"] = "create_savepoint"
        self.sessions = sessionmaker(bind=bind if bind is not None else self.engine, **options)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end, or not at all.

        A :class:`~randomizer.errors.Problem` marked ``recorded`` (a refusal whose audit
        entry the service has just written) commits that entry and is then re-raised; any
        other exception rolls everything back.
        """
        session = self.sessions()
        try:
            yield session
            self._commit(session)
        except Problem as problem:
            if problem.recorded:
                self._commit(session)
            else:
                session.rollback()
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: whatever it did is rolled back at the end."""
        session = self.sessions()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    @staticmethod
    def _commit(session: Session) -> None:
        callbacks = session.info.pop(_BEFORE_COMMIT, {})
        for callback in callbacks.values():
            callback(session)
        session.commit()

    def dispose(self) -> None:
        """Close the pool's connections (before a fork, at exit)."""
        self.engine.dispose()
