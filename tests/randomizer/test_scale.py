"""Scale (R-NF-8): a randomisation's cost does not grow with the site's stock, and grows at
most logarithmically with the audit log.

Measured as work, not time (the machine is shared): the SQL statements a randomisation runs
and the kits it unseals, at one stock and at more than ten times that stock; the statements
at one log size and a thousand entries later; and the audit head a randomisation reads and
rewrites, whose frontier holds one hash per set bit of the log's size (at most
log2(size) + 1). ``benchmarks/stock.py`` and ``benchmarks/logsize.py`` give the timings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from randomizer.models import AuditHead, Site
from randomizer.roles import SYSTEM
from randomizer.services import kits as kit_service
from randomizer.services import participants
from tests.randomizer.test_kit_stock import count_kit_unseals

SITE = "101"


def statements_during(db: Any, action: Callable[[], Any]) -> list[str]:
    """The SQL ``action`` runs on ``db`` (savepoint names, which count up, made alike)."""
    statements: list[str] = []

    def record(_connection, _cursor, statement, _parameters, _context, _many) -> None:
        statements.append(re.sub(r"sa_savepoint_\d+", "sa_savepoint_N", statement))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return statements


#: One node of the audit tree, as the node reads name it (a proof's read, or the head's check
#: that the first append's insert returns); how many a read names depends on the log's size
#: (its set bits), which the log test bounds.
NODE_TERM = re.compile(
    r"\b(?:audit_node\.)?level = \S+ AND (?:audit_node\.)?node_index (?:IN \([^)]*\)|= \S+)"
)


def node_terms(statement: str) -> int:
    """How many audit tree nodes a statement reads (0 for every other statement)."""
    return len(NODE_TERM.findall(statement))


def without_node_reads(statements: list[str]) -> list[str]:
    return [s if not node_terms(s) else "(audit node read)" for s in statements]


def randomized(api: Any, number: str) -> None:
    response = api.randomize(number, weight_kg=70)
    assert response.status_code == 201, response.get_json()


@pytest.mark.requirement("R-NF-8")
def test_a_randomisation_does_the_same_work_at_a_site_holding_ten_times_the_stock(
    api, app, db, ctx, monkeypatch
):
    opened = count_kit_unseals(monkeypatch, app)
    for n in range(1, 5):
        assert api.screen(f"101-SCALE-{n}").status_code == 201
    randomized(api, "101-SCALE-1")  # the process's first look at the site opens every kit
    small_stock = statements_during(db, lambda: randomized(api, "101-SCALE-2"))
    with db.transaction() as session:
        site = session.get_one(Site, SITE)
        expiry = ctx.today() + timedelta(days=730)
        kit_service.stock_site(session, ctx, SYSTEM, site, 3000, "SCALE-LOT", expiry)
    randomized(api, "101-SCALE-3")  # opens the 6,000 new kits once: a change, not the stock
    before = opened["kit"]

    large_stock = statements_during(db, lambda: randomized(api, "101-SCALE-4"))

    assert opened["kit"] == before
    assert len(small_stock) > 10
    assert without_node_reads(large_stock) == without_node_reads(small_stock)


@pytest.mark.requirement("R-NF-8")
def test_a_randomisation_runs_the_same_statements_on_a_log_a_thousand_entries_longer(api, db, ctx):
    for n in range(1, 4):
        assert api.screen(f"101-LOG-{n}").status_code == 201
    randomized(api, "101-LOG-1")
    short_log = statements_during(db, lambda: randomized(api, "101-LOG-2"))
    with db.transaction() as session:
        for i in range(1000):
            ctx.audit.append(session, SYSTEM, "test.filler", None, {"i": i})

    long_log = statements_during(db, lambda: randomized(api, "101-LOG-3"))

    assert without_node_reads(long_log) == without_node_reads(short_log)
    with db.reading() as session:
        size, frontier = session.execute(select(AuditHead.size, AuditHead.frontier)).one()
    assert size > 1000
    assert len(frontier) == 32 * bin(size).count("1") <= 32 * size.bit_length()
    assert 0 < max(map(node_terms, long_log)) <= size.bit_length()


@pytest.mark.requirement("R-AUD")
def test_a_randomisation_and_its_refusal_take_no_savepoint_of_their_own(api, db):
    """Every check that can refuse a randomisation comes before its first write, so neither
    the randomisation nor its audited refusal needs a savepoint (two statements fewer)."""
    assert api.screen("101-SP-1").status_code == 201
    randomized(api, "101-SP-1")

    def savepoints(action: Callable[[], Any]) -> list[str]:
        return [s for s in statements_during(db, action) if s.upper().startswith("SAVEPOINT")]

    statuses: list[int] = []
    again = savepoints(lambda: statuses.append(api.randomize("101-SP-1", weight_kg=70).status_code))
    assert statuses == [409]  # already randomised: refused, and the refusal audited
    assert api.screen("101-SP-2").status_code == 201
    fresh = savepoints(lambda: randomized(api, "101-SP-2"))

    # The tests' transactions are themselves savepoints of one (tests.conftest.db): one each.
    assert again == fresh == ["SAVEPOINT sa_savepoint_N"]


@pytest.mark.requirement("R-AUD")
def test_a_randomisation_moves_the_audit_head_only_by_storing_its_checkpoint(api, db):
    """One write of the audit head a transaction, and not a statement of its own: the
    checkpoint's insert moves it (migration 0013's trigger)."""
    assert api.screen("101-HD-1").status_code == 201
    statements = statements_during(db, lambda: randomized(api, "101-HD-1"))
    head_writes = [s for s in statements if re.match(r"UPDATE audit_head\b", s)]
    checkpoint_inserts = [s for s in statements if re.match(r"INSERT INTO audit_checkpoint\b", s)]
    assert head_writes == []
    assert len(checkpoint_inserts) == 1


@pytest.mark.requirement("R-AUD")
def test_a_randomisation_stores_its_tree_nodes_with_its_entry_in_one_statement(api, db):
    """The entry's insert files the nodes its append completes (migration 0014's trigger):
    no statement of their own, under the audit head's lock."""
    assert api.screen("101-ND-1").status_code == 201
    statements = statements_during(db, lambda: randomized(api, "101-ND-1"))
    assert [s for s in statements if re.match(r"INSERT INTO audit_node\b", s)] == []
    assert len([s for s in statements if re.match(r"INSERT INTO audit_entry\b", s)]) == 1


