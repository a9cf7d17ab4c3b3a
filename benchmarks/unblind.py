"""Emergency unblinding latency, in process and over HTTP (issue: emergency unblinding).

    .venv/bin/python benchmarks/unblind.py [--participants N] [--database-url URL]

Builds a fresh demo trial (SQLite in a temporary directory, or a new database on the
PostgreSQL server of --database-url, dropped afterwards), randomises N participants, then
unblinds each of them:
  * in process, through Flask's test client (no network), with no mail server (the
    messages wait in the outbox), beside the minimal one-write Flask endpoint;
  * over HTTP, against a real ``sealroom serve`` (gunicorn, 2 workers) whose notifications
    go to a real aiosmtpd server in this process, so delivery runs while it is measured.
Prints median and p99 of each. Not part of CI; quote figures and ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiosmtpd.controller import Controller
from randomize import (  # (sets sys.path)
    ELIGIBLE,
    demo_trial,
    minimal_write_app,
    scratch_database,
    timed,
)

_REPOSITORY = Path(__file__).resolve().parents[1]

from randomizer import create_app  # noqa: E402
from randomizer.db import Database  # noqa: E402

UNBLIND = {"reason": "serious_adverse_event", "event_reference": "SAE-BENCH"}


class Collect:
    """An aiosmtpd handler that counts what it receives."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        return "250 OK"


def quantiles(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, token: str, body: dict) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main() -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as directory,
        scratch_database(args.database_url, Path(directory)) as url,
    ):
        run(url, Path(directory), args.participants)


def run(url: str, root: Path, participants: int) -> None:
    settings, database, tokens, _kits = demo_trial(url, root, 4 * participants)
    coordinator = {"Authorization": f"Bearer {tokens['coordinator-101']}"}
    investigator = {"Authorization": f"Bearer {tokens['investigator-101']}"}
    client = create_app({"settings": settings, "database": database}).test_client()
    minimal = minimal_write_app(database).test_client()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    numbers = [f"101-U-{i:05d}" for i in range(2 * participants)]
    for i, number in enumerate(numbers):
        screened = client.post(
            "/api/v1/participants",
            headers=coordinator,
            json={
                "screening_number": number,
                "site": "101",
                "screened_on": today,
                "strata": {"prior_ig": ("yes", "no")[i % 2]},
            },
        )
        assert screened.status_code == 201, screened.get_json()
        done = client.post(
            f"/api/v1/participants/{number}/randomize",
            headers=coordinator,
            json={"weight_kg": 30, "eligibility": ELIGIBLE},
        )
        assert done.status_code == 201, done.get_json()

    minimal.post("/write")
    write_times = timed(lambda i: minimal.post("/write").status_code, participants)
    in_process = timed(
        lambda i: (
            client.post(
                f"/api/v1/participants/{numbers[i]}/unblind", headers=investigator, json=UNBLIND
            ).status_code
        ),
        participants,
    )
    database.dispose()

    handler = Collect()
    smtp = Controller(handler, hostname="127.0.0.1", port=free_port())
    smtp.start()
    port = free_port()
    environment = {
        **os.environ,
        "SEALROOM_DATABASE_URL": url,
        "SEALROOM_INSTANCE_DIR": str(root),
        "SEALROOM_KEYS_DIR": str(root / "keys"),
        "SEALROOM_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}",
        "SEALROOM_NOTIFY_UNBLINDING": "safety@sponsor.example",
        "SEALROOM_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "randomizer.cli", "serve", "--port", str(port), "--workers", "2"],
        env=environment,
        cwd=_REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        token = tokens["investigator-101"]
        over_http = timed(
            lambda i: post(
                f"{base}/participants/{numbers[participants + i]}/unblind", token, UNBLIND
            ),
            participants,
        )
        deadline = time.monotonic() + 30
        while handler.received < 4 * participants and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(30)
        smtp.stop()

    print(f"{Database(url).dialect}: {participants} unblindings each way, one client thread")
    print(f"{'minimal Flask write (in process)':<40} {quantiles(write_times)}")
    ratio = statistics.median(in_process) / statistics.median(write_times)
    print(f"{'unblind, in process, no mail server':<40} {quantiles(in_process)}  x{ratio:.1f}")
    print(f"{'unblind, HTTP, gunicorn + SMTP':<40} {quantiles(over_http)}")
    print(
        f"messages received by the SMTP server: {handler.received} of {4 * participants} "
        "(2 an unblinding; the server's dispatcher also delivers those the in-process run "
        "left waiting)"
    )


if __name__ == "__main__":
    main()
