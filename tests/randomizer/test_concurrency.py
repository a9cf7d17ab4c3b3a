"""R-LIST-2, R-NF-1: no slot or kit is ever given twice, the audit never forks, under load.

On PostgreSQL: a real server (``sealroom serve``, gunicorn) with 8 worker processes, hit by
many client threads at once; on SQLite: many threads of one process. Each test builds a
database of its own (audit rows cannot be deleted, so nothing is shared with other tests).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from audit.verify import verify_log
from keys import SealedArm
from randomizer.db import Database
from randomizer.models import AuditCheckpoint, AuditEntry, Kit, Participant, Slot, Stratum
from randomizer.services.context import load_trial_context
from tests.conftest import ELIGIBLE, PG_URL, make_trial_database
from tests.randomizer.served import Server

SERVER_PROCESSES = 8
PARTICIPANTS = 200
#: 30 kg participants need 2 kits each: 100 a site, all of one arm at worst, fit in 200 kits.
WEIGHT_KG = 30

pytestmark = [pytest.mark.slow]


def _participants(count: int) -> list[tuple[str, str, str]]:
    """(screening number, coordinator, prior_ig): two sites of one region, two strata."""
    plan = []
    for i in range(count):
        site = ("101", "102")[i % 2]
        plan.append((f"C-{i:04d}", f"coordinator-{site}", ("yes", "no")[(i // 2) % 2]))
    return plan


def _screen_all(client: Any, plan: list[tuple[str, str, str]], today: str) -> None:
    for number, user, prior_ig in plan:
        status, body = client.post(
            "/participants",
            user,
            {
                "screening_number": number,
                "site": user.rsplit("-", 1)[1],
                "screened_on": today,
                "strata": {"prior_ig": prior_ig},
            },
        )
        assert status == 201, body


def _randomize_all_at_once(client: Any, plan: list[tuple[str, str, str]], threads: int) -> list:
    barrier = threading.Barrier(threads)

    def randomize(item: tuple[str, str, str]) -> tuple[int, dict[str, Any]]:
        number, user, _ = item
        return client.post(
            f"/participants/{number}/randomize",
            user,
            {"weight_kg": WEIGHT_KG, "eligibility": ELIGIBLE},
        )

    def start_together(item: tuple[str, str, str]) -> tuple[int, dict[str, Any]]:
        # Start together; a thread left over once the others have gone still runs.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=60)
        return randomize(item)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        first = list(pool.map(start_together, plan[:threads]))
        rest = list(pool.map(randomize, plan[threads:]))
    return first + rest


def assert_no_slot_or_kit_given_twice(database: Database, keys_dir: Any, expected: int) -> None:
    """Every slot used once, in order, without gap; every kit once; the audit unforked."""
    with database.reading() as session:
        ctx = load_trial_context(session, keys_dir, {})
        participants = session.scalars(
            select(Participant).where(Participant.randomization_number.is_not(None))
        ).all()
        assert len(participants) == expected

        # Slots: per stratum, positions 1..n each used by exactly one participant.
        by_stratum: dict[int, list[Slot]] = defaultdict(list)
        for slot in session.scalars(select(Slot).where(Slot.participant_id.is_not(None))):
            by_stratum[slot.stratum_number].append(slot)
        assert sum(len(slots) for slots in by_stratum.values()) == expected
        for number, slots in by_stratum.items():
            positions = sorted(slot.position for slot in slots)
            assert positions == list(range(1, len(slots) + 1)), f"gap or reuse in {number}"
            stratum = session.get_one(Stratum, number)
            assert stratum.next_position == len(slots) + 1
        assert len({p.randomization_number for p in participants}) == expected

        # R-LIST-2: the n-th randomisation in a stratum (audit order) got slot n.
        entries = [
            json.loads(text)
            for text in session.scalars(
                select(AuditEntry.canonical)
                .where(AuditEntry.action == "participant.randomized")
                .order_by(AuditEntry.seq)
            )
        ]
        assert len(entries) == expected
        seen: dict[str, int] = defaultdict(int)
        for entry in entries:
            stratum_key = entry["data"]["stratum"]
            seen[stratum_key] += 1
            assert int(entry["data"]["randomization_number"].split("-")[1]) == seen[stratum_key]

        # Kits: each allocated once, to a participant of its own arm.
        kit_numbers = [n for entry in entries for n in entry["data"]["kits"]]
        assert len(kit_numbers) == len(set(kit_numbers)) == 2 * expected
        arm_of = {
            p.id: ctx.sealer.unseal_arm(
                SealedArm.from_text(p.sealed_arm), "participant", p.screening_number
            )
            for p in participants
        }
        allocated = session.scalars(select(Kit).where(Kit.participant_id.is_not(None))).all()
        assert len(allocated) == 2 * expected
        for kit in allocated:
            kit_arm = ctx.sealer.unseal_arm(
                SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number
            )
            assert kit_arm == arm_of[kit.participant_id]

        # The audit log: contiguous, chained, every checkpoint consistent: never forked.
        log = [
            t.encode()
            for t in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
        ]
        notes = list(session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)))
        report = verify_log(log, notes, ctx.audit.verifier_key)
        assert report.ok, report.problems


@pytest.fixture(scope="module")
def pg_server(scratch: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL database of its own, served by gunicorn with 8 worker processes."""
    if not PG_URL:
        pytest.skip("PostgreSQL not configured (SEALROOM_TEST_DATABASE_URL)")
    directory = tmp_path_factory.mktemp("pg-server")
    trial = make_trial_database(scratch, "postgresql", directory)
    server = Server(trial, directory, SERVER_PROCESSES).start()
    try:
        yield trial, server.client
    finally:
        server.stop()


