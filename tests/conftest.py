"""Shared fixtures.

Every storage test runs on SQLite, and on PostgreSQL when ``SEALROOM_TEST_DATABASE_URL``
names a server (``.ci/run`` sets it; with ``CI`` set, its absence is an error, not a skip).
Each backend gets a fresh database holding the initialised RECLAIIM demo (Appendix A's seed);
each test runs inside an outer transaction that is rolled back (warehouse's savepoint
pattern), so tests never see each other's changes. Concurrency tests build databases of their
own with :func:`make_trial_database`: audit rows cannot be deleted, so nothing is shared.

Hypothesis runs without deadlines: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from randomizer.config import Settings
from randomizer.db import Database, normalise_url
from randomizer.simulation import ELIGIBLE  # the answers meeting every RECLAIIM rule

#: Traceability for validation: the requirement markers and outcomes (make validation).
pytest_plugins = ["tests.validation.plugin"]

settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

APPENDIX_A_SEED = bytes(range(32))
PG_URL = os.environ.get("SEALROOM_TEST_DATABASE_URL")
IN_CI = bool(os.environ.get("CI"))
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI and not PG_URL:
        raise pytest.UsageError(
            "CI is set but SEALROOM_TEST_DATABASE_URL is not: CI must never go green "
            "without the PostgreSQL tests (.ci/run sets it)."
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, a run in which no PostgreSQL test passed is a failure."""
    if IN_CI and exitstatus == 0 and not _PG_TESTS_PASSED:
        session.exitstatus = 1
        print("\nCI: no PostgreSQL test ran; failing the run.")


_PG_TESTS_PASSED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A report hook, not an item hook: under pytest-xdist, reports reach the controller.
    if report.when == "call" and report.passed and "postgresql" in report.nodeid:
        _PG_TESTS_PASSED.append(report.nodeid)


# Databases --------------------------------------------------------------------------------


