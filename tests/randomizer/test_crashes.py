"""R-NF-2: a crash at any instant loses nothing acknowledged and leaves no half change; the
audit verifies after restart.

The whole server SIGKILLed mid-load is in ``test_serve.py``; here:

* one gunicorn worker SIGKILLed in the middle of requests: their clients get an error, the
  database holds whole randomisations only, the master starts a new worker that answers,
  and what failed, sent again with its Idempotency-Key, is replayed or made once;
* on SQLite, a process killed while it writes a checkpoint: the signed audit checkpoint
  (inside the randomisation's transaction, before COMMIT), and the WAL checkpoint that
  copies committed transactions into the database file. The database then opens, the audit
  verifies, and every acknowledged randomisation is there.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from randomizer import create_app
from tests.conftest import ApiClient, Clock, Scratch, TrialDatabase, make_trial_database
from tests.randomizer.faults import check_whole_and_once, randomize_with_key, screen_all
from tests.randomizer.served import Server

pytestmark = [pytest.mark.slow]


# A worker killed mid-request ---------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-2")
def test_a_worker_killed_mid_request_leaves_no_half_change_and_is_replaced(
    scratch: Scratch, backend: str, tmp_path: Path
) -> None:
    trial = make_trial_database(scratch, backend, tmp_path)
    server = Server(trial, tmp_path, workers=1).start()
    client = server.client
    acknowledged: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    lock = threading.Lock()

    def randomize_once(number: str) -> None:
        try:
            answer = randomize_with_key(client, number)
        except (OSError, http.client.HTTPException):  # the worker died under this request
            with lock:
                failed.append(number)
            return
        assert answer.status == 201, answer.body
        with lock:
            acknowledged[number] = answer.json()

    try:
        numbers = [f"101-{i:04d}" for i in range(1, 25)]
        screen_all(client, numbers)
        (worker,) = server.worker_pids()
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(randomize_once, number) for number in numbers]
            while len(acknowledged) < 3:
                time.sleep(0.005)
            os.kill(worker, signal.SIGKILL)
            for future in futures:
                future.result()
        assert failed, "the kill must come in the middle of requests"

        # Before anything is sent again: whole randomisations only, none acknowledged lost.
        check_whole_and_once(trial, acknowledged)

        # The master replaces the worker, and the service answers again.
        ends = time.monotonic() + 30
        while not server.worker_pids() - {worker}:
            assert time.monotonic() < ends, "no new worker"
            time.sleep(0.1)
        for number in failed:
            answer = randomize_with_key(client, number)
            assert answer.status == 201, answer.body
            acknowledged[number] = answer.json()
    finally:
        server.stop()
    assert check_whole_and_once(trial, acknowledged) == len(numbers)


# A crash while writing a checkpoint (SQLite) -----------------------------------------------


def start_writer(mode: str, trial: TrialDatabase, numbers: list[str]) -> subprocess.Popen[str]:
    """``tests/randomizer/sqlite_writer.py`` on ``trial``'s database, its stdout a pipe."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.randomizer.sqlite_writer",
            mode,
            trial.url,
            str(trial.settings.keys_dir),
            json.dumps(trial.tokens),
            *numbers,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "SEALROOM_LOG_LEVEL": "WARNING"},
    )


def lines(process: subprocess.Popen[str], timeout: float = 60) -> Iterator[dict[str, Any]]:
    """The writer's JSON lines as they come; fails if it is silent for ``timeout`` seconds."""
    stdout = process.stdout
    assert stdout is not None
    received: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            received.put(line)
        received.put("")

    threading.Thread(target=read, daemon=True).start()
    while line := received.get(timeout=timeout):
        yield json.loads(line)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def sqlite_trial(scratch: Scratch, tmp_path: Path) -> tuple[TrialDatabase, Path]:
    trial = make_trial_database(scratch, "sqlite", tmp_path)
    database = make_url(trial.url).database
    assert database is not None
    return trial, Path(database)


@pytest.mark.requirement("R-NF-2")
def test_a_crash_while_the_audit_checkpoint_is_written_loses_nothing_acknowledged(
    scratch: Scratch, tmp_path: Path
) -> None:
    trial, _path = sqlite_trial(scratch, tmp_path)
    numbers = [f"101-{i:04d}" for i in range(1, 6)]
    writer = start_writer("audit-checkpoint", trial, numbers)
    acknowledged: dict[str, dict[str, Any]] = {}
    try:
        for line in lines(writer):
            if "ack" in line:
                acknowledged[line["ack"]] = line["answer"]
            if "paused" in line:
                kill(writer)  # inside the transaction, the checkpoint just written
    finally:
        if writer.poll() is None:
            kill(writer)
    assert sorted(acknowledged) == numbers[:-1]

    assert check_whole_and_once(trial, acknowledged) == len(numbers) - 1
    # The interrupted randomisation left nothing: it can be made now, once.
    app = create_app({"settings": trial.settings})
    api = ApiClient(app.test_client(), trial.tokens, Clock())
    answer = api.randomize(numbers[-1])
    assert answer.status_code == 201, answer.get_json()
    app.extensions["sealroom"].db.dispose()
    acknowledged[numbers[-1]] = answer.get_json()
    assert check_whole_and_once(trial, acknowledged) == len(numbers)


@pytest.mark.requirement("R-NF-2")
def test_a_crash_in_the_middle_of_a_wal_checkpoint_loses_nothing_acknowledged(
    scratch: Scratch, tmp_path: Path
) -> None:
    trial, path = sqlite_trial(scratch, tmp_path)
    wal = path.with_name(path.name + "-wal")
    acknowledged: dict[str, dict[str, Any]] = {}
    interrupted = 0
    for attempt in range(3):
        numbers = [f"101-{attempt}{i:03d}" for i in range(1, 31)]
        # In WAL mode only a checkpoint writes the database file: its first change is the
        # checkpoint under way, and the writer is killed then (the writer never checkpoints
        # before it says so).
        before = path.stat().st_mtime_ns
        writer = start_writer("wal-checkpoint", trial, numbers)
        try:
            for line in lines(writer):
                if "ack" in line:
                    acknowledged[line["ack"]] = line["answer"]
                if "checkpoint" in line:
                    assert writer.stdin is not None
                    writer.stdin.write("go\n")
                    writer.stdin.flush()
                    ends = time.monotonic() + 30
                    while path.stat().st_mtime_ns == before and time.monotonic() < ends:
                        pass  # the writer's first page written into the database file
                    kill(writer)
        finally:
            if writer.poll() is None:
                kill(writer)
        assert set(numbers) <= set(acknowledged)
        # Killed before the checkpoint ended (TRUNCATE empties the WAL last): the database
        # file holds part of the WAL's transactions, the WAL all of them.
        started = path.stat().st_mtime_ns != before
        interrupted += started and wal.exists() and wal.stat().st_size > 0
        assert check_whole_and_once(trial, acknowledged) == len(acknowledged)
        if interrupted:
            break
    assert interrupted, "no kill landed in the middle of a checkpoint"
