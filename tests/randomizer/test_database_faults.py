"""R-NF-6: a lost connection or a database that is gone gives a 503 problem, never a 500 or a
wrong answer, and the service recovers by itself; R-NF-2: nothing acknowledged is lost and
nothing is done twice.

* A connection lost at COMMIT (a proxy in front of a private cluster cuts it either before
  the server commits or right after): the answer says the outcome is unknown, and asking
  again with the same Idempotency-Key replays the first answer or acts once.
* The service's own connections terminated (``pg_terminate_backend``) again and again in the
  middle of a load on a real gunicorn server.
* The database server stopped for a few seconds under load, a worker crashing meanwhile (its
  replacement must start without the database), and the server started while the database
  is down.

Tests that stop a server stop a private cluster (:mod:`tests.randomizer.pgcluster`), never
the shared one.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from randomizer import create_app
from randomizer.db import Database, normalise_url
from randomizer.models import AuditEntry, Participant
from randomizer.services.context import load_trial_context
from randomizer.services.notifications import Dispatcher
from randomizer.services.outbox import enqueue
from tests.conftest import (
    ELIGIBLE,
    PG_URL,
    ApiClient,
    Clock,
    Scratch,
    TrialDatabase,
    make_trial_database,
)
from tests.randomizer.faults import Load, assert_audit_verifies, check_whole_and_once, screen_all
from tests.randomizer.pgcluster import Cluster, pg_cluster, private_cluster  # noqa: F401
from tests.randomizer.pgproxy import AFTER, BEFORE, CommitCutter
from tests.randomizer.served import Answer, HttpClient, Server
from tests.randomizer.test_blinding import names_an_arm
from tests.randomizer.test_outbox import MemoryTransport, message


def private_trial(cluster: Cluster, scratch: Scratch, directory: Path) -> TrialDatabase:
    """The demo trial in a new database of the private cluster."""
    url = cluster.create_database(f"sealroom_fault_{uuid.uuid4().hex[:12]}")
    return make_trial_database(scratch, "postgresql", directory, url=url)


def randomized_entries(trial: TrialDatabase, number: str) -> int:
    database = Database(trial.url)
    try:
        with database.reading() as session:
            return len(
                session.scalars(
                    select(AuditEntry.seq).where(
                        AuditEntry.action == "participant.randomized",
                        AuditEntry.subject == number,
                    )
                ).all()
            )
    finally:
        database.dispose()


def status_of(trial: TrialDatabase, number: str) -> str:
    database = Database(trial.url)
    try:
        with database.reading() as session:
            return session.scalars(
                select(Participant.status).where(Participant.screening_number == number)
            ).one()
    finally:
        database.dispose()


def assert_unavailable(response: Any, type_: str) -> None:
    assert response.status_code == 503, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == type_
    assert int(response.headers["Retry-After"]) > 0


# A connection lost at COMMIT ---------------------------------------------------------------


@dataclass
class CutScene:
    trial: TrialDatabase
    proxy: CommitCutter
    api: ApiClient


@pytest.fixture
def cut(private_cluster: Cluster, scratch: Scratch, tmp_path: Path) -> Iterator[CutScene]:  # noqa: F811
    """The app in-process, its database reached through a proxy that can cut a COMMIT."""
    trial = private_trial(private_cluster, scratch, tmp_path)
    proxy = CommitCutter(private_cluster.port)
    database = Database(proxy.url(trial.url.rsplit("/", 1)[1]))
    app = create_app({"settings": trial.settings, "database": database, "TESTING": True})
    try:
        yield CutScene(trial, proxy, ApiClient(app.test_client(), trial.tokens, Clock()))
    finally:
        database.dispose()
        proxy.close()


@pytest.mark.requirement("R-NF-6")
def test_a_commit_whose_answer_is_lost_is_503_and_the_same_key_replays_the_first_answer(
    cut: CutScene,
) -> None:
    assert cut.api.screen("101-0001").status_code == 201
    cut.proxy.arm(AFTER)
    lost = cut.api.randomize("101-0001", headers={"Idempotency-Key": "k-101-0001"})

    assert cut.proxy.cut.is_set()
    # The server committed; the service cannot know it, and must not say nothing changed.
    assert_unavailable(lost, "/problems/outcome-unknown")
    assert "may or may not" in lost.get_json()["detail"]
    assert status_of(cut.trial, "101-0001") == "randomized"

    again = cut.api.randomize("101-0001", headers={"Idempotency-Key": "k-101-0001"})
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # Without a key, asking again is refused for what it is: done already, never twice.
    assert cut.api.screen("101-0002").status_code == 201
    cut.proxy.arm(AFTER)
    assert_unavailable(cut.api.randomize("101-0002"), "/problems/outcome-unknown")
    refused = cut.api.randomize("101-0002")
    assert refused.status_code == 409
    assert refused.get_json()["type"] == "/problems/already-randomized"

    assert randomized_entries(cut.trial, "101-0001") == 1
    assert randomized_entries(cut.trial, "101-0002") == 1
    check_whole_and_once(cut.trial, {"101-0001": again.get_json()})


@pytest.mark.requirement("R-NF-6")
def test_a_commit_that_never_arrived_is_503_and_the_same_key_acts_once(cut: CutScene) -> None:
    assert cut.api.screen("101-0003").status_code == 201
    cut.proxy.arm(BEFORE)
    lost = cut.api.randomize("101-0003", headers={"Idempotency-Key": "k-101-0003"})

    assert cut.proxy.cut.is_set()
    assert_unavailable(lost, "/problems/outcome-unknown")
    assert status_of(cut.trial, "101-0003") == "screened"

    again = cut.api.randomize("101-0003", headers={"Idempotency-Key": "k-101-0003"})
    assert again.status_code == 201, again.get_json()
    assert "Idempotent-Replayed" not in again.headers
    replayed = cut.api.randomize("101-0003", headers={"Idempotency-Key": "k-101-0003"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_data() == again.get_data()
    assert randomized_entries(cut.trial, "101-0003") == 1
    check_whole_and_once(cut.trial, {"101-0003": again.get_json()})


# Under load, on a real server --------------------------------------------------------------


def terminate_backends(admin_url: str, database: str) -> int:
    """Terminate every connection to ``database`` (the service's own); return how many."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return len(
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).all()
            )
    finally:
        admin.dispose()


