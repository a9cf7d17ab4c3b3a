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


#: One node of the audit tree, as the node reads name it; how many a read names depends on
#: the log's size (its set bits), which the log test bounds.
NODE_TERM = re.compile(r"audit_node\.level = \S+ AND audit_node\.node_index IN \([^)]*\)")


def node_terms(statement: str) -> int:
    """How many audit tree nodes a statement reads (0 for every other statement)."""
    return len(NODE_TERM.findall(statement)) if statement.lstrip().startswith("SELECT") else 0


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