def _plan(connection: Any, statement: Any, **values: Any) -> str:
    """The plan the database would run the service's ``statement`` with, as one string.

    On PostgreSQL the generic plan: the one it keeps once the driver has prepared the
    statement, chosen from the tables' statistics alone, never from the values sent.
    """
    state = statement.compile(dialect=connection.dialect).construct_expanded_state(values)
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {state.statement}", tuple(state.positional_parameters)
        ).all()
        return "\n".join(str(row[-1]) for row in rows)
    names = re.findall(r"%\((\w+)\)s", state.statement)
    body = state.statement
    for i, name in enumerate(names, start=1):
        body = body.replace(f"%({name})s", f"${i}", 1)
    literals = ", ".join(
        "NULL" if state.parameters[name] is None else f"'{state.parameters[name]}'"
        for name in names
    )
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    connection.exec_driver_sql(f"PREPARE planned AS {body}")
    rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE planned({literals})").all()
    connection.exec_driver_sql("DEALLOCATE planned")
    return "\n".join(row[0] for row in rows)


@pytest.mark.requirement("R-NF-8")
def test_a_freshly_loaded_trial_finds_kits_by_number_and_slots_by_position_not_by_scanning(
    scratch, backend, tmp_path
):
    """Right after the demo's bulk load (no autovacuum has run: it is off on CI's server),
    the plans of the service's own allocation and slot updates use the kit-number and the
    stratum-position indexes. Before the load refreshed the tables' statistics, PostgreSQL's generic
    plans filtered every kit of the site and every free slot of the stratum: a randomisation
    cost 2.4 times more at 60,000 kits than at 600 (``benchmarks/stock.py``)."""
    from tests.conftest import make_trial_database

    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=400)
    engine = trial.database().engine
    try:
        with engine.connect() as connection:
            kits = _plan(
                connection,
                kit_service.allocation_statement(2),
                k0="K0000-0000",
                k1="K0000-0001",
                site=SITE,
                participant="p",
                visit="week-1",
                allocated_at=None,
                replaces=None,
            )
            slots = _plan(
                connection,
                participants._TAKE_SLOT,
                stratum=1,
                at=1,
                participant="p",
                used_at=None,
            )
            connection.rollback()
    finally:
        engine.dispose()
    assert re.search(r"uq_kit_kit_number|\(kit_number=\?\)", kits), kits
    assert "ix_kit_site" not in kits, kits
    assert re.search(r"uq_slot_stratum_number|\(stratum_number=\? AND position=\?\)", slots), slots
    assert "uq_slot_participant_id" not in slots, slots
