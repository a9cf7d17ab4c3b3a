"""Engine, sessions and the one transaction boundary.

Services only ``flush``; :meth:`Database.transaction` is the one place that commits, so a
state change and its audit entry can never part (a test checks that ``commit(`` and
``engine.begin(`` appear nowhere else; schema migrations go through
:meth:`Database.schema_transaction`).

When a failed request commits: only when its refusal was *recorded*, that is when the
service ran its work under :func:`randomizer.services.refusals.refusals_audited`, which rolls
the work back to a savepoint (or, for work that refuses only before it writes, checks that
it wrote nothing: :func:`refusing_before_writing`) and appends the refusal's own audit
entry. The transaction then commits that entry (and the idempotency record that stores the
refusal for replay) and nothing else. Every other exception, a refusal that was not
recorded included, rolls the whole transaction back.

Callbacks registered with :func:`before_commit` (the audit log's checkpoint) run inside the
transaction, just before it commits. Callbacks registered with :func:`after_commit` run once
it has committed, never after a rollback: side effects that must not happen for work that
was undone (handing a file over, waking the outbox's delivery) go there. Their failure is
logged and cannot undo the commit; anything that must survive a crash between the commit
and the callback is written to the outbox table in the transaction itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: writers wait in SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from randomizer.errors import CommitOutcomeUnknown, Problem, ServiceUnavailable
from randomizer.files import sqlite_do_connect

log = logging.getLogger(__name__)

_BEFORE_COMMIT = "sealroom.before_commit"
_AFTER_COMMIT = "sealroom.after_commit"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (``postgresql://...``)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


#: Execution option of the connections :meth:`Database.reading` uses.
READ_ONLY = "sealroom_read_only"


#: How long a write waits for SQLite's write lock before the answer is a 503 (well inside
#: the server's worker timeout).
SQLITE_BUSY_SECONDS = 10.0
#: How long opening a PostgreSQL connection may take before the answer is a 503 (a server
#: whose host has gone silent would otherwise hold a request for the TCP timeout).
CONNECT_SECONDS = 10
#: What a database that is gone, failing over or busy raises: the driver's errors, a pooled
#: connection that cannot be replaced, every pooled connection in use. The API answers them
#: with a 503 problem (:mod:`randomizer.api.problems`).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


#: Set once the driver has been asked to COMMIT, in the context that asked (see _commit).
_COMMITTING: ContextVar[bool] = ContextVar("sealroom_committing", default=False)


def _committing(_connection: Connection) -> None:
    _COMMITTING.set(True)


def make_engine(url: str, *, busy_seconds: float = SQLITE_BUSY_SECONDS, **kwargs: Any) -> Engine:
    engine = _make_engine(url, busy_seconds=busy_seconds, **kwargs)
    # Just before the driver's COMMIT: from there on, a lost connection leaves the outcome
    # unknown (Database._commit).
    event.listen(engine, "commit", _committing)
    return engine


def _make_engine(url: str, *, busy_seconds: float, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite, every writing transaction begins with ``BEGIN IMMEDIATE``.

    SQLite has no row locks: taking the write lock when the transaction starts (instead of
    at its first write) is what serialises two randomisations, and it avoids the deadlock of
    two readers that both try to upgrade to writers. Reading transactions
    (:meth:`Database.reading`) begin with a plain ``BEGIN``: in WAL mode they read a snapshot
    and never hold the write lock, so a long read (``audit verify``, a report) never makes a
    write wait.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": busy_seconds}, **kwargs)
        # The database file holds trial data: created 0600 (its -wal and -shm take its mode).
        event.listen(engine, "do_connect", sqlite_do_connect)
        event.listen(
            engine,
            "connect",
            lambda connection, record: _sqlite_on_connect(connection, record, busy_seconds),
        )
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    # A pooled connection that died (server restarted, backend terminated, fail-over) is
    # replaced when it is checked out, before a transaction starts on it: the one retry that
    # is always safe. Nothing that has begun is ever re-run.
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_SECONDS}
    )
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any, busy_seconds: float) -> None:
    # Take transaction control from the sqlite3 module so that "begin" below is ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class SqliteWriters:
    """The writers of one SQLite database, in one process: they take turns here.

    SQLite's busy handler polls: a writer that finds the write lock taken sleeps 1, 2, 5,
    10, ... up to 100 ms before it tries again, so under contention the lock often sits
    free while every waiter sleeps (issue 9 measured randomisations flat from 1 to 32
    clients, and seconds of tail latency). Here the threads of a process queue on a lock
    (for at most the busy timeout, then 503 as before), and the one at the head of the
    queue takes an ``flock`` of ``<database>-writers``, polling every few milliseconds at
    most (one thread a process) until the same deadline: the lock sits idle for at most a
    few milliseconds, and a writer of another process that hangs costs this one a 503,
    never a hung request. A writer that does
    not come through here (another program, a migration) still meets SQLite's own lock.

    One per database file per process (:func:`sqlite_writers`): a transaction nested in
    another of the same thread, on any :class:`Database` of that file, does not queue again
    (SQLite's busy timeout refuses it, as before).
    """

    def __init__(self, path: str) -> None:
        self.path = f"{path}-writers"
        self._threads = threading.Lock()
        self._mine = threading.local()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        # A descriptor opened before a fork is shared with the child, and flock would not
        # tell the two processes apart: each process opens its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @staticmethod
    def _take_file_lock(fd: int, deadline: float) -> None:
        """Take the ``flock`` before ``deadline`` (503 otherwise): a writer of another process
        that hangs must not hold this one's threads for longer than the busy timeout. Only
        one thread of a process waits here, so the short polls cost next to nothing."""
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _busy() from None
                time.sleep(pause)
                pause = min(pause * 2, 0.004)

    @contextmanager
    def turn(self, busy_seconds: float) -> Iterator[None]:
        """Hold the database's writer turn for the block (re-entrant in one thread)."""
        if getattr(self._mine, "held", False):
            yield
            return
        deadline = time.monotonic() + busy_seconds
        if not self._threads.acquire(timeout=busy_seconds):
            raise _busy()
        try:
            fd = self._file()
            self._take_file_lock(fd, deadline)
            self._mine.held = True
            try:
                yield
            finally:
                self._mine.held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The database is busy; nothing was changed. Try again shortly "
        "(with the same Idempotency-Key, if you sent one)."
    )


