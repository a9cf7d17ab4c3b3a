"""The authentication throttle's count is shared by a real server's workers (issue 7).

A real ``sealroom serve`` with two worker processes, on SQLite and on PostgreSQL: invalid
tokens sent at once over many connections are every one counted, and the failures sent
alternately over two keep-alive connections, each held by a different worker (read from
Linux's /proc), reach the limit together, as one count, then get 429 from both workers;
a valid token is still served by both; the throttling is one audit entry.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from randomizer.db import Database
from randomizer.models import AuditEntry, AuthFailure
from tests.conftest import make_trial_database
from tests.randomizer.served import Server

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

FREE, LIMIT = 12, 14
INVALID = {"Authorization": "Bearer " + "x" * 43}


@pytest.fixture
def server(scratch: Any, backend: str, tmp_path: Path) -> Any:
    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=8)
    running = Server(
        trial,
        tmp_path,
        workers=2,
        environment={
            "SEALROOM_AUTH_FREE_FAILURES": str(FREE),
            "SEALROOM_AUTH_MAX_FAILURES": str(LIMIT),
        },
    ).start()
    yield running
    running.stop()


def one_per_worker(server: Server) -> dict[int, http.client.HTTPConnection]:
    """A keep-alive connection held by each worker (connections are opened until both hold
    one; the others are closed)."""
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(50):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/api/v1/health")
        connection.getresponse().read()
        worker = server.worker_serving(connection.sock)
        if worker is not None and worker not in held:
            held[worker] = connection
            if len(held) == server.workers:
                return held
        else:
            connection.close()
    raise AssertionError(f"the connections reached only workers {sorted(held)}")


def get(connection: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, Any, Any]:
    connection.request("GET", "/api/v1/trial", headers=headers)
    response = connection.getresponse()
    return response.status, response.getheader("Retry-After"), json.loads(response.read())


@pytest.mark.requirement("R-NF-1")
def test_the_workers_of_a_server_share_one_count_of_failures(server: Server) -> None:
    database = Database(server.trial.url)
    try:
        # At once, over as many connections: every failure counted, none lost.
        with ThreadPoolExecutor(FREE) as pool:
            statuses = list(
                pool.map(
                    lambda _: server.client.request("GET", "/api/v1/trial", headers=INVALID)[0],
                    range(FREE),
                )
            )
        assert statuses == [401] * FREE
        with database.reading() as session:
            assert session.scalar(select(AuthFailure.failures)) == FREE

        workers = one_per_worker(server)
        first, second = workers.values()
        answers, waited = [], []
        for connection in (first, second, first, second):
            started = time.monotonic()
            answers.append(get(connection, INVALID))
            waited.append(time.monotonic() - started)
        valid = {"Authorization": f"Bearer {server.trial.tokens['investigator-101']}"}
        served = [get(connection, valid)[0] for connection in (first, second)]
        for connection in workers.values():
            connection.close()

        # Failures 13 and 14 (one on each worker) are delayed 401s; 15 and 16 are over the
        # limit of 14 on either worker: counted apart, each would have seen 8 at most.
        assert [status for status, _retry, _body in answers] == [401, 401, 429, 429]
        for _status, retry_after, body in answers[2:]:
            assert body["type"] == "/problems/too-many-requests"
            assert 1 <= int(retry_after) <= 900
        assert served == [200, 200]
        with database.reading() as session:
            # The 16th was refused from a read: nothing written beyond the limit.
            assert session.scalar(select(AuthFailure.failures)) == LIMIT + 1
            throttled = session.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action == "auth.throttled")
            )
        assert throttled == 1
        print(
            f"\n2 workers {sorted(workers)}: delayed 401s in "
            + ", ".join(f"{seconds:.2f} s" for seconds in waited[:2])
            + "; 429s in "
            + ", ".join(f"{seconds:.3f} s" for seconds in waited[2:])
        )
    finally:
        database.dispose()
