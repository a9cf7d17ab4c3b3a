"""The idempotency service without HTTP (randomizer.services.idempotency, URS §8, R-API).

:func:`perform_once` claims a key in the caller's transaction, compares the request's
digest and replays the stored text; the API is only an adapter over it. A key is scoped to
the user and the operation; a recorded refusal is kept and replayed, an unrecorded one is
not kept, so asking again re-evaluates it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from randomizer.db import Database
from randomizer.errors import Conflict, IdempotencyKeyReused, ValidationFailed
from randomizer.models import AuditEntry, IdempotencyRecord, User
from randomizer.rendering import render_json
from randomizer.roles import Actor
from randomizer.services.idempotency import (
    Outcome,
    canonical_json,
    check_key,
    perform_once,
    request_digest,
)
from randomizer.services.refusals import refusals_audited
from tests.conftest import BACKENDS
from tests.randomizer.committing import committing_trial

pytestmark = pytest.mark.requirement("R-API")

KEY = "retry-7f3a"
DIGEST = request_digest(b"POST", b"/api/v1/participants", b'{"a":1}')
OTHER_DIGEST = request_digest(b"POST", b"/api/v1/participants", b'{"a":2}')
#: How long a thread of the concurrency test may take before it counts as hung.
THREAD_TIMEOUT_S = 60


def actors_of(database: Database) -> dict[str, Actor]:
    with database.reading() as session:
        return {
            user.name: Actor(user.name, user.role, user.site_id, user.id)
            for user in session.scalars(select(User))
        }


@pytest.fixture
def actors(db: Database) -> dict[str, Actor]:
    return actors_of(db)


class Action:
    """An action that counts its runs and answers with its run number (and awkward types)."""

    def __init__(self, status: int = 201, fail: Callable[[int], None] | None = None) -> None:
        self.status = status
        self.fail = fail
        self.runs = 0

    def __call__(self) -> tuple[int, dict[str, Any]]:
        self.runs += 1
        if self.fail is not None:
            self.fail(self.runs)
        return self.status, answer(self.runs)


def answer(run: int) -> dict[str, Any]:
    """What the action answers on its ``run``-th run."""
    return {
        "run": run,
        "weight_kg": Decimal("70.50"),
        "randomized_at": datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        "label": "Ig\u00e9 \u2014 placebo",
        "z": {"b": 1, "a": [True, None]},
    }


def perform(
    db: Database,
    ctx: Any,
    actor: Actor,
    action: Callable[[], tuple[int, Any]],
    *,
    key: str | None = KEY,
    digest: str = DIGEST,
    operation: str = "participants.screen",
) -> Outcome:
    with db.transaction() as session:
        return perform_once(session, ctx.clock, actor, operation, key, digest, action)


def records(db: Database) -> list[Any]:
    with db.reading() as session:
        table = IdempotencyRecord.__table__
        return session.execute(select(table).order_by(table.c.id)).all()


def audit_size(db: Database) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


# Replays ----------------------------------------------------------------------------------


def test_without_a_key_the_action_runs_every_time_and_nothing_is_stored(db, ctx, actors):
    action = Action()

    first = perform(db, ctx, actors["coordinator-101"], action, key=None)
    second = perform(db, ctx, actors["coordinator-101"], action, key=None)

    assert action.runs == 2
    assert (first.replayed, second.replayed) == (False, False)
    assert json.loads(first.text)["run"] == 1
    assert json.loads(second.text)["run"] == 2
    assert records(db) == []


def test_the_same_key_and_digest_replays_the_first_text_byte_for_byte_and_acts_once(
    db, ctx, actors
):
    action = Action()
    actor = actors["coordinator-101"]

    first = perform(db, ctx, actor, action)
    second = perform(db, ctx, actor, action)
    third = perform(db, ctx, actor, action)

    assert action.runs == 1
    assert first == Outcome(201, render_json(answer(1)), replayed=False)
    assert second == third == Outcome(201, first.text, replayed=True)
    assert second.text.encode("ascii") == first.text.encode("ascii")
    assert json.loads(first.text)["weight_kg"] == "70.50"
    (record,) = records(db)
    assert (record.user_id, record.endpoint, record.key) == (
        actor.user_id,
        "participants.screen",
        KEY,
    )
    assert (record.request_sha256, record.status_code, record.response_body) == (
        DIGEST,
        201,
        first.text,
    )


def test_the_same_key_with_another_digest_is_refused_and_does_not_act(db, ctx, actors):
    action = Action()
    actor = actors["coordinator-101"]
    first = perform(db, ctx, actor, action)

    with pytest.raises(IdempotencyKeyReused) as refused:
        perform(db, ctx, actor, action, digest=OTHER_DIGEST)

    assert refused.value.status == 422
    assert refused.value.type == "/problems/idempotency-key-reused"
    assert action.runs == 1
    # The first outcome is still what the key replays.
    assert perform(db, ctx, actor, action) == Outcome(201, first.text, replayed=True)


def test_a_recorded_refusal_is_stored_and_replayed_without_acting_or_auditing_again(
    db, ctx, actors
):
    actor = actors["coordinator-101"]
    runs: list[int] = []

    def refused_action() -> tuple[int, dict[str, Any]]:
        runs.append(1)
        with refusals_audited(session, ctx, actor, "test.refused", "101-0001", site="101"):
            raise Conflict("Participant 101-0001 is withdrawn.", screening_number="101-0001")

    before = audit_size(db)
    with pytest.raises(Conflict) as first, db.transaction() as session:
        perform_once(session, ctx.clock, actor, "op", KEY, DIGEST, refused_action)
    assert first.value.recorded
    assert audit_size(db) == before + 1

    with db.transaction() as session:
        replay = perform_once(session, ctx.clock, actor, "op", KEY, DIGEST, refused_action)

    assert replay == Outcome(409, render_json(first.value.body()), replayed=True)
    assert json.loads(replay.text)["type"] == "/problems/conflict"
    assert runs == [1]
    assert audit_size(db) == before + 1


@pytest.mark.parametrize(
    "error",
    [Conflict("refused, nothing recorded"), RuntimeError("a bug")],
    ids=["unrecorded-refusal", "exception"],
)
def test_an_outcome_that_changed_nothing_is_not_stored_and_is_evaluated_again(
    db, ctx, actors, error
):
    def fail(_run: int) -> None:
        raise error

    action = Action(fail=fail)
    actor = actors["coordinator-101"]

    for _ in range(2):
        with pytest.raises(type(error)):
            perform(db, ctx, actor, action)

    assert action.runs == 2
    assert records(db) == []


def test_the_key_is_free_again_after_an_unrecorded_refusal(db, ctx, actors):
    def fail_first(run: int) -> None:
        if run == 1:
            raise Conflict("not yet")

    action = Action(fail=fail_first)
    actor = actors["coordinator-101"]
    with pytest.raises(Conflict):
        perform(db, ctx, actor, action)

    outcome = perform(db, ctx, actor, action, digest=OTHER_DIGEST)

    assert outcome.replayed is False
    assert json.loads(outcome.text)["run"] == 2


def test_keys_are_scoped_per_user_and_per_operation(db, ctx, actors):
    action = Action()
    one, other = actors["coordinator-101"], actors["investigator-101"]

    outcomes = [
        perform(db, ctx, one, action, operation="participants.screen"),
        perform(db, ctx, other, action, operation="participants.screen"),
        perform(db, ctx, one, action, operation="participants.randomize"),
        # Another user, another body: the key is theirs, never "reused".
        perform(db, ctx, other, action, operation="participants.randomize", digest=OTHER_DIGEST),
    ]

    assert action.runs == 4
    assert [json.loads(outcome.text)["run"] for outcome in outcomes] == [1, 2, 3, 4]
    assert not any(outcome.replayed for outcome in outcomes)
    assert sorted((r.user_id, r.endpoint) for r in records(db)) == sorted(
        [
            (one.user_id, "participants.screen"),
            (other.user_id, "participants.screen"),
            (one.user_id, "participants.randomize"),
            (other.user_id, "participants.randomize"),
        ]
    )
    # And each replays its own outcome.
    assert perform(db, ctx, other, action, operation="participants.screen").text == outcomes[1].text


# Keys, digests, canonical bodies -----------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "a b",
        " leading",
        "trailing ",
        "x" * 256,
        "tab\there",
        "caf\u00e9",
        "del\x7f",
        "nul\x00",
    ],
    ids=repr,
)
def test_check_key_refuses_keys_that_are_not_1_to_255_printable_ascii_without_spaces(key):
    with pytest.raises(ValidationFailed) as refused:
        check_key(key, "Idempotency-Key")

    assert refused.value.status == 400
    assert list(refused.value.extra["errors"]) == ["Idempotency-Key"]


@pytest.mark.parametrize("key", ["x", "x" * 255, "!~", "3f1c2a9e-5b7d-4c1e-9f0a-000000000000"])
def test_check_key_accepts_valid_keys(key):
    check_key(key, "Idempotency-Key")


@given(st.text(max_size=300))
def test_check_key_accepts_exactly_the_printable_ascii_keys_of_1_to_255_characters(key):
    valid = 1 <= len(key) <= 255 and all("\x21" <= c <= "\x7e" for c in key)
    try:
        check_key(key, "Idempotency-Key")
    except ValidationFailed:
        assert not valid
    else:
        assert valid


def test_request_digest_frames_its_parts():
    assert request_digest(b"ab", b"c") != request_digest(b"a", b"bc")
    assert request_digest(b"a", b"") != request_digest(b"a")
    assert request_digest(b"POST", b"/x") == request_digest(b"POST", b"/x")
    assert len(request_digest(b"")) == 64


def test_canonical_json_keeps_numbers_strings_and_lookalike_objects_apart():
    bodies = [b'{"w": 70.5}', b'{"w": "70.5"}', b'{"w": {"d": "70.5"}}', b'{"w": 70.50}']

    assert len({canonical_json(body) for body in bodies}) == len(bodies)


def test_canonical_json_ignores_key_order_and_whitespace():
    assert canonical_json(b'{"b": 1, "a": [70.5, "x"]}') == canonical_json(
        b'{\n  "a" : [70.5,"x"],\n  "b":1\n}'
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [(b"{not json", ValueError), (b"\xff\xfe", UnicodeDecodeError), (b"", ValueError)],
)
def test_canonical_json_refuses_what_is_not_json(raw, error):
    with pytest.raises(error):
        canonical_json(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_of_one_value_written_two_ways_is_the_same(value):
    compact = json.dumps(value, separators=(",", ":")).encode()
    spread = json.dumps(value, indent=3, sort_keys=True, ensure_ascii=False).encode()

    assert canonical_json(compact) == canonical_json(spread)


# Two requests with one key at once ----------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def real(request: pytest.FixtureRequest, scratch: Any, tmp_path: Any, clock: Any) -> Iterator[Any]:
    yield from committing_trial(scratch, request.param, tmp_path, clock)


def test_a_second_request_with_the_key_waits_for_the_first_and_replays_it(real):
    actor = actors_of(real.database)["coordinator-101"]
    action = Action()
    second: list[Outcome | BaseException] = []

    def later_request() -> None:
        database = Database(real.url)  # its own connections, like another server process
        try:
            second.append(perform(database, real.ctx, actor, action, operation="op"))
        except BaseException as error:
            second.append(error)
        finally:
            database.dispose()

    with real.database.transaction() as session:
        first = perform_once(session, real.ctx.clock, actor, "op", KEY, DIGEST, action)
        thread = threading.Thread(target=later_request)
        thread.start()
        time.sleep(0.5)
        # It cannot finish while the first transaction holds the key (PostgreSQL: the
        # unique index; SQLite: the write lock): had it, it would have acted itself.
        assert thread.is_alive()
    thread.join(THREAD_TIMEOUT_S)

    assert not thread.is_alive(), "the second request hung"
    assert second == [Outcome(201, first.text, replayed=True)]
    assert action.runs == 1
