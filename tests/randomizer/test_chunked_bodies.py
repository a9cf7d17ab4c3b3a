"""Chunked request bodies meet the same size limit as any other (R-NF-3, URS §7, issue 7).

A body sent with ``Transfer-Encoding: chunked`` has no ``Content-Length``; werkzeug read such
a body up to ``SEALROOM_MAX_BODY_BYTES`` and stopped there without a word, so a larger body
was silently cut at the limit (and acted on when the cut still parsed, as JSON padded with
whitespace does), and one of 13 MB became a 400. Against a real ``sealroom serve``
(gunicorn), with http.client sending the chunks: a chunked body up to the limit is read
whole, one past it is the same audited 413 problem as a body that declares its length, and
nothing is acted on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from randomizer.db import Database
from randomizer.models import AuditEntry, Participant
from tests.conftest import BACKENDS, ELIGIBLE, make_trial_database
from tests.randomizer.served import Server

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

LIMIT = 65536  # SEALROOM_MAX_BODY_BYTES of the test settings (the default)


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, scratch: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp(f"chunked-{request.param}")
    trial = make_trial_database(scratch, request.param, directory)
    assert trial.settings.max_body_bytes == LIMIT
    running = Server(trial, directory, workers=2).start()
    yield running
    running.stop()


def send_chunked(
    server: Server, path: str, body: bytes, chunk_size: int = 8192, user: str = "coordinator-101"
) -> tuple[int, str, Any]:
    """POST ``body`` in chunks of ``chunk_size`` (Transfer-Encoding: chunked, no length)."""

    def chunks() -> Iterator[bytes]:
        for offset in range(0, len(body), chunk_size):
            yield body[offset : offset + chunk_size]

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        # A huge body: the server answers and closes before reading it all (it reads nothing
        # past the limit), so sending fails; its answer is still there to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(
                "POST",
                f"/api/v1{path}",
                body=chunks(),
                headers={
                    "Authorization": f"Bearer {server.trial.tokens[user]}",
                    "Content-Type": "application/json",
                },
                encode_chunked=True,
            )
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), json.loads(response.read())
    finally:
        connection.close()


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON followed by whitespace, ``size`` bytes in all (still valid JSON)."""
    text = json.dumps(body).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


def screening(number: str) -> dict[str, Any]:
    return {
        "screening_number": number,
        "site": "101",
        "screened_on": datetime.now(UTC).date().isoformat(),
        "strata": {"prior_ig": "no"},
    }


def randomization() -> dict[str, Any]:
    return {"weight_kg": 70, "eligibility": ELIGIBLE}


def counts(server: Server) -> tuple[int, int]:
    database = Database(server.trial.url)
    try:
        with database.reading() as session:
            return (
                session.scalar(select(func.count()).select_from(Participant)),
                session.scalar(select(func.count()).select_from(AuditEntry)),
            )
    finally:
        database.dispose()


def last_action(server: Server) -> dict[str, Any]:
    database = Database(server.trial.url)
    try:
        with database.reading() as session:
            canonical = session.scalars(
                select(AuditEntry.canonical).order_by(AuditEntry.seq.desc()).limit(1)
            ).one()
        return json.loads(canonical)
    finally:
        database.dispose()


def assert_too_large(status: int, content_type: str, problem: dict[str, Any]) -> None:
    assert (status, content_type) == (413, "application/problem+json"), problem
    assert problem["type"] == "/problems/validation"
    assert problem["status"] == 413
    assert problem["errors"] == {"_body": [f"At most {LIMIT} bytes."]}
    assert problem["title"] and problem["detail"]


@pytest.mark.requirement("R-NF-3")
def test_a_chunked_body_of_the_limit_in_small_chunks_is_read_whole(server: Server) -> None:
    status, _type, body = send_chunked(
        server, "/participants", padded(screening("101-CH-0001"), LIMIT), chunk_size=7
    )
    assert status == 201, body
    status, _type, body = send_chunked(
        server, "/participants/101-CH-0001/randomize", padded(randomization(), LIMIT)
    )
    assert status == 201, body
    assert body["randomization_number"]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("size", [LIMIT + 1, 300_000, 13_000_000])
