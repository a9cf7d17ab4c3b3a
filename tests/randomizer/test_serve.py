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
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ELIGIBLE, make_trial_database
from tests.randomizer.faults import check_whole_and_once, screen_all
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
    numbers = [f"101-K-{i:03d}" for i in range(60)]
    screen_all(client, numbers)

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

    # Whole randomisations only, each acknowledged one there; the audit verifies.
    check_whole_and_once(server.trial, acknowledged)

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
    assert check_whole_and_once(server.trial, acknowledged) == len(numbers)
