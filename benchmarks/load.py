"""Randomisations per second under gunicorn against a one-INSERT endpoint (issue 9, R-NF-4).

    .venv/bin/python benchmarks/load.py [--database-url URL] [--seconds S] [--rounds R]
                                        [--workers W] [--threads T] [--clients 1,8,32]
                                        [--no-sqlite] [--endpoint-selects K]
                                        [--sample-waits]

On SQLite (a file in a temporary directory) and, with --database-url, on a new database of
that PostgreSQL server (dropped afterwards): builds the demo trial, screens every
participant beforehand (in process, not timed), then starts two servers side by side under
the settings ``sealroom serve`` uses (``randomizer.serving.gunicorn_settings``):
  * ``sealroom serve --workers W --threads T`` itself;
  * a minimal Flask endpoint doing one INSERT in one transaction on the same database.
Closed-loop clients (1, 8 and 32 threads, each with its own keep-alive connection, each
sending its next request when the last is answered) drive each server for S seconds, in R
interleaved rounds (minimal, randomise, minimal, randomise, ... at every client count), so
a loaded machine weighs on both alike: read the ratios. Each randomisation is of a new
participant, at one of the three demo sites in turn, by that site's coordinator.
Prints throughput and p50/p95/p99 latency of each, and the ratios, and the CPU time a
request cost the server's processes and PostgreSQL's (read from /proc over each round): on
two shared cores the throughput follows the CPU a request costs, and that figure moves far
less than the rates when the machine is busy with other work. ``--endpoint-selects K``
makes the yardstick run K ``SELECT 1`` round trips before its INSERT (13 gives it a
randomisation's 17 statements): what the round trips alone cost. ``--sample-waits`` samples
``pg_stat_activity`` every 5 ms during the randomise rounds on PostgreSQL and prints how
many backends were, on average, in each state (waiting for which row lock, idle in a
transaction while their worker computes); the sampling costs the clients' process a little,
so quote throughput from runs without it. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from randomize import ELIGIBLE, demo_trial, minimal_write_app, scratch_database  # (sets path)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from randomizer import create_app
from randomizer.db import Database
from randomizer.serving import gunicorn_settings

_REPOSITORY = Path(__file__).resolve().parents[1]
SITES = ("101", "102", "201")
#: 30 kg: 2 kits a randomisation.
WEIGHT_KG = 30


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_minimal(url: str, port: int, workers: int, threads: int, selects: int) -> None:
    """(In a child process) the one-INSERT endpoint under gunicorn, with serve's settings."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            for name, value in gunicorn_settings("127.0.0.1", port, workers, threads).items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return minimal_write_app(Database(url), selects)

    Server().run()