@pytest.mark.multiprocess
@pytest.mark.requirement("R-LIST-2")
@pytest.mark.requirement("R-NF-1")
def test_eight_server_processes_give_every_slot_and_kit_once_on_postgresql(pg_server: Any) -> None:
    trial, client = pg_server
    plan = _participants(PARTICIPANTS)
    _screen_all(client, plan, datetime.now(UTC).date().isoformat())
    started = time.perf_counter()
    results = _randomize_all_at_once(client, plan, threads=32)
    elapsed = time.perf_counter() - started
    assert [status for status, _ in results] == [201] * PARTICIPANTS, [
        body for status, body in results if status != 201
    ][:3]
    print(
        f"\n{PARTICIPANTS} randomisations through {SERVER_PROCESSES} gunicorn workers on "
        f"PostgreSQL, 32 client threads: {elapsed:.2f} s ({PARTICIPANTS / elapsed:.0f}/s)"
    )
    database = Database(trial.url)
    try:
        assert_no_slot_or_kit_given_twice(database, trial.settings.keys_dir, PARTICIPANTS)
    finally:
        database.dispose()


@pytest.mark.multiprocess
@pytest.mark.requirement("R-API")
def test_one_idempotency_key_acts_once_across_server_processes(pg_server: Any) -> None:
    trial, client = pg_server
    number, user = "IDEM-1", "coordinator-101"
    _screen_all(client, [(number, user, "no")], datetime.now(UTC).date().isoformat())
    body = {"weight_kg": WEIGHT_KG, "eligibility": ELIGIBLE}
    headers = {"Idempotency-Key": "same-key-from-16-threads"}
    barrier = threading.Barrier(16)

    def send(_: int) -> tuple[int, dict[str, Any]]:
        barrier.wait(timeout=60)
        return client.post(f"/participants/{number}/randomize", user, body, headers)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(16)))
    assert {status for status, _ in results} == {201}
    assert len({json.dumps(body, sort_keys=True) for _, body in results}) == 1
    database = Database(trial.url)
    try:
        with database.reading() as session:
            actions = session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.subject == number)
                .order_by(AuditEntry.seq)
            ).all()
        assert actions == ["participant.screened", "participant.randomized"]
    finally:
        database.dispose()


@pytest.mark.requirement("R-LIST-2")
@pytest.mark.requirement("R-NF-1")
def test_many_threads_give_every_slot_and_kit_once_on_sqlite(scratch: Any, tmp_path: Any) -> None:
    from randomizer import create_app

    trial = make_trial_database(scratch, "sqlite", tmp_path)
    app = create_app({"settings": trial.settings, "TESTING": True})

    class FlaskClient:
        def post(self, path: str, user: str, body: Any) -> tuple[int, dict[str, Any]]:
            with app.test_client() as client:
                response = client.post(
                    f"/api/v1{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {trial.tokens[user]}"},
                )
                return response.status_code, response.get_json()

    count = 80
    plan = _participants(count)
    _screen_all(FlaskClient(), plan, datetime.now(UTC).date().isoformat())
    results = _randomize_all_at_once(FlaskClient(), plan, threads=8)
    assert [status for status, _ in results] == [201] * count
    database = app.extensions["sealroom"].db
    assert_no_slot_or_kit_given_twice(database, trial.settings.keys_dir, count)
    database.dispose()
