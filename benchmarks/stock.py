"""A randomisation's cost against the stock of its site: 600, 6,000 and 60,000 kits (issue 9).

    .venv/bin/python benchmarks/stock.py [--per-round N] [--rounds R] [--database-url URL]

Builds one demo trial per stock size (SQLite files in a temporary directory, or new
databases on the PostgreSQL server of --database-url, dropped afterwards) whose site 101
holds that many kits, and screens every participant beforehand. Then, in interleaved
rounds, a fresh process per (round, size) serves N randomisations at site 101 through
Flask's test client (no network) and reports their times and its peak memory (maxrss).
A process's first randomisation at a site reads and unseals every kit there once; it is
reported apart, and the median is of the others. Prints the median per size, its ratio to
600 kits, and the peak memory of the serving process. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from randomize import (  # (sets sys.path)
    demo_trial,
    peak_memory_mib,
    randomise_timed,
    scratch_database,
    screen_numbered,
)

from randomizer import create_app
from randomizer.config import Settings
from randomizer.models import Site
from randomizer.roles import Actor
from randomizer.services import kits as kit_service
from randomizer.services.context import load_trial_context

SIZES = (600, 6_000, 60_000)
SITE = "101"


def build(url: str, root: Path, kits: int, participants: int) -> dict[str, str]:
    """A demo trial whose site 101 holds ``kits`` kits; ``participants`` screened there."""
    settings, database, tokens, per_arm = demo_trial(url, root, 300)
    extra = kits // 2 - per_arm
    if extra > 0:
        with database.transaction() as session:
            ctx = load_trial_context(session, settings.keys_dir, {})
            site = session.get_one(Site, SITE)
            expiry = ctx.today() + timedelta(days=730)
            system = Actor(name="system", role="admin", site=None)
            kit_service.stock_site(session, ctx, system, site, extra, "BENCH-LOT", expiry)
    client = create_app({"settings": settings, "database": database}).test_client()
    headers = {"Authorization": f"Bearer {tokens['coordinator-101']}"}
    screen_numbered(client, headers, participants, SITE)
    database.dispose()
    return {"url": url, "root": str(root), "token": tokens["coordinator-101"]}


def serve(spec: dict[str, str], first: int, count: int) -> None:
    """(In a fresh process) randomise participants first..first+count-1; print JSON."""
    root = Path(spec["root"])
    settings = Settings.from_env(
        {},
        database_url=spec["url"],
        instance_dir=root,
        keys_dir=root / "keys",
        log_level="WARNING",
    )
    app = create_app({"settings": settings})
    client = app.test_client()
    headers = {"Authorization": f"Bearer {spec['token']}"}
    client.get("/api/v1/health")
    times = randomise_timed(client, headers, range(first, first + count), SITE)
    app.extensions["sealroom"].db.dispose()
    print(json.dumps({"times": times, "maxrss_mib": peak_memory_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-round", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        spec = json.loads(args.serve)
        serve(spec, int(spec["first"]), int(spec["count"]))
        return

    logging.basicConfig(level=logging.WARNING)  # before create_app's: no INFO lines
    participants = args.rounds * args.per_round
    with tempfile.TemporaryDirectory() as directory:
        specs = {}
        contexts = []
        try:
            for kits in SIZES:
                root = Path(directory) / str(kits)
                root.mkdir()
                context = scratch_database(args.database_url, root)
                url = context.__enter__()
                contexts.append(context)
                started = time.perf_counter()
                specs[kits] = build(url, root, kits, participants)
                print(f"built: {kits} kits at site 101 in {time.perf_counter() - started:.0f} s")
            results: dict[int, dict[str, list[float]]] = {
                kits: {"first": [], "rest": [], "maxrss": []} for kits in SIZES
            }
            for round_ in range(args.rounds):
                for kits in SIZES:
                    spec = {
                        **specs[kits],
                        "first": str(round_ * args.per_round),
                        "count": str(args.per_round),
                    }
                    out = subprocess.run(
                        [sys.executable, __file__, "--serve", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    answer = json.loads(out.strip().splitlines()[-1])
                    results[kits]["first"].append(answer["times"][0])
                    results[kits]["rest"].extend(answer["times"][1:])
                    results[kits]["maxrss"].append(answer["maxrss_mib"])
        finally:
            for context in reversed(contexts):
                context.__exit__(None, None, None)

    backend = "postgresql" if args.database_url else "sqlite"
    print(
        f"{backend}: randomisations at one site, in process (test client), "
        f"{args.rounds} interleaved rounds of {args.per_round} per stock size, "
        "a fresh process per round"
    )
    base = statistics.median(results[SIZES[0]]["rest"])
    for kits in SIZES:
        rest = results[kits]["rest"]
        median = statistics.median(rest)
        first = statistics.median(results[kits]["first"])
        print(
            f"{kits:>7,} kits  median {median * 1e3:6.2f} ms  x{median / base:4.2f} of 600 kits"
            f"  | first in a process {first * 1e3:7.1f} ms"
            f"  | peak memory of the process {max(results[kits]['maxrss']):6.1f} MiB"
        )


if __name__ == "__main__":
    main()