_SQLITE_WRITERS: dict[str, SqliteWriters] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def sqlite_writers(url: str) -> SqliteWriters | None:
    """The writer queue of the SQLite file ``url`` names (None: not a file, or not POSIX)."""
    parsed = make_url(url)
    if fcntl is None or parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.query.get("mode") == "memory":
        return None
    path = os.path.realpath(parsed.database)
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(path, SqliteWriters(path))


def before_commit(session: Session, name: str, callback: Callable[[Session], None]) -> None:
    """Run ``callback(session)`` once, just before this session's transaction commits.

    Registering the same ``name`` twice keeps one callback: the audit log asks for one
    checkpoint per transaction however many entries it appended.
    """
    session.info.setdefault(_BEFORE_COMMIT, {})[name] = callback


def after_commit(session: Session, name: str, callback: Callable[[], None]) -> None:
    """Run ``callback()`` once this session's transaction has committed; never on rollback.

    Registering the same ``name`` twice keeps the last callback. A callback that raises is
    logged; the commit stands.
    """
    session.info.setdefault(_AFTER_COMMIT, {})[name] = callback


def refresh_statistics_after_commit(session: Session, *tables: str) -> None:
    """After a bulk load into ``tables``: on PostgreSQL, ANALYZE them once it has committed.

    The driver prepares the busiest statements after a few runs, and PostgreSQL then keeps a
    generic plan chosen from the tables' statistics. Tables loaded in bulk and not analysed
    yet (autovacuum may be minutes away, or off) looked nearly empty to it: the kit
    allocation filtered every kit of the site, the slot update every free slot of the
    stratum, and a randomisation's cost grew with the stock (x2.4 at 60,000 kits). SQLite's
    planner needs no statistics for these lookups (its unique indexes win outright).
    The ANALYZE waits at most a few seconds for a lock (a schema change holding the table);
    a failed one is logged, and the load stands.
    """
    engine = session.get_bind().engine
    if engine.dialect.name != "postgresql":
        return
    preparer = engine.dialect.identifier_preparer
    statement = "ANALYZE " + ", ".join(preparer.quote(table) for table in sorted(tables))

    def analyze() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            connection.exec_driver_sql(statement)
            connection.commit()

    after_commit(session, statement, analyze)


#: In a connection's ``info``: how many DML statements (Core or ORM, flushes included) it has
#: run, counted by the listener below for every engine, less those that changed no row
#: (:func:`changed_no_row`).
_DML_STATEMENTS = "sealroom.dml_statements"


@event.listens_for(Engine, "before_execute")
def _count_dml(connection: Connection, clause: Any, *_args: Any) -> None:
    if getattr(clause, "is_dml", False):
        connection.info[_DML_STATEMENTS] = connection.info.get(_DML_STATEMENTS, 0) + 1


def changed_no_row(session: Session) -> None:
    """The DML statement just run changed no row (its caller knows: an ``UPDATE ...
    RETURNING`` returned none), so it is no write to :func:`refusing_before_writing`.

    Only the caller can tell: SQLite's driver reports no row count for a statement with
    ``RETURNING`` until its rows are read.
    """
    connection = session.connection()
    connection.info[_DML_STATEMENTS] = connection.info.get(_DML_STATEMENTS, 0) - 1


class RefusedAfterWriting(RuntimeError):
    """A block run under :func:`refusing_before_writing` raised a refusal after it had
    written: a programming error. The whole transaction rolls back."""


