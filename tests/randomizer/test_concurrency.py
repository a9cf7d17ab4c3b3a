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
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from audit.verify import verify_log
from keys import SealedArm
from randomizer.db import Database
from randomizer.domain import kits_for_visit
from randomizer.models import AuditCheckpoint, AuditEntry, Kit, Participant, Slot, Stratum
from randomizer.services.context import load_trial_context
from tests.conftest import ELIGIBLE, PG_URL, Scratch, TrialDatabase, make_trial_database
from tests.randomizer.served import HttpClient, Server

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
        plan.append((f"{site}-C-{i:04d}", f"coordinator-{site}", ("yes", "no")[(i // 2) % 2]))
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


def assert_no_slot_or_kit_given_twice(
    database: Database, keys_dir: Any, expected: int, kits_each: int = 2
) -> None:
    """Every slot used once, in order, without gap; every kit once; the audit unforked.

    ``kits_each``: the week-1 kits of each participant (2 at :data:`WEIGHT_KG`).
    """
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
        assert len(kit_numbers) == len(set(kit_numbers)) == kits_each * expected
        arm_of = {
            p.id: ctx.sealer.unseal_arm(
                SealedArm.from_text(p.sealed_arm), "participant", p.screening_number
            )
            for p in participants
        }
        allocated = session.scalars(select(Kit).where(Kit.participant_id.is_not(None))).all()
        assert len(allocated) == kits_each * expected
        for kit in allocated:
            kit_arm = ctx.sealer.unseal_arm(
                SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number
            )
            assert kit_arm == arm_of[kit.participant_id]

        assert_audit_log_verifies(session, ctx)


def assert_audit_log_verifies(session: Any, ctx: Any) -> None:
    """The audit log: contiguous, chained, every checkpoint consistent: never forked."""
    log = [
        t.encode() for t in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
    ]
    notes = list(session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)))
    report = verify_log(log, notes, ctx.audit.verifier_key)
    assert report.ok, report.problems


@contextlib.contextmanager
def _own_pg_server(
    scratch: Scratch, directory: Any, *, kits_per_arm: int | None = None
) -> Iterator[tuple[TrialDatabase, HttpClient]]:
    """A PostgreSQL database of the test's own, served by gunicorn with 8 worker processes."""
    if not PG_URL:
        pytest.skip("PostgreSQL not configured (SEALROOM_TEST_DATABASE_URL)")
    trial = make_trial_database(scratch, "postgresql", directory, kits_per_arm=kits_per_arm)
    server = Server(trial, directory, SERVER_PROCESSES).start()
    try:
        yield trial, server.client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_server(scratch: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL database of its own, served by gunicorn with 8 worker processes."""
    with _own_pg_server(scratch, tmp_path_factory.mktemp("pg-server")) as served:
        yield served


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
    number, user = "101-IDEM-1", "coordinator-101"
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


#: Screenings without a number sent at once, per site, through the 8 server processes.
ASSIGNED_PER_SITE = 24


@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-1")
@pytest.mark.requirement("R-API")
def test_assigned_screening_numbers_are_given_once_across_server_processes(pg_server: Any) -> None:
    """Two sites screen 24 participants each at once, sending no number: each site gets
    exactly its numbers 1 to 24, in no particular order, and no number twice. Without the
    site lock in ``screen_participant`` two processes pick one number and the second is a
    409 "already in use" for a number nobody sent."""
    trial, client = pg_server
    today = datetime.now(UTC).date().isoformat()
    requests = [site for site in ("101", "102") for _ in range(ASSIGNED_PER_SITE)]
    barrier = threading.Barrier(len(requests))

    def screen(site: str) -> tuple[str, int, dict[str, Any]]:
        body = {"site": site, "screened_on": today, "strata": {"prior_ig": "no"}}
        barrier.wait(timeout=60)
        return (site, *client.post("/participants", f"coordinator-{site}", body))

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(screen, requests))

    assert [status for _, status, _ in answers] == [201] * len(requests), [
        body for _, status, body in answers if status != 201
    ][:3]
    for site in ("101", "102"):
        given = sorted(body["screening_number"] for s, _, body in answers if s == site)
        assert given == [f"{site}-{n:04d}" for n in range(1, ASSIGNED_PER_SITE + 1)]
    database = Database(trial.url)
    try:
        with database.reading() as session:
            subjects = session.scalars(
                select(AuditEntry.subject).where(AuditEntry.action == "participant.screened")
            ).all()
    finally:
        database.dispose()
    assigned = [s for s in subjects if s.split("-")[1].isdigit()]
    assert len(assigned) == len(set(assigned)) == len(requests)


@dataclass(frozen=True)
class Answer:
    """One randomisation request sent by a client thread: its answer and when it ran."""

    number: str
    status: int
    body: dict[str, Any]
    started: float
    finished: float


def _randomize_together(
    client: HttpClient, requests: list[tuple[str, str]], weight_kg: int
) -> list[Answer]:
    """Send every (screening number, user) request at once, one client thread each."""
    barrier = threading.Barrier(len(requests))

    def send(request: tuple[str, str]) -> Answer:
        number, user = request
        barrier.wait(timeout=60)
        started = time.perf_counter()
        status, body = client.post(
            f"/participants/{number}/randomize",
            user,
            {"weight_kg": weight_kg, "eligibility": ELIGIBLE},
        )
        return Answer(number, status, body, started, time.perf_counter())

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def _audit_entries(session: Any, numbers: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(subject, action, data) of the audit entries about these participants, in log order."""
    rows = session.execute(
        select(AuditEntry.subject, AuditEntry.action, AuditEntry.canonical)
        .where(AuditEntry.subject.in_(numbers))
        .order_by(AuditEntry.seq)
    ).all()
    return [(subject, action, json.loads(text)["data"]) for subject, action, text in rows]


#: R-NF-1: participants each sent this many randomisations at once, through 8 processes.
#: Without the participant row lock (locks.lock_participant), both requests of 8 to 15 of
#: the 20 participants pass the state check together on every run, and the second is a 500
#: (the slot's unique participant_id), never the 409 it owes.
SAME_PARTICIPANT_PAIRS, REQUESTS_EACH = 20, 2


@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-1")
@pytest.mark.requirement("R-LIST-2")
def test_one_participant_randomised_at_once_by_several_processes_acts_once_on_postgresql(
    scratch: Scratch, tmp_path: Any
) -> None:
    """Both requests of a participant at once: one 201, one audited 409 already-randomized.

    One slot and one set of kits per participant, one ``participant.randomized`` entry, the
    other request's ``participant.randomization_refused``; the audit chain verifies.
    """
    with _own_pg_server(scratch, tmp_path) as (trial, client):
        plan = [
            (number.replace("-C-", "-P-"), user, prior)
            for number, user, prior in _participants(SAME_PARTICIPANT_PAIRS)
        ]
        _screen_all(client, plan, datetime.now(UTC).date().isoformat())
        requests = [(number, user) for number, user, _ in plan for _ in range(REQUESTS_EACH)]
        started = time.perf_counter()
        answers = _randomize_together(client, requests, WEIGHT_KG)
        elapsed = time.perf_counter() - started

        by_participant: dict[str, list[Answer]] = defaultdict(list)
        for answer in answers:
            by_participant[answer.number].append(answer)
        expected = [201] + [409] * (REQUESTS_EACH - 1)
        wrong = {
            number: [(a.status, a.body.get("type"), a.body.get("detail")) for a in mine]
            for number, mine in by_participant.items()
            if sorted(a.status for a in mine) != expected
        }
        assert not wrong, f"{len(wrong)} of {len(plan)} participants: {wrong}"
        overlapping = 0
        winners: dict[str, str] = {}
        for number, mine in by_participant.items():
            (winner,) = [a for a in mine if a.status == 201]
            winners[number] = winner.body["randomization_number"]
            for loser in mine:
                if loser is winner:
                    continue
                assert loser.body["type"] == "/problems/already-randomized", loser.body
                assert loser.body["randomization_number"] == winners[number]
            overlapping += all(
                a.started < b.finished and b.started < a.finished
                for a in mine
                for b in mine
                if a is not b
            )
        print(
            f"\n{len(requests)} randomisations of {len(plan)} participants "
            f"({REQUESTS_EACH} each, {overlapping} participants' requests overlapping in time) "
            f"through {SERVER_PROCESSES} gunicorn workers: {elapsed:.2f} s"
        )

        database = Database(trial.url)
        try:
            # One slot and one set of kits per participant; the audit chain verifies.
            assert_no_slot_or_kit_given_twice(database, trial.settings.keys_dir, len(plan))
            with database.reading() as session:
                entries = _audit_entries(session, set(by_participant))
        finally:
            database.dispose()
        actions: dict[str, list[str]] = defaultdict(list)
        for subject, action, data in entries:
            actions[subject].append(action)
            if action == "participant.randomization_refused":
                assert data["reason"] == "already-randomized", data
                assert data["randomization_number"] == winners[subject]
            elif action == "participant.randomized":
                assert data["randomization_number"] == winners[subject]
        refused = ["participant.randomization_refused"] * (REQUESTS_EACH - 1)
        for number in by_participant:
            assert actions[number] == [
                "participant.screened",
                "participant.randomized",
                *refused,
            ], number


#: R-BLIND-2 under load. 160 kg participants need 8 kits each; a site holding 36 kits of
#: each arm randomises until one arm has given 4 participants their kits (4 are left, fewer
#: than 8), so between 4 and 8 participants, as the lists' arms fall. Scarce on purpose:
#: two allocations of one arm from that stock all but certainly choose a kit in common.
SCARCE_WEIGHT_KG, SCARCE_KITS_PER_ARM = 160, 36
#: Participants of the one site, in each of its two strata: more than the stock allows.
SCARCE_PER_STRATUM = 8
SCARCE_SITE, SCARCE_USER = "101", "coordinator-101"


@pytest.mark.multiprocess
@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.requirement("R-NF-1")
def test_scarce_stock_of_one_site_is_shared_by_its_strata_one_at_a_time_on_postgresql(
    scratch: Scratch, tmp_path: Any
) -> None:
    """Two strata of one site randomise at once: their stratum locks do not order them.

    The site lock does: every answer is a 201 or a 409 insufficient-supply, never a 500; no
    kit is given twice; and replaying the audit log shows every decision to be the one the
    stock of that moment called for (R-BLIND-2: enough kits of EVERY arm). Without the site
    lock, every run has 500s ("a kit chosen for allocation was no longer available") and
    randomisations granted with fewer than 8 kits of an arm left.
    """
    with _own_pg_server(scratch, tmp_path, kits_per_arm=SCARCE_KITS_PER_ARM) as (trial, client):
        plan = [
            (f"101-{prior}-{i:02d}", SCARCE_USER, prior)
            for i in range(SCARCE_PER_STRATUM)
            for prior in ("yes", "no")
        ]
        for number, user, prior in plan:
            status, body = client.post(
                "/participants",
                user,
                {
                    "screening_number": number,
                    "site": SCARCE_SITE,
                    "screened_on": datetime.now(UTC).date().isoformat(),
                    "strata": {"prior_ig": prior},
                },
            )
            assert status == 201, body
        started = time.perf_counter()
        answers = _randomize_together(
            client, [(number, user) for number, user, _ in plan], SCARCE_WEIGHT_KG
        )
        elapsed = time.perf_counter() - started

        outcomes = Counter((a.status, a.body.get("type")) for a in answers)
        successes = outcomes[(201, None)]
        refused = outcomes[(409, "/problems/insufficient-supply")]
        print(
            f"\n{len(plan)} randomisations at site {SCARCE_SITE} in 2 strata, "
            f"{SCARCE_KITS_PER_ARM} kits of each arm: {successes} randomised, "
            f"{refused} refused for supply, {len(plan) - successes - refused} other "
            f"{dict(outcomes)}, {elapsed:.2f} s"
        )
        assert successes + refused == len(plan), [
            (a.number, a.status, a.body.get("type"), a.body.get("detail"))
            for a in answers
            if (a.status, a.body.get("type"))
            not in ((201, None), (409, "/problems/insufficient-supply"))
        ]

        database = Database(trial.url)
        try:
            with database.reading() as session:
                ctx = load_trial_context(session, trial.settings.keys_dir, {})
                needed = kits_for_visit(
                    ctx.definition, SCARCE_WEIGHT_KG, ctx.definition.first_visit()
                )
                entries = _audit_entries(session, {number for number, _, _ in plan})
                # Replay the log: each decision against the stock left by those before it.
                stock = {arm.id: SCARCE_KITS_PER_ARM for arm in ctx.definition.arms}
                decisions = 0
                for subject, action, data in entries:
                    if action == "participant.screened":
                        continue
                    decisions += 1
                    enough = all(count >= needed for count in stock.values())
                    if action == "participant.randomized":
                        assert enough, f"{subject} randomised with {stock} left ({needed} each)"
                        assert len(data["kits"]) == needed
                        arm = ctx.sealer.unseal_arm(
                            SealedArm.from_json(data["sealed_arm"]), "participant", subject
                        )
                        stock[arm] -= needed
                    else:
                        assert action == "participant.randomization_refused", action
                        assert data["reason"] == "insufficient-supply", data
                        assert not enough, f"{subject} refused with {stock} left ({needed} each)"
                assert decisions == len(plan)
                # The stock ran out, and what is left is what the log says is left.
                assert any(count < needed for count in stock.values())
                left: Counter[str] = Counter()
                for kit in session.scalars(
                    select(Kit).where(Kit.site_id == SCARCE_SITE, Kit.participant_id.is_(None))
                ):
                    left[
                        ctx.sealer.unseal_arm(
                            SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number
                        )
                    ] += 1
                assert dict(left) == stock
            assert successes == sum(
                1 for _, action, _ in entries if action == "participant.randomized"
            )
            # Every kit once, to its own arm; slots in order; the audit chain verifies.
            assert_no_slot_or_kit_given_twice(
                database, trial.settings.keys_dir, successes, kits_each=needed
            )
        finally:
            database.dispose()


#: R-LIST-2 at a list's end: the last slots of one stratum, raced from both sites of its
#: region at once through 8 processes. The stratum's one statement (lock and cursor,
#: locks.take_stratum_position) decides who gets them; the others are refused, on the record.
LAST_SLOTS, LAST_RACERS = 3, 12
LAST_STRATUM = "region=north_america|prior_ig=yes"


@pytest.mark.multiprocess
@pytest.mark.requirement("R-LIST-2")
@pytest.mark.requirement("R-NF-1")
def test_the_last_slots_of_a_stratum_raced_from_two_sites_go_once_each_on_postgresql(
    scratch: Scratch, tmp_path: Any
) -> None:
    """12 at once for the last 3 slots: 3 randomised, in the stratum's last 3 positions, and
    9 audited 409 stratum-exhausted refusals, never a 500; the audit chain verifies."""
    with _own_pg_server(scratch, tmp_path) as (trial, client):
        plan = [
            (f"{site}-L-{i:02d}", f"coordinator-{site}", "yes")
            for i, site in enumerate(("101", "102") * (LAST_RACERS // 2))
        ]
        _screen_all(client, plan, datetime.now(UTC).date().isoformat())
        database = Database(trial.url)
        try:
            with database.transaction() as session:
                stratum = session.scalars(select(Stratum).where(Stratum.key == LAST_STRATUM)).one()
                number, size = stratum.number, stratum.size
                stratum.next_position = size - LAST_SLOTS + 1

            answers = _randomize_together(
                client, [(number_, user) for number_, user, _ in plan], WEIGHT_KG
            )

            outcomes = Counter((a.status, a.body.get("type")) for a in answers)
            assert outcomes == {
                (201, None): LAST_SLOTS,
                (409, "/problems/stratum-exhausted"): LAST_RACERS - LAST_SLOTS,
            }, [(a.number, a.status, a.body.get("detail")) for a in answers]
            with database.reading() as session:
                ctx = load_trial_context(session, trial.settings.keys_dir, {})
                used = session.scalars(
                    select(Slot.position).where(
                        Slot.stratum_number == number, Slot.participant_id.is_not(None)
                    )
                ).all()
                assert sorted(used) == list(range(size - LAST_SLOTS + 1, size + 1))
                assert session.get_one(Stratum, number).next_position == size + 1
                entries = _audit_entries(session, {number_ for number_, _, _ in plan})
                decided = [
                    (action, data)
                    for _, action, data in entries
                    if action != "participant.screened"
                ]
                assert sorted(action for action, _ in decided) == sorted(
                    ["participant.randomized"] * LAST_SLOTS
                    + ["participant.randomization_refused"] * (LAST_RACERS - LAST_SLOTS)
                )
                assert {
                    data["reason"]
                    for action, data in decided
                    if action == "participant.randomization_refused"
                } == {"stratum-exhausted"}
                assert_audit_log_verifies(session, ctx)
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