def get_ok_or_unavailable(client: HttpClient, path: str, user: str | None) -> Answer:
    """A read during a fault: its answer, which may only be a 200 or a 503 problem."""
    answer = client.send("GET", path, user, timeout=30)
    assert answer.status in (200, 503), answer.body
    if answer.status == 503:
        assert answer.headers.get_content_type() == "application/problem+json"
        assert answer.json()["type"] == "/problems/unavailable"
        assert int(answer.headers["Retry-After"]) > 0
    return answer


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-6")
@pytest.mark.requirement("R-NF-2")
@pytest.mark.skipif(PG_URL is None, reason="needs SEALROOM_TEST_DATABASE_URL (PostgreSQL)")
def test_connections_terminated_mid_load_give_503s_and_every_randomisation_once(
    scratch: Scratch, tmp_path: Path
) -> None:
    trial = make_trial_database(scratch, "postgresql", tmp_path)
    name = trial.url.rsplit("/", 1)[1]
    server = Server(trial, tmp_path, workers=2).start()
    try:
        numbers = [f"101-{i:04d}" for i in range(1, 41)]
        screen_all(server.client, numbers)
        load = Load(server.client, numbers, threads=6, pause=0.05).start()
        load.wait_for(3)
        terminated = 0
        for _ in range(12):  # every 0.25 s for 3 s: most land inside a transaction
            terminated += terminate_backends(normalise_url(PG_URL), name)
            get_ok_or_unavailable(
                server.client, f"/api/v1/participants/{numbers[0]}", "coordinator-101"
            )
            time.sleep(0.25)
        load.join()
        assert terminated > 0
        assert load.refusals, "no termination landed inside a request"

        # Recovered by itself: answers as usual, without a 503.
        assert get_ok_or_unavailable(server.client, "/api/v1/health", None).status == 200
        screen_all(server.client, ["101-0099"])
        status, body = server.client.post(
            "/participants/101-0099/randomize",
            "coordinator-101",
            {"weight_kg": 70, "eligibility": ELIGIBLE},
        )
        assert status == 201, body
    finally:
        server.stop()
    assert check_whole_and_once(trial, load.acknowledged) == len(numbers) + 1


@pytest.fixture
def private_server(
    private_cluster: Cluster,  # noqa: F811
    scratch: Scratch,
    tmp_path: Path,
) -> Iterator[Server]:
    """``sealroom serve`` (two workers) on a database of the private cluster (not started)."""
    server = Server(private_trial(private_cluster, scratch, tmp_path), tmp_path, workers=2)
    yield server
    server.stop()


def wait_until_healthy(client: HttpClient, timeout: float = 30) -> None:
    ends = time.monotonic() + timeout
    while get_ok_or_unavailable(client, "/api/v1/health", None).status != 200:
        assert time.monotonic() < ends, "the service did not recover by itself"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-6")
