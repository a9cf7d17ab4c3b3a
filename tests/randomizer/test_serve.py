"""The real server (``sealroom serve``, gunicorn): long request lines, and a crash mid-load.

R-NF-2: a crash at any instant loses nothing acknowledged and leaves no half change; the
audit verifies after restart. The whole server (master and workers) is SIGKILLed while many
randomisations are in flight, then restarted on the same database.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.verify import verify_log
from randomizer.db import Database
from randomizer.models import AuditCheckpoint, AuditEntry, Kit, Participant, Slot, Stratum
from randomizer.services.context import load_trial_context
from tests.conftest import ELIGIBLE, make_trial_database
from tests.randomizer.served import Server

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture
def server(scratch: Any, backend: str, tmp_path: Path) -> Any:
    trial = make_trial_database(scratch, backend, tmp_path)
    running = Server(trial, tmp_path, workers=2).start()
    yield running
    running.stop()


@pytest.mark.requirement("R-NF-3")
def test_a_request_line_of_thousands_of_characters_gets_a_problem_detail(server: Server) -> None:
    for length in (3000, 6000, 8000):
        status, content_type, body = server.client.request(
            "GET", f"/api/v1/participants/{'A' * length}", "coordinator-101"
        )
        assert status == 404
        assert content_type == "application/problem+json"
        assert json.loads(body)["type"] == "/problems/not-found"
    status, content_type, body = server.client.request(
        "POST",
        f"/api/v1/participants/{'B' * 6000}/randomize",
        "coordinator-101",
        {"weight_kg": 70, "eligibility": ELIGIBLE},
    )
    assert (status, content_type) == (404, "application/problem+json")


@pytest.mark.requirement("R-NF-2")
def test_a_crash_mid_load_loses_nothing_acknowledged_and_leaves_no_half_change(
    server: Server,
) -> None:
    client = server.client
    today = datetime.now(UTC).date().isoformat()
    numbers = [f"101-K-{i:03d}" for i in range(60)]
    for i, number in enumerate(numbers):
        status, body = client.post(
            "/participants",
            "coordinator-101",
            {
                "screening_number": number,
                "site": "101",
                "screened_on": today,
                "strata": {"prior_ig": ("yes", "no")[i % 2]},
            },
        )
        assert status == 201, body

    acknowledged: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def randomize(number: str) -> None:
        try:
            status, body = client.post(
                f"/participants/{number}/randomize",
                "coordinator-101",
                {"weight_kg": 70, "eligibility": ELIGIBLE},
            )
        except OSError:
            return  # the server died under this request: not acknowledged
        if status == 201:
            with lock:
                acknowledged[number] = body

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(randomize, number) for number in numbers]
        while len(acknowledged) < 15 and not all(f.done() for f in futures):
            time.sleep(0.01)
        server.kill()
    assert 15 <= len(acknowledged) < len(numbers), "the crash must come mid-load"

    server.start()
    for number, answer in acknowledged.items():
        status, _type, raw = client.request(
            "GET", f"/api/v1/participants/{number}", "coordinator-101"
        )
        shown = json.loads(raw)
        assert status == 200
        assert shown["status"] == "randomized"
        assert shown["randomization_number"] == answer["randomization_number"]
        assert shown["kits"] == answer["kits"]

    database = Database(server.trial.url)
    try:
        with database.reading() as session:
            randomized = session.scalars(
                select(Participant).where(Participant.status == "randomized")
            ).all()
            # Whole randomisations only: each has its slot, its 4 kits and its audit entry.
            for participant in randomized:
                slot = session.scalars(
                    select(Slot).where(Slot.participant_id == participant.id)
                ).one()
                assert slot.randomization_number == participant.randomization_number
                kits = session.scalar(
                    select(func.count()).where(Kit.participant_id == participant.id)
                )
                assert kits == 4
            entries = session.scalar(
                select(func.count()).where(AuditEntry.action == "participant.randomized")
            )
            assert entries == len(randomized)
            used = session.scalar(select(func.count()).where(Slot.participant_id.is_not(None)))
            assert used == len(randomized)
            cursors = sum(s.next_position - 1 for s in session.scalars(select(Stratum)))
            assert cursors == len(randomized)
            assert session.scalar(
                select(func.count()).where(Kit.participant_id.is_not(None))
            ) == 4 * len(randomized)

            ctx = load_trial_context(session, server.trial.settings.keys_dir, {})
            log = [
                c.encode()
                for c in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
            ]
            notes = list(
                session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size))
            )
        report = verify_log(log, notes, ctx.audit.verifier_key)
        assert report.ok, report.problems
    finally:
        database.dispose()

    # The service goes on where it stopped: every request that was not acknowledged can be
    # sent again; one that had committed before the crash is already randomised (409).
    for number in numbers:
        if number in acknowledged:
            continue
        status, body = client.post(
            f"/participants/{number}/randomize",
            "coordinator-101",
            {"weight_kg": 70, "eligibility": ELIGIBLE},
        )
        assert status == 201 or body["type"] == "/problems/already-randomized", body
    database = Database(server.trial.url)
    try:
        with database.reading() as session:
            for stratum in session.scalars(select(Stratum)):
                positions = session.scalars(
                    select(Slot.position)
                    .where(Slot.stratum_number == stratum.number, Slot.participant_id.is_not(None))
                    .order_by(Slot.position)
                ).all()
                assert list(positions) == list(range(1, stratum.next_position))
            assert session.scalar(
                select(func.count()).where(Participant.status == "randomized")
            ) == len(numbers)
    finally:
        database.dispose()
