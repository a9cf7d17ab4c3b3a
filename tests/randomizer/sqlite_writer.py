"""A process that randomises on a SQLite database until it is killed (tests/test_crashes.py).

``python -m tests.randomizer.sqlite_writer MODE URL KEYS_DIR TOKENS_JSON NUMBER...`` runs the
real application in-process (its test client: the same views, services and transaction) and
randomises each NUMBER in turn (they are screened first), printing one JSON line on stdout
after each answer: ``{"start": n}`` before, ``{"ack": n, "answer": ...}`` once its 201 is
back (committed). MODE says where it will be killed:

* ``audit-checkpoint``: it stops, printing ``{"paused": n}``, right after writing the signed
  audit checkpoint of the randomisation of the last NUMBER, inside its transaction, before
  the COMMIT;
* ``wal-checkpoint``: automatic WAL checkpoints are off, so every commit stays in the WAL;
  after the last NUMBER it prints ``{"checkpoint": true}``, waits for a line on stdin, and
  copies the WAL into the database file (``PRAGMA wal_checkpoint(TRUNCATE)``), during
  which the test kills it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from sqlalchemy import event

from randomizer import create_app
from randomizer.config import Settings
from randomizer.db import Database
from tests.conftest import ApiClient, Clock


def say(**line: Any) -> None:
    print(json.dumps(line), flush=True)


def main(mode: str, url: str, keys_dir: str, tokens_json: str, numbers: list[str]) -> None:
    database = Database(url)
    last = numbers[-1]
    current: dict[str, str] = {}

    if mode == "wal-checkpoint":

        @event.listens_for(database.engine, "connect")
        def _no_automatic_checkpoints(connection: Any, _record: Any) -> None:
            connection.execute("PRAGMA wal_autocheckpoint = 0")

    else:

        @event.listens_for(database.engine, "after_cursor_execute")
        def _pause_after_checkpoint(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith("INSERT INTO audit_checkpoint") and current.get("n") == last:
                say(paused=last)
                time.sleep(120)  # killed here

    settings = Settings.from_env({}, database_url=url, keys_dir=keys_dir)
    app = create_app({"settings": settings, "database": database})
    api = ApiClient(app.test_client(), json.loads(tokens_json), Clock())
    for i, number in enumerate(numbers):
        screened = api.screen(number, prior_ig=("yes", "no")[i % 2])
        assert screened.status_code == 201, screened.get_json()
        current["n"] = number
        say(start=number)
        answer = api.randomize(number)
        assert answer.status_code == 201, answer.get_json()
        say(ack=number, answer=answer.get_json())
    if mode == "wal-checkpoint":
        # On the driver's connection: outside a transaction (SQLAlchemy would begin one).
        connection = database.engine.raw_connection().driver_connection
        say(checkpoint=True)
        sys.stdin.readline()  # the test is watching the database file now
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        say(done=True)
        time.sleep(120)  # never closes the database: closing would checkpoint it again


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