def test_a_chunked_randomisation_past_the_limit_is_an_audited_413_and_acts_on_nothing(
    server: Server, size: int
) -> None:
    number = f"101-CH-R{size}"
    status, _type, body = send_chunked(server, "/participants", padded(screening(number), 1000))
    assert status == 201, body
    participants, entries = counts(server)

    status, content_type, problem = send_chunked(
        server, f"/participants/{number}/randomize", padded(randomization(), size)
    )

    assert_too_large(status, content_type, problem)
    assert counts(server) == (participants, entries + 1)
    entry = last_action(server)
    assert entry["action"] == "participant.randomization_refused"
    status, _type, shown = server.client.request(
        "GET", f"/api/v1/participants/{number}", "coordinator-101"
    )
    assert json.loads(shown)["status"] == "screened"


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("size", [LIMIT + 1, 300_000, 13_000_000])
def test_a_chunked_screening_past_the_limit_is_a_413_that_writes_nothing(
    server: Server, size: int
) -> None:
    before = counts(server)

    status, content_type, problem = send_chunked(
        server, "/participants", padded(screening(f"101-CH-S{size}"), size)
    )

    assert_too_large(status, content_type, problem)
    assert counts(server) == before
    # The worker that refused it serves the next request as usual.
    status, _type, _body = server.client.request("GET", "/api/v1/health")
    assert status == 200


@pytest.mark.requirement("R-NF-5")
def test_a_chunked_body_sent_too_slowly_gets_a_408_problem(server: Server) -> None:
    """Read before the application runs, a stalled chunked body still meets the body's
    deadline (randomizer.wsgi) with the 408 problem, never a 500 or a dropped connection."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        token = server.trial.tokens["coordinator-101"].encode()
        connection.sendall(
            b"POST /api/v1/participants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\n{\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = connection.recv(4096)
            if not data:
                break
            answer += data
    finally:
        connection.close()

    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer


def send_raw(
    server: Server, path: str, chunked_body: bytes, user: str = "coordinator-101"
) -> bytes:
    """A request whose chunked body is sent as given (possibly malformed); the answer's head
    and body."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        token = server.trial.tokens[user].encode()
        connection.sendall(
            f"POST /api/v1{path} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Authorization: Bearer "
            + token
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked_body
        )
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while data := connection.recv(65536):
            answer += data
        return answer
    finally:
        connection.close()


MALFORMED_CHUNKS = [
    pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", "101-CH-M1", id="size-not-hexadecimal"),
    pytest.param(b"2\r\n{}XX0\r\n\r\n", "101-CH-M2", id="chunk-not-terminated"),
    pytest.param(b"5\r\n{}\r\n0\r\n\r\n", "101-CH-M3", id="chunk-shorter-than-its-size"),
    pytest.param(b"2\r\n{}\r\n", "101-CH-M4", id="no-last-chunk"),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(("chunks", "number"), MALFORMED_CHUNKS)
def test_a_malformed_chunked_body_is_a_400_problem_and_an_audited_refusal(
    server: Server, chunks: bytes, number: str
) -> None:
    status, _type, body = send_chunked(server, "/participants", padded(screening(number), 1000))
    assert status == 201, body
    participants, entries = counts(server)

    for path, audited in (("/participants", 0), (f"/participants/{number}/randomize", 1)):
        answer = send_raw(server, path, chunks)

        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b"application/problem+json" in head
        problem = json.loads(text)
        assert problem["errors"] == {
            "_body": ["The chunked transfer coding is malformed or incomplete."]
        }
        assert counts(server) == (participants, entries + audited)
    assert last_action(server)["action"] == "participant.randomization_refused"