@contextmanager
def refusing_before_writing(session: Session) -> Iterator[None]:
    """Work that raises a :class:`~randomizer.errors.Problem` only before its first write,
    so that a refusal needs no savepoint to undo anything (a savepoint and its release cost
    two statements a request).

    A refusal is passed on as it is when the block has run no DML statement (or only ones
    that changed no row, :func:`changed_no_row`); after one, it
    becomes :class:`RefusedAfterWriting`, which rolls the whole transaction back (no
    half-written change is ever committed beside a refusal). After-commit callbacks the
    block registered are dropped with the refusal, as :func:`savepoint` drops them.
    """
    connection = session.connection()
    written = connection.info.get(_DML_STATEMENTS, 0)
    with _after_commit_dropped_on_error(session):
        try:
            yield
        except Problem as problem:
            if connection.info.get(_DML_STATEMENTS, 0) != written:
                raise RefusedAfterWriting(
                    f"refused ({problem.type_name}) after writing: the refusals of this work"
                    " must all come before its first write"
                ) from problem
            raise


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """Work that an exception rolls back alone, with the after-commit callbacks it registered.

    The transaction goes on; only what the block did is undone.
    """
    with _after_commit_dropped_on_error(session), session.begin_nested():
        yield


@contextmanager
def _after_commit_dropped_on_error(session: Session) -> Iterator[None]:
    """The after-commit callbacks the block registers are dropped if it raises."""
    before = dict(session.info.get(_AFTER_COMMIT, {}))
    try:
        yield
    except BaseException:
        session.info[_AFTER_COMMIT] = before
        raise


def _run_after_commit(callbacks: dict[str, Callable[[], None]]) -> None:
    for name, callback in callbacks.items():
        try:
            callback()
        except Exception:
            log.exception("after-commit callback %s failed; the commit stands", name)


class Database:
    """A database: its engine and a factory of sessions."""

    def __init__(
        self,
        url: str,
        *,
        bind: Connection | None = None,
        busy_seconds: float = SQLITE_BUSY_SECONDS,
    ) -> None:
        self.url = normalise_url(url)
        self.busy_seconds = busy_seconds
        self.engine = (
            make_engine(self.url, busy_seconds=busy_seconds) if bind is None else bind.engine
        )
        # Tests' bound sessions share one connection: nothing to queue for.
        self._writers = sqlite_writers(self.url) if bind is None else None
        # Tests bind sessions to an outer connection whose transaction they roll back; each
        # "commit" then only releases a savepoint (warehouse's conftest does the same).
        options: dict[str, Any] = {"expire_on_commit": False}
        if bind is not None:
            options["join_transaction_mode"] = "create_savepoint"
        self.sessions = sessionmaker(bind=bind if bind is not None else self.engine, **options)
        self.read_sessions = sessionmaker(
            bind=bind if bind is not None else self.engine.execution_options(**{READ_ONLY: True}),
            **options,
        )

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end, or not at all.

        A :class:`~randomizer.errors.Problem` marked ``recorded`` (a refusal whose audit
        entry the service has just written) commits that entry and is then re-raised; any
        other exception rolls everything back. :func:`after_commit` callbacks run after a
        commit, outside the transaction. On SQLite, writers take turns
        (:class:`SqliteWriters`).
        """
        if self._writers is None:
            with self._transaction() as session:
                yield session
            return
        with self._writers.turn(self.busy_seconds), self._transaction() as session:
            yield session

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        session = self.sessions()
        committed = False
        try:
            yield session
            self._commit(session)
            committed = True
        except Problem as problem:
            if problem.recorded:
                self._commit(session)
                committed = True
            else:
                session.rollback()
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            callbacks = session.info.pop(_AFTER_COMMIT, {})
            session.close()
            if committed:
                _run_after_commit(callbacks)

    @contextmanager
    def schema_transaction(self) -> Iterator[Connection]:
        """A connection whose work (schema migrations) commits at the end, or not at all."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: whatever it did is rolled back at the end.

        On SQLite it never takes the write lock (a plain ``BEGIN``): do not write in it.
        """
        session = self.read_sessions()
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
        # A lost connection before the driver's COMMIT means nothing was committed (a plain
        # 503). During the COMMIT it may have been: the caller is told so, and the work is
        # never re-run.
        committing = _COMMITTING.set(False)
        try:
            session.commit()
        except DATABASE_UNAVAILABLE as error:
            if not _COMMITTING.get():
                raise
            raise CommitOutcomeUnknown(
                "The database connection was lost while the change was being committed: it "
                "may or may not have been made. Send the request again with the same "
                "Idempotency-Key: the first answer is replayed if the change was made, and it "
                "is made once if it was not (without a key, read the resource first)."
            ) from error
        finally:
            _COMMITTING.reset(committing)

    def dispose(self) -> None:
        """Close the pool's connections (before a fork, at exit)."""
        self.engine.dispose()
