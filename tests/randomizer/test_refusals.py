"""One audited refusal (randomizer.services.refusals, R-AUD).

A refusal raised inside :func:`refusals_audited` undoes the block's work (to a savepoint),
appends exactly one refusal entry and marks the problem recorded, so the transaction commits
that entry and nothing else. Any other exception rolls everything back, a refusal entry
already written included. The entry says why (reason, status, failed rule ids, field paths,
the extras a refusal declares auditable) and nothing an arm could follow from.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select, update

from audit.entry import entry_hash
from audit.verify import verify_log
from randomizer.db import Database, RefusedAfterWriting
from randomizer.errors import (
    AlreadyRandomized,
    Conflict,
    Ineligible,
    Problem,
    ScreeningWindow,
    StratumExhausted,
    ValidationFailed,
)
from randomizer.locks import take_stratum_position
from randomizer.models import AuditCheckpoint, AuditEntry, AuditHead, OutboxMessage, Stratum
from randomizer.roles import Actor
from randomizer.services.outbox import Message, enqueue
from randomizer.services.refusals import MAX_FIELDS, refusal_data, refusals_audited
from tests.conftest import ELIGIBLE
from tests.randomizer.test_locks import statements_sent

pytestmark = pytest.mark.requirement("R-AUD")

ACTOR = Actor(name="coordinator-101", role="coordinator", site="101")
ACTION = "test.refused"


def audit_size(db: Database) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def entries_from(db: Database, seq: int) -> list[dict[str, Any]]:
    """The entries from ``seq`` on, parsed, with the site each was filed under."""
    with db.reading() as session:
        stored = session.execute(
            select(AuditEntry.canonical, AuditEntry.site_id)
            .where(AuditEntry.seq >= seq)
            .order_by(AuditEntry.seq)
        ).all()
    return [{**json.loads(canonical), "site_id": site} for canonical, site in stored]


def outbox_count(db: Database) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage))


def do_some_work(session: Any, ctx: Any) -> None:
    """Writes a refused block makes before it refuses: an audit entry and a message."""
    ctx.audit.append(session, ACTOR, "test.work", "101-0001", {"step": 1}, site="101")
    enqueue(session, ctx, [Message("test", "someone@example.org", "work", "done")])


def refuse(db: Database, ctx: Any, problem: Problem, **kwargs: Any) -> Problem:
    """Raise ``problem`` inside refusals_audited in a transaction; return it as raised."""
    with (
        pytest.raises(type(problem)) as raised,
        db.transaction() as session,
        refusals_audited(session, ctx, ACTOR, ACTION, "101-0001", site="101", **kwargs),
    ):
        do_some_work(session, ctx)
        raise problem
    return raised.value


# What remains ---------------------------------------------------------------------------


def test_a_refusal_leaves_exactly_its_own_entry_and_none_of_the_blocks_work(db, ctx):
    before = audit_size(db)
    with db.reading() as session:
        previous = session.scalar(select(AuditEntry.canonical).where(AuditEntry.seq == before - 1))

    problem = refuse(db, ctx, Conflict("Participant 101-0001 is withdrawn."))

    assert problem.recorded
    (entry,) = entries_from(db, before)
    assert entry["seq"] == before
    assert entry["action"] == ACTION
    assert entry["subject"] == "101-0001"
    assert (entry["actor"], entry["role"], entry["site_id"]) == (
        "coordinator-101",
        "coordinator",
        "101",
    )
    assert entry["data"] == {"reason": "conflict", "status": 409}
    # The block's own entry left no trace in the chain: the refusal follows the last
    # committed entry, and the head says so.
    assert entry["prev"] == entry_hash(previous.encode())
    assert outbox_count(db) == 0
    with db.reading() as session:
        head = session.get_one(AuditHead, 1)
        assert head.size == before + 1
        checkpoints = session.scalars(select(AuditCheckpoint.size)).all()
    assert before + 1 in checkpoints


def test_the_log_still_verifies_after_refused_work_that_had_appended_entries(db, ctx):
    refuse(db, ctx, Conflict("refused"))
    refuse(db, ctx, StratumExhausted("refused again", stratum="region=europe|prior_ig=no"))

    with db.reading() as session:
        log = [
            text.encode()
            for text in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
        ]
        notes = list(session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)))
    report = verify_log(log, notes, ctx.audit.verifier_key)
    assert report.ok, report.problems


def test_the_callers_data_is_added_to_the_entry(db, ctx):
    before = audit_size(db)

    refuse(db, ctx, Conflict("refused"), data={"screening_number": "101-0001?"})

    (entry,) = entries_from(db, before)
    assert entry["data"] == {"reason": "conflict", "status": 409, "screening_number": "101-0001?"}


def test_an_exception_that_is_not_a_refusal_rolls_back_everything(db, ctx):
    before, messages = audit_size(db), outbox_count(db)

    with (
        pytest.raises(RuntimeError),
        db.transaction() as session,
        refusals_audited(session, ctx, ACTOR, ACTION, "101-0001", site="101"),
    ):
        do_some_work(session, ctx)
        raise RuntimeError("a bug, not a refusal")

    assert audit_size(db) == before
    assert outbox_count(db) == messages


@pytest.mark.parametrize(
    "later",
    [RuntimeError("a bug after the refusal"), Conflict("an unrecorded refusal")],
    ids=["exception", "unrecorded-refusal"],
)
def test_a_later_failure_of_the_transaction_rolls_back_the_refusal_entry_too(db, ctx, later):
    before = audit_size(db)
    recorded: list[Problem] = []

    with pytest.raises(type(later)), db.transaction() as session:
        try:
            with refusals_audited(session, ctx, ACTOR, ACTION, "101-0001", site="101"):
                do_some_work(session, ctx)
                raise Conflict("refused")
        except Conflict as refusal:
            recorded.append(refusal)
        raise later

    assert [problem.recorded for problem in recorded] == [True]
    assert audit_size(db) == before
    assert outbox_count(db) == 0


def test_a_refusal_raised_outside_refusals_audited_is_not_recorded_and_leaves_nothing(db, ctx):
    before = audit_size(db)

    with pytest.raises(Conflict) as raised, db.transaction() as session:
        do_some_work(session, ctx)
        raise Conflict("refused by nobody's block")

    assert not raised.value.recorded
    assert audit_size(db) == before


def test_work_that_succeeds_inside_the_block_commits_without_a_refusal_entry(db, ctx):
    before = audit_size(db)

    with (
        db.transaction() as session,
        refusals_audited(session, ctx, ACTOR, ACTION, "101-0001", site="101"),
    ):
        do_some_work(session, ctx)

    assert [entry["action"] for entry in entries_from(db, before)] == ["test.work"]
    assert outbox_count(db) == 1


# Work that refuses before it writes (no savepoint) ------------------------------------------


def test_work_that_refuses_before_writing_is_recorded_without_a_savepoint(db, ctx):
    before = audit_size(db)
    count = select(func.count()).select_from(AuditEntry)

    with pytest.raises(Conflict) as raised, db.transaction() as session:
        session.scalar(count)  # the transaction has begun (the tests' own is a savepoint)
        with (
            statements_sent(db.engine) as sent,
            refusals_audited(
                session, ctx, ACTOR, ACTION, "101-0001", site="101", refuses_before_writing=True
            ),
        ):
            session.scalar(count)  # reads only
            raise Conflict("refused before writing")

    assert raised.value.recorded
    assert [entry["action"] for entry in entries_from(db, before)] == [ACTION]
    assert sent and not [statement for statement in sent if "SAVEPOINT" in statement.upper()]


@pytest.mark.parametrize("write", ["core", "orm"])
def test_a_refusal_after_a_write_in_work_that_must_refuse_first_rolls_back_everything(
    db, ctx, write
):
    before, messages = audit_size(db), outbox_count(db)

    with (
        pytest.raises(RefusedAfterWriting),
        db.transaction() as session,
        refusals_audited(
            session, ctx, ACTOR, ACTION, "101-0001", site="101", refuses_before_writing=True
        ),
    ):
        if write == "core":  # the audit log appends with Core statements
            ctx.audit.append(session, ACTOR, "test.work", "101-0001", {}, site="101")
        else:  # the outbox's rows are flushed by the ORM
            enqueue(session, ctx, [Message("test", "someone@example.org", "work", "done")])
        raise Conflict("refused after writing")

    assert audit_size(db) == before
    assert outbox_count(db) == messages


@pytest.mark.requirement("R-LIST-2")
def test_a_used_up_strata_take_changed_no_row_so_its_refusal_is_recorded_without_a_savepoint(
    db, ctx
):
    """The stratum's one statement is the randomisation's first write: when every slot is
    used it changes no row, and the refusal after it is recorded, not rolled back."""
    with db.transaction() as session:
        session.execute(
            update(Stratum).where(Stratum.number == 1).values(next_position=Stratum.size + 1)
        )
    before = audit_size(db)

    with pytest.raises(StratumExhausted) as raised, db.transaction() as session:
        session.scalar(select(func.count()).select_from(AuditEntry))  # the transaction has begun
        with (
            statements_sent(db.engine) as sent,
            refusals_audited(
                session, ctx, ACTOR, ACTION, "101-0001", site="101", refuses_before_writing=True
            ),
        ):
            assert take_stratum_position(session, 1) is None
            raise StratumExhausted("No slot.", stratum="region=north_america|prior_ig=yes")

    assert raised.value.recorded
    assert [entry["action"] for entry in entries_from(db, before)] == [ACTION]
    assert not [statement for statement in sent if "SAVEPOINT" in statement.upper()]


def test_a_refusal_after_a_stratum_position_was_taken_rolls_back_everything(db, ctx):
    with db.reading() as session:
        cursor = session.scalar(select(Stratum.next_position).where(Stratum.number == 1))
    before = audit_size(db)

    with (
        pytest.raises(RefusedAfterWriting),
        db.transaction() as session,
        refusals_audited(
            session, ctx, ACTOR, ACTION, "101-0001", site="101", refuses_before_writing=True
        ),
    ):
        assert take_stratum_position(session, 1) == cursor
        raise Conflict("refused after writing")

    assert audit_size(db) == before
    with db.reading() as session:
        assert session.scalar(select(Stratum.next_position).where(Stratum.number == 1)) == cursor


# What the entry says ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "data"),
    [
        (
            Ineligible(
                "Not eligible.",
                failed_rules=[
                    {"id": "I2", "text": "EULAR/ACR probable or definite DM."},
                    {"id": "E1", "text": "No malignancy within 5 years."},
                ],
            ),
            {"reason": "ineligible", "status": 422, "failed_rules": ["I2", "E1"]},
        ),
        (
            ValidationFailed({"weight_kg": ["Not a number."], "eligibility.age_years": ["x"]}),
            {
                "reason": "validation",
                "status": 422,
                "fields": ["eligibility.age_years", "weight_kg"],
            },
        ),
        (
            AlreadyRandomized("Already randomised.", randomization_number="R-101-0007"),
            {"reason": "already-randomized", "status": 409, "randomization_number": "R-101-0007"},
        ),
        # Extras a refusal does not declare auditable stay out of the entry.
        (
            ScreeningWindow("Too late.", screened_on="2026-01-01", randomisable_until="2026-01-29"),
            {"reason": "screening-window", "status": 422},
        ),
        (
            StratumExhausted("No slot.", stratum="region=europe|prior_ig=no"),
            {"reason": "stratum-exhausted", "status": 409},
        ),
    ],
    ids=["ineligible", "validation", "already-randomized", "screening-window", "exhausted"],
)
def test_the_entry_holds_what_the_refusal_says(db, ctx, problem, data):
    before = audit_size(db)

    refuse(db, ctx, problem)

    (entry,) = entries_from(db, before)
    assert entry["data"] == data
    assert refusal_data(problem) == data


def test_field_paths_are_kept_printable_short_and_few():
    errors = {f"field_{n:03d}": ["bad"] for n in range(MAX_FIELDS + 20)}
    errors["caf\u00e9\x00"] = ["bad"]
    errors["x" * 500] = ["bad"]

    fields = refusal_data(ValidationFailed(errors))["fields"]

    assert len(fields) == MAX_FIELDS
    assert fields == sorted(fields)
    assert all(len(path) <= 64 and path.isascii() and path.isprintable() for path in fields)
    everything = refusal_data(ValidationFailed({"caf\u00e9\x00": ["bad"], "x" * 500: ["bad"]}))
    assert everything["fields"] == ["caf??", "x" * 61 + "..."]


# Through the real service ----------------------------------------------------------------


def test_randomising_twice_records_the_existing_randomization_number(api, db):
    first = api.screen_and_randomize("101-REF-1")
    assert first.status_code == 201, first.get_json()
    before = audit_size(db)

    again = api.randomize("101-REF-1")

    assert again.status_code == 409
    assert again.get_json()["type"] == "/problems/already-randomized"
    (entry,) = entries_from(db, before)
    assert entry["action"] == "participant.randomization_refused"
    assert entry["subject"] == "101-REF-1"
    assert entry["data"] == {
        "reason": "already-randomized",
        "status": 409,
        "randomization_number": first.get_json()["randomization_number"],
    }


def test_an_ineligible_randomisation_records_the_failed_rule_ids_only(api, db):
    assert api.screen("101-REF-2").status_code == 201
    before = audit_size(db)

    refused = api.randomize("101-REF-2", eligibility={**ELIGIBLE, "age_years": 12})

    assert refused.status_code == 422
    rule_ids = [rule["id"] for rule in refused.get_json()["failed_rules"]]
    assert rule_ids
    (entry,) = entries_from(db, before)
    assert entry["data"] == {"reason": "ineligible", "status": 422, "failed_rules": rule_ids}


def test_an_invalid_randomisation_records_the_field_paths(api, db):
    assert api.screen("101-REF-3").status_code == 201
    before = audit_size(db)

    refused = api.randomize("101-REF-3", weight_kg="70")

    assert refused.status_code == 422
    assert sorted(refused.get_json()["errors"]) == ["weight_kg"]
    (entry,) = entries_from(db, before)
    assert entry["data"] == {"reason": "validation", "status": 422, "fields": ["weight_kg"]}