class Scratch:
    """Creates fresh databases for a test session and drops them at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.created: list[str] = []

    def new_url(self, backend: str) -> str:
        name = f"sealroom_test_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{self.directory / name}.db"
        admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        self.created.append(name)
        return (
            make_url(normalise_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
        )

    def drop_all(self) -> None:
        if not self.created:
            return
        admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in self.created:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    databases = Scratch(tmp_path_factory.mktemp("databases"))
    yield databases
    databases.drop_all()


@dataclass
class TrialDatabase:
    """A database initialised with the RECLAIIM demo, and what a test needs to use it."""

    backend: str
    url: str
    settings: Settings
    tokens: dict[str, str]
    kits_per_arm: int
    #: The demo users' web passwords, by user name.
    passwords: dict[str, str] = field(default_factory=dict)
    engine: Any = field(repr=False, default=None)

    def database(self) -> Database:
        return Database(self.url)


def make_trial_database(
    scratch: Scratch,
    backend: str,
    directory: Path,
    *,
    kits_per_arm: int | None = None,
    seed: bytes = APPENDIX_A_SEED,
    url: str | None = None,
) -> TrialDatabase:
    """A new database holding the initialised demo trial (keys in ``directory``).

    ``url`` names an empty database made elsewhere (a private cluster's); by default
    ``scratch`` makes one.
    """
    from randomizer.domain import bundled_trial_path, parse_trial
    from randomizer.services.demo import initialise_demo

    url = url or scratch.new_url(backend)
    settings = Settings.from_env(
        {}, database_url=url, instance_dir=directory, keys_dir=directory / "keys"
    )
    toml_text = bundled_trial_path().read_bytes().decode("utf-8")
    database = Database(url)
    demo = initialise_demo(
        database,
        settings.keys_dir,
        parse_trial(toml_text),
        toml_text,
        seed,
        kits_per_arm=kits_per_arm,
    )
    database.dispose()
    (directory / "tokens.json").write_text(json.dumps(demo.tokens))
    return TrialDatabase(
        backend=backend,
        url=url,
        settings=settings,
        tokens={t["user"]: t["token"] for t in demo.tokens},
        kits_per_arm=demo.kits_per_arm,
        passwords={t["user"]: t["password"] for t in demo.tokens},
    )


@pytest.fixture(scope="session", params=BACKENDS)
def trial_db(
    request: pytest.FixtureRequest, scratch: Scratch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrialDatabase]:
    """The shared demo database of one backend (tests never commit into it)."""
    trial = make_trial_database(scratch, request.param, tmp_path_factory.mktemp(request.param))
    trial.engine = Database(trial.url).engine
    yield trial
    trial.engine.dispose()


@pytest.fixture
def backend(trial_db: TrialDatabase) -> str:
    return trial_db.backend


@pytest.fixture
def db(trial_db: TrialDatabase) -> Iterator[Database]:
    """A Database whose every transaction is a savepoint of one rolled-back transaction."""
    connection = trial_db.engine.connect()
    outer = connection.begin()
    try:
        yield Database(trial_db.url, bind=connection)
    finally:
        outer.rollback()
        connection.close()


class Clock:
    """A clock the test can move; starts at the real current time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def today(self) -> date:
        return self.now.date()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctx(db: Database, trial_db: TrialDatabase, clock: Clock) -> Any:
    """The trial context (sealer, audit log) over the test's database."""
    from randomizer.services.context import load_trial_context

    with db.reading() as session:
        return load_trial_context(session, trial_db.settings.keys_dir, {}, clock=clock)


# HTTP -------------------------------------------------------------------------------------


class ApiClient:
    """The test client with the demo users' tokens and RECLAIIM helpers."""

    def __init__(self, client: Any, tokens: dict[str, str], clock: Clock) -> None:
        self.client = client
        self.tokens = tokens
        self.clock = clock

    def request(
        self,
        method: str,
        path: str,
        user: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        headers = dict(headers or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)

    def get(self, path: str, user: str | None = None, **kwargs: Any) -> Any:
        return self.request("GET", path, user, **kwargs)

    def post(self, path: str, user: str | None = None, **kwargs: Any) -> Any:
        return self.request("POST", path, user, **kwargs)

    def screen(
        self,
        screening_number: str,
        user: str = "coordinator-101",
        site: str = "101",
        prior_ig: str = "no",
        screened_on: date | None = None,
        **kwargs: Any,
    ) -> Any:
        body = {
            "screening_number": screening_number,
            "site": site,
            "screened_on": (screened_on or self.clock.today()).isoformat(),
            "strata": {"prior_ig": prior_ig},
        }
        return self.post("/participants", user, json=body, **kwargs)

    def randomize(
        self,
        screening_number: str,
        user: str = "coordinator-101",
        weight_kg: Any = 70,
        eligibility: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        body = {"weight_kg": weight_kg, "eligibility": eligibility or dict(ELIGIBLE)}
        return self.post(f"/participants/{screening_number}/randomize", user, json=body, **kwargs)

    def screen_and_randomize(self, screening_number: str, **kwargs: Any) -> Any:
        user = kwargs.pop("user", "coordinator-101")
        site = kwargs.pop("site", "101")
        screened = self.screen(
            screening_number, user=user, site=site, prior_ig=kwargs.pop("prior_ig", "no")
        )
        assert screened.status_code == 201, screened.get_json()
        return self.randomize(screening_number, user=user, **kwargs)


@pytest.fixture
def app(db: Database, trial_db: TrialDatabase, clock: Clock) -> Any:
    from randomizer import create_app

    return create_app(
        {"settings": trial_db.settings, "database": db, "clock": clock, "TESTING": True}
    )


@pytest.fixture
def api(app: Any, trial_db: TrialDatabase, clock: Clock) -> ApiClient:
    return ApiClient(app.test_client(), trial_db.tokens, clock)
