"""Randomisation throughput against a minimal Flask endpoint doing one database write (R-NF-4).

    .venv/bin/python benchmarks/randomize.py [--participants N] [--database-url URL]

Builds a fresh demo trial (SQLite in a temporary directory, or a new database on the
PostgreSQL server of --database-url, dropped afterwards), then in one run, in one process,
through Flask's test client (no network):
  * a minimal Flask endpoint inserting one row in one transaction on the same database;
  * ``POST /participants`` (screening, the number assigned under the site lock) and
    ``POST /participants/<sn>/randomize``
    (randomisation: locks, supply check over the site's kits by arm, slot,
    kits, sealed arm, audit entry, Merkle nodes, signed checkpoint, receipt).
Prints the median and mean time of each and their ratios to the minimal write. Not part of
CI: it prints figures for a person to read; quote ratios from one run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_REPOSITORY = Path(__file__).resolve().parents[1]
if str(_REPOSITORY) not in sys.path:
    sys.path.insert(0, str(_REPOSITORY))

from flask import Flask  # noqa: E402
from sqlalchemy import (  # noqa: E402
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import make_url  # noqa: E402

from randomizer import create_app  # noqa: E402
from randomizer.config import Settings  # noqa: E402
from randomizer.db import Database, normalise_url  # noqa: E402
from randomizer.domain import bundled_trial_path, parse_trial  # noqa: E402
from randomizer.services.demo import initialise_demo  # noqa: E402
from randomizer.simulation import ELIGIBLE  # noqa: E402

_SELECT_ONE = select(literal(1))


def minimal_write_app(database: Database, selects: int = 0) -> Flask:
    """The yardstick: one POST, one INSERT, one commit, on the same database; with
    ``selects``, that many ``SELECT 1`` round trips before the INSERT, in its transaction
    (what round trips alone cost, beside a randomisation's)."""
    table = Table(
        "bench_write",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("payload", String(64)),
    )
    table.create(database.engine, checkfirst=True)
    app = Flask("minimal")

    @app.post("/write")
    def write() -> tuple[dict[str, str], int]:
        with database.transaction() as session:
            if selects:
                connection = session.connection()
                for _ in range(selects):
                    connection.execute(_SELECT_ONE).one()
            session.execute(insert(table).values(payload=uuid.uuid4().hex))
        return {"status": "ok"}, 201

    return app


def timed(action: Callable[[int], int], count: int) -> list[float]:
    """Seconds per call of ``action(i)``, which must return an HTTP status below 300."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        status = action(i)
        times.append(time.perf_counter() - started)
        if status >= 300:
            raise SystemExit(f"request {i} failed with HTTP {status}")
    return times


def report(name: str, times: list[float], yardstick: list[float] | None) -> None:
    median, mean = statistics.median(times), statistics.fmean(times)
    line = f"{name:<34} median {median * 1e3:7.2f} ms  mean {mean * 1e3:7.2f} ms  {1 / mean:7.0f}/s"
    if yardstick is not None:
        line += f"  x{median / statistics.median(yardstick):5.1f} the minimal write (median)"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=150)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with scratch_database(args.database_url, root) as url:
            run(url, root, args.participants)


@contextmanager
def scratch_database(server_url: str | None, root: Path) -> Iterator[str]:
    """A new database: on the PostgreSQL server of ``server_url`` (dropped at the end), or
    a SQLite file in ``root``."""
    if not server_url:
        yield f"sqlite:///{root / 'bench.db'}"
        return
    name = f"sealroom_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(normalise_url(server_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def demo_trial(
    url: str, root: Path, kits_per_arm: int, *, slots_per_stratum: int | None = None
) -> tuple[Settings, Database, dict[str, str], int]:
    """The bundled demo on ``url`` (keys in ``root``): settings, database, tokens by user,
    kits per arm at each site. ``slots_per_stratum`` lengthens every stratum's list (the
    demo's 200 slots run out under a long load run, and refusals are not what is measured).
    """
    settings = Settings.from_env({}, database_url=url, instance_dir=root, keys_dir=root / "keys")
    text = bundled_trial_path().read_bytes().decode("utf-8")
    if slots_per_stratum is not None:
        line = "slots_per_stratum = 200\n"
        if line not in text:
            raise SystemExit("the bundled trial no longer says slots_per_stratum = 200")
        text = text.replace(line, f"slots_per_stratum = {slots_per_stratum}\n")
    database = Database(url)
    demo = initialise_demo(
        database,
        settings.keys_dir,
        parse_trial(text),
        text,
        bytes(range(32)),
        kits_per_arm=kits_per_arm,
    )
    return settings, database, {t["user"]: t["token"] for t in demo.tokens}, demo.kits_per_arm


def screen_numbered(client: Any, headers: dict[str, str], count: int, site: str = "101") -> None:
    """Screen ``{site}-00000`` ... at ``site`` through ``client`` (two strata, alternately)."""
    today = datetime.now(UTC).date().isoformat()
    for i in range(count):
        body = {
            "screening_number": f"{site}-{i:05d}",
            "site": site,
            "screened_on": today,
            "strata": {"prior_ig": ("yes", "no")[i % 2]},
        }
        response = client.post("/api/v1/participants", headers=headers, json=body)
        if response.status_code != 201:
            raise SystemExit(f"screening {i} failed: {response.get_json()}")


def randomise_timed(
    client: Any, headers: dict[str, str], numbers: Iterable[int], site: str = "101"
) -> list[float]:
    """Randomise the participants ``screen_numbered`` made, timing each request."""
    times = []
    for i in numbers:
        started = time.perf_counter()
        response = client.post(
            f"/api/v1/participants/{site}-{i:05d}/randomize",
            headers=headers,
            json={"weight_kg": 30, "eligibility": ELIGIBLE},
        )
        times.append(time.perf_counter() - started)
        if response.status_code != 201:
            raise SystemExit(f"randomisation {i} failed: {response.get_json()}")
    return times


def peak_memory_mib() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which
    keeps the parent's peak across fork and exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(url: str, root: Path, participants: int) -> None:
    # 2 kits a participant (30 kg), all of one arm at worst, at one site.
    settings, database, tokens, kits_per_arm = demo_trial(url, root, 2 * participants)
    headers = {"Authorization": f"Bearer {tokens['coordinator-101']}"}
    client = create_app({"settings": settings, "database": database}).test_client()
    minimal = minimal_write_app(database).test_client()
    today = datetime.now(UTC).date().isoformat()

    # Warm up both paths (imports, caches, the first connection).
    minimal.post("/write")
    client.get("/api/v1/health")

    write_times = timed(lambda i: minimal.post("/write").status_code, participants)
    numbers: list[str] = []

    def screen(i: int) -> int:
        # No number sent: the service assigns the site's next one (101-0001, 101-0002, ...).
        response = client.post(
            "/api/v1/participants",
            headers=headers,
            json={
                "site": "101",
                "screened_on": today,
                "strata": {"prior_ig": ("yes", "no")[i % 2]},
            },
        )
        numbers.append(response.get_json()["screening_number"])
        return response.status_code

    screen_times = timed(screen, participants)
    # This process's CPU time (the service's own work; on PostgreSQL the server's is apart),
    # which a machine shared with other work disturbs far less than the wall-clock times.
    cpu_started = time.process_time()
    randomize_times = timed(
        lambda i: (
            client.post(
                f"/api/v1/participants/{numbers[i]}/randomize",
                headers=headers,
                json={"weight_kg": 30, "eligibility": ELIGIBLE},
            ).status_code
        ),
        participants,
    )
    randomize_cpu = (time.process_time() - cpu_started) / participants
    backend = database.dialect
    print(
        f"{backend}: {participants} participants at one site holding "
        f"{2 * kits_per_arm} kits; in-process test client, one thread"
    )
    report("minimal Flask write", write_times, None)
    report("POST /participants (assigned)", screen_times, write_times)
    report("POST .../randomize", randomize_times, write_times)
    print(f"{'':<34} CPU of this process: {randomize_cpu * 1e3:.2f} ms a randomisation (mean)")
    database.dispose()


if __name__ == "__main__":
    main()