@pytest.mark.requirement("R-NF-2")
def test_a_database_stopped_under_load_gives_503s_a_worker_restarted_meanwhile_included(
    private_cluster: Cluster,  # noqa: F811
    private_server: Server,
) -> None:
    server = private_server.start()
    client = server.client
    numbers = [f"101-{i:04d}" for i in range(1, 31)]
    screen_all(client, numbers)
    load = Load(client, numbers, threads=4, pause=0.1).start()
    load.wait_for(5)

    private_cluster.stop()  # a crash of the database server, in the middle of the load
    before = server.worker_pids()
    for path, user in [
        ("/api/v1/health", None),
        (f"/api/v1/participants/{numbers[0]}", "coordinator-101"),  # authentication
        ("/api/v1/audit/checkpoint", "auditor"),
    ]:
        assert get_ok_or_unavailable(client, path, user).status == 503, path
    # A worker crashes during the outage: its replacement starts without the database
    # (gunicorn stops the whole server when a worker fails to boot).
    os.kill(min(before), signal.SIGKILL)
    ends = time.monotonic() + 30
    while len(server.worker_pids() - before) < 1:
        assert server.process is not None and server.process.poll() is None, "server stopped"
        assert time.monotonic() < ends, "no replacement worker"
        time.sleep(0.1)
    time.sleep(1)
    assert server.process is not None and server.process.poll() is None
    for _ in range(4):  # both workers, the new one included, answer 503
        assert get_ok_or_unavailable(client, "/api/v1/health", None).status == 503
    acknowledged_during = len(load.acknowledged)
    time.sleep(2)
    assert len(load.acknowledged) == acknowledged_during, "acknowledged without a database"

    private_cluster.start()
    wait_until_healthy(client)
    load.join()
    assert load.refusals, "the outage was not seen by the load"
    assert check_whole_and_once(server.trial, load.acknowledged) == len(numbers)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-6")
def test_a_server_started_while_the_database_is_down_serves_once_it_is_back(
    private_cluster: Cluster,  # noqa: F811
    private_server: Server,
) -> None:
    private_cluster.stop()
    server = private_server.start(healthy=False)
    assert get_ok_or_unavailable(server.client, "/api/v1/health", None).status == 503
    status, body = server.client.post(
        "/participants",
        "coordinator-101",
        {"screening_number": "101-0001", "site": "101", "screened_on": "2026-01-01"},
    )
    assert status == 503 and body["type"] == "/problems/unavailable", body

    private_cluster.start()
    wait_until_healthy(server.client)
    screen_all(server.client, ["101-0001"])
    load = Load(server.client, ["101-0001"], threads=1).start()
    load.join()
    assert check_whole_and_once(server.trial, load.acknowledged) == 1


@pytest.mark.requirement("R-NF-6")
@pytest.mark.requirement("R-UNB-2")
def test_the_outbox_dispatcher_delivers_by_itself_once_the_database_is_back(
    private_cluster: Cluster,  # noqa: F811
    scratch: Scratch,
    tmp_path: Path,
) -> None:
    trial = private_trial(private_cluster, scratch, tmp_path)
    database = Database(trial.url)
    try:
        with database.transaction() as session:
            ctx = load_trial_context(session, trial.settings.keys_dir)
            enqueue(session, ctx, [message(1)])
        transport = MemoryTransport()
        dispatcher = Dispatcher(database, ctx, transport, retry_seconds=0.2)

        private_cluster.stop()
        dispatcher.wake()  # its round fails: the database is down
        time.sleep(1)
        assert transport.sent == []
        private_cluster.start()
        ends = time.monotonic() + 20
        while not transport.sent:  # no commit wakes it: it tries again by itself
            assert time.monotonic() < ends, "the message waits for a wake that never comes"
            time.sleep(0.05)
        dispatcher.join(10)
        assert [m.subject for m in transport.sent] == ["Unblinding 1"]
    finally:
        database.dispose()


@pytest.mark.requirement("R-NF-6")
@pytest.mark.requirement("R-UNB")
def test_an_unblinding_whose_commit_answer_is_lost_releases_no_arm(cut: CutScene) -> None:
    randomized = cut.api.screen_and_randomize("101-0004")
    assert randomized.status_code == 201, randomized.get_json()
    event = {"reason": "serious_adverse_event", "event_reference": "SAE-2026-0042"}
    cut.proxy.arm(AFTER)
    lost = cut.api.post("/participants/101-0004/unblind", "investigator-101", json=event)

    assert cut.proxy.cut.is_set()
    assert_unavailable(lost, "/problems/outcome-unknown")
    assert "arm" not in lost.get_json() and "receipt" not in lost.get_json()
    assert not names_an_arm(lost.get_data(as_text=True))
    assert "never replayed" in lost.get_json()["detail"]
    # It was recorded (the server committed): the record says so, without the arm.
    shown = cut.api.get("/participants/101-0004", "coordinator-101").get_json()
    assert shown["unblinded"] is True
    again = cut.api.post("/participants/101-0004/unblind", "investigator-101", json=event)
    assert again.status_code == 200, again.get_json()
    assert_audit_verifies(cut.trial)