def wait_until_up(port: int, path: str, method: str = "GET") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
            urllib.request.urlopen(request, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server on port {port} did not start")


class Participants:
    """The screened participants, handed out one at a time to the client threads."""

    def __init__(self, numbers: list[tuple[str, str]]) -> None:
        self._numbers = numbers
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[str, str] | None:
        with self._lock:
            if self._next >= len(self._numbers):
                return None
            self._next += 1
            return self._numbers[self._next - 1]

    def left(self) -> int:
        return len(self._numbers) - self._next


def drive(
    port: int,
    clients: int,
    seconds: float,
    request_for: Any,
) -> tuple[list[float], dict[str, int]]:
    """``clients`` closed-loop threads for ``seconds``: latencies of 2xx answers, failures
    by HTTP status (``"error"`` for a broken connection)."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        failed: dict[str, int] = {}
        start.wait()
        while time.perf_counter() < stop_at[0]:
            request = request_for()
            if request is None:
                break
            path, headers, body = request
            began = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                outcome = str(response.status)
                if response.status >= 300:
                    outcome += " " + problem_type(answer)
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                outcome = "error"
            if outcome.startswith("2"):
                mine.append(time.perf_counter() - began)
            else:
                failed[outcome] = failed.get(outcome, 0) + 1
        connection.close()
        with lock:
            latencies.extend(mine)
            for outcome, count in failed.items():
                failures[outcome] = failures.get(outcome, 0) + count

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    start.wait()
    for thread in threads:
        thread.join()
    return latencies, failures


#: What the randomisations' backends are doing: state, wait event, the statement's start.
_ACTIVITY = text(
    "SELECT state, wait_event_type, wait_event, left(query, 40) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend' AND state <> 'idle'"
)


class WaitSampler:
    """Samples ``pg_stat_activity`` every 5 ms while a round runs (``--sample-waits``): how
    many of the database's backends are, on average, in each state and wait, and on what
    statement when they wait for a lock."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.counts: Counter[tuple[str, ...]] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def _run(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.wait(0.005):
                self.samples += 1
                for state, kind, event, query in connection.execute(_ACTIVITY):
                    waiting_on = " ".join(query.split()) if kind == "Lock" else ""
                    self.counts[(state, f"{kind or ''} {event or ''}".strip(), waiting_on)] += 1


def stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (a gunicorn master and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(stat_fields(entry.name)[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def postgres_processes() -> list[int]:
    """Every PostgreSQL server process on this machine (its backends do the queries)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_times(pids: list[int]) -> dict[int, float]:
    """The user and system CPU time each of these processes has used, in seconds."""
    times = {}
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings: a process started between them counts from
    zero; one that ended between them is missed (PostgreSQL's backends live as long as
    the workers' pooled connections)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def problem_type(answer: bytes) -> str:
    """The last part of a problem detail's ``type`` (``stratum-exhausted``, ...), or ``?``."""
    try:
        return str(json.loads(answer).get("type", "?")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        return "?"


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run_backend(args: argparse.Namespace, url: str, root: Path) -> dict[str, Any]:
    per_site = args.participants // len(SITES) + 1
    # Every participant takes 2 kits of its arm at its site: stock for all in either arm.
    settings, database, tokens, _ = demo_trial(
        url, root, 2 * per_site + 10, slots_per_stratum=per_site + 10
    )
    backend = database.dialect
    client = create_app({"settings": settings, "database": database}).test_client()
    today = datetime.now(UTC).date().isoformat()
    numbers = []
    started = time.perf_counter()
    for i in range(per_site * len(SITES)):
        site = SITES[i % len(SITES)]
        number = f"{site}-{i:05d}"
        body = {
            "screening_number": number,
            "site": site,
            "screened_on": today,
            "strata": {"prior_ig": ("yes", "no")[(i // len(SITES)) % 2]},
        }
        headers = {"Authorization": f"Bearer {tokens[f'coordinator-{site}']}"}
        response = client.post("/api/v1/participants", headers=headers, json=body)
        assert response.status_code == 201, response.get_json()
        numbers.append((number, site))
    minimal_write_app(database)  # its table, before the workers race to create it
    database.dispose()
    print(
        f"{backend}: screened {len(numbers)} participants in {time.perf_counter() - started:.0f} s"
    )
    participants = Participants(numbers)
    body = json.dumps({"weight_kg": WEIGHT_KG, "eligibility": ELIGIBLE}).encode()

    def randomisation() -> tuple[str, dict[str, str], bytes] | None:
        taken = participants.take()
        if taken is None:
            return None
        number, site = taken
        headers = {
            "Authorization": f"Bearer {tokens[f'coordinator-{site}']}",
            "Content-Type": "application/json",
        }
        return f"/api/v1/participants/{number}/randomize", headers, body

    def write() -> tuple[str, dict[str, str], bytes]:
        return "/write", {"Content-Length": "0"}, b""

    environment = {
        **os.environ,
        "SEALROOM_DATABASE_URL": url,
        "SEALROOM_INSTANCE_DIR": str(root),
        "SEALROOM_KEYS_DIR": str(root / "keys"),
        "SEALROOM_LOG_LEVEL": "WARNING",
    }
    service_port, minimal_port = free_port(), free_port()
    common = ["--workers", str(args.workers), "--threads", str(args.threads)]
    minimal_options = [*common, "--endpoint-selects", str(args.endpoint_selects)]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "randomizer.cli", "serve", "--port", str(service_port), *common],
            env=environment,
            cwd=_REPOSITORY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--minimal-server",
                url,
                str(minimal_port),
                *minimal_options,
            ],
            env=environment,
            cwd=_REPOSITORY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def database() -> list[int]:
        return postgres_processes() if backend == "postgresql" else []

    try:
        wait_until_up(service_port, "/api/v1/health")
        wait_until_up(minimal_port, "/write", "POST")
        # Warm up every worker of each (imports, connections; the service's first look at
        # each site's kits, which reads and unseals them once per process).
        drive(minimal_port, 2 * args.workers, 1.0, write)
        drive(service_port, 2 * args.workers, 2.0, randomisation)
        for _round in range(args.rounds):
            for clients in args.clients:
                for name, port, request_for in (
                    ("minimal", minimal_port, write),
                    ("randomise", service_port, randomisation),
                ):
                    server = servers[0 if name == "randomise" else 1].pid
                    before = cpu_times(process_tree(server)), cpu_times(database())
                    sampled = args.sample_waits and name == "randomise" and backend == "postgresql"
                    with WaitSampler(url) if sampled else contextlib.nullcontext() as sampler:
                        latencies, failures = drive(port, clients, args.seconds, request_for)
                    cpu = (
                        cpu_used(before[0], cpu_times(process_tree(server))),
                        cpu_used(before[1], cpu_times(database())),
                    )
                    result = results.setdefault(
                        (name, clients),
                        {"latencies": [], "failures": {}, "seconds": 0.0, "cpu": [0.0, 0.0]},
                    )
                    result["cpu"][0] += cpu[0]
                    result["cpu"][1] += cpu[1]
                    result["latencies"].extend(latencies)
                    for outcome, count in failures.items():
                        result["failures"][outcome] = result["failures"].get(outcome, 0) + count
                    result["seconds"] += args.seconds
                    if sampler is not None:
                        result.setdefault("waits", Counter()).update(sampler.counts)
                        result["samples"] = result.get("samples", 0) + sampler.samples
        if participants.left() == 0:
            print("WARNING: the screened participants ran out: raise --participants")
        refused = sum(
            count
            for (name, _clients), result in results.items()
            if name == "randomise"
            for count in result["failures"].values()
        )
        if refused:
            print(f"WARNING: {refused} randomisations failed: the figures do not measure them")
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(30)
    return {"backend": backend, "results": results}


def report(args: argparse.Namespace, run: dict[str, Any]) -> None:
    print(
        f"\n{run['backend']}: gunicorn, {args.workers} workers x {args.threads} threads "
        f"(sealroom serve's settings), {args.rounds} interleaved rounds of {args.seconds:g} s"
        + (
            f"; the endpoint runs {args.endpoint_selects} SELECT 1 before its INSERT"
            if args.endpoint_selects
            else ""
        )
    )
    print(
        f"{'clients':>7}  {'endpoint':<10} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8}  {'CPU ms/req':>15}  failed (by status)"
    )
    for clients in args.clients:
        row = {}
        for name in ("minimal", "randomise"):
            result = run["results"][(name, clients)]
            ordered = sorted(result["latencies"])
            if not ordered:  # the warm-up or an earlier round used every participant
                raise SystemExit(f"no {name} answer at {clients} clients: raise --participants")
            rate = len(ordered) / result["seconds"]
            p50, p95, p99 = (percentile(ordered, f) * 1e3 for f in (0.5, 0.95, 0.99))
            failures = sorted(result["failures"].items())
            failed = ", ".join(f"{n} x {status}" for status, n in failures)
            served, database = (1e3 * seconds / max(1, len(ordered)) for seconds in result["cpu"])
            row[name] = (rate, p99, served + database)
            print(
                f"{clients:>7}  {name:<10} {rate:7.1f} {p50:8.1f} {p95:8.1f} {p99:8.1f}  "
                f"{served:6.2f} + {database:5.2f} db  {failed or 'none'}"
            )
        randomised = run["results"][("randomise", clients)]
        if randomised.get("waits"):
            waits, samples = randomised["waits"], randomised["samples"]
            print(f"{'':>7}  randomise backends on average, {samples} samples of pg_stat_activity:")
            for (state, event, query), count in waits.most_common(6):
                on = f" on {query}" if query else ""
                print(f"{'':>9}{count / samples:5.2f}  {state}{f', {event}' if event else ''}{on}")
        (minimal_rate, minimal_p99, minimal_cpu) = row["minimal"]
        (rate, p99, cpu) = row["randomise"]
        print(
            f"{'':>7}  ratio: randomise throughput x{rate / minimal_rate:.2f} the one-INSERT "
            f"endpoint's, p99 x{p99 / minimal_p99:.1f}, CPU a request x{cpu / minimal_cpu:.1f}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--minimal-server":
        url, port = sys.argv[2], int(sys.argv[3])
        workers, threads, selects = int(sys.argv[5]), int(sys.argv[7]), int(sys.argv[9])
        serve_minimal(url, port, workers, threads, selects)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="also a PostgreSQL server URL")
    parser.add_argument(
        "--no-sqlite", action="store_true", help="only the PostgreSQL server's figures"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--participants", type=int, default=3000)
    parser.add_argument(
        "--clients", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8, 32]
    )
    parser.add_argument(
        "--sample-waits",
        action="store_true",
        help="on PostgreSQL, sample pg_stat_activity every 5 ms during the randomise rounds",
    )
    parser.add_argument(
        "--endpoint-selects",
        type=int,
        default=0,
        metavar="K",
        help="the yardstick first runs K 'SELECT 1' round trips in its transaction (13: as"
        " many statements as a randomisation, 17)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    runs = []
    servers = ([] if args.no_sqlite else [None]) + (
        [args.database_url] if args.database_url else []
    )
    for server in servers:
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            with scratch_database(server, root) as url:
                runs.append(run_backend(args, url, root))
    for run in runs:
        report(args, run)
    if 1 not in args.clients:
        return
    medians = {
        run["backend"]: statistics.median(run["results"][("randomise", 1)]["latencies"])
        for run in runs
    }
    print(
        "\none client, median randomisation: "
        + ", ".join(f"{backend} {median * 1e3:.1f} ms" for backend, median in medians.items())
    )


if __name__ == "__main__":
    main()
