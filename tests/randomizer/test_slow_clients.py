"""Idle and slow clients cannot stop the service from answering (R-NF-5; issue 7, finding 3).

With gunicorn's sync workers, three sockets that sent an unfinished request header held both
workers and the service stopped answering. ``sealroom serve`` runs threaded workers whose
client sockets never read without a deadline: health and randomisation still answer while
many such connections are held open, and a body sent too slowly is cut off with a 408.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import ELIGIBLE, make_trial_database
from tests.randomizer.served import Server

pytestmark = [pytest.mark.slow, pytest.mark.requirement("R-NF-5")]

#: Far more idle connections than the two workers have threads (2 x 16) ...
IDLE_CLIENTS = 80
#: ... of which these stall in the middle of a request (header or body), each holding a
#: thread until its read deadline: fewer than the threads.
STALLED = 24


def hold_idle_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that send nothing, that stop in the middle of their request header (the
    finding), or whose body never comes."""
    held = []
    for i in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i < STALLED and i % 2:
            connection.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif i < STALLED:
            connection.sendall(
                b"POST /api/v1/participants HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
        held.append(connection)
    return held


def test_health_and_randomisation_answer_while_many_idle_clients_hold_connections(
    scratch, tmp_path
):
    trial = make_trial_database(scratch, "sqlite", tmp_path, kits_per_arm=8)
    server = Server(trial, tmp_path, workers=2).start()
    held = hold_idle_connections(server.port, IDLE_CLIENTS)
    try:
        time.sleep(1)
        started = time.monotonic()
        health = server.client.request("GET", "/api/v1/health", timeout=90)
        screened = server.client.post(
            "/participants",
            "coordinator-101",
            {
                "screening_number": "101-SLOW-1",
                "site": "101",
                "screened_on": datetime.now(UTC).date().isoformat(),
                "strata": {"prior_ig": "no"},
            },
        )
        randomised = server.client.post(
            "/participants/101-SLOW-1/randomize",
            "coordinator-101",
            {"weight_kg": 70, "eligibility": ELIGIBLE},
        )
        elapsed = time.monotonic() - started
    finally:
        for connection in held:
            connection.close()
        server.stop()

    # Answered while the slow clients still hold their connections: at worst after the
    # deadlines that free the threads they held (gunicorn waits 5 s for a silent new
    # connection's first byte; randomizer.serving.READ_SECONDS for the rest). With the
    # landed sync workers the service never answered at all.
    assert elapsed < 60
    assert health[0] == 200
    assert screened[0] == 201, screened
    assert randomised[0] == 201, randomised
    print(f"\n{IDLE_CLIENTS} idle connections held; three answers in {elapsed:.2f} s")


def test_a_body_sent_too_slowly_gets_a_408_problem_and_frees_its_thread(scratch, tmp_path):
    trial = make_trial_database(scratch, "sqlite", tmp_path, kits_per_arm=8)
    server = Server(trial, tmp_path, workers=1).start()
    try:
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        token = trial.tokens["coordinator-101"].encode()
        connection.sendall(
            b"POST /api/v1/participants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = connection.recv(4096)
        connection.close()
    finally:
        server.stop()

    assert answer.startswith(b"HTTP/1.1 408")
    assert b"application/problem+json" in answer


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(
    ("request_bytes", "status", "problem_type"),
    [
        (
            b"GET /api/v1/health?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "/problems/uri-too-long",
        ),
        (
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "/problems/header-fields-too-large",
        ),
        (b"GET /api/v1/health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "/problems/validation"),
    ],
    ids=["request line over 8190 bytes", "header over 8190 bytes", "unparseable request"],
)
def test_the_servers_own_refusals_are_problem_details(
    scratch, tmp_path, request_bytes, status, problem_type
):
    import json

    trial = make_trial_database(scratch, "sqlite", tmp_path, kits_per_arm=8)
    server = Server(trial, tmp_path, workers=1).start()
    try:
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        connection.sendall(request_bytes)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        connection.close()
    finally:
        server.stop()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert b"Content-Type: application/problem+json" in head
    problem = json.loads(body)
    assert (problem["type"], problem["status"]) == (problem_type, status)
    assert problem["title"] and problem["detail"]
