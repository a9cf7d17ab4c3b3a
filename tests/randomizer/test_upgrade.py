"""Upgrading a running deployment's schema: ``sealroom db upgrade`` (R-NF-2, R-CLI).

The main test builds a database with the code of the landed revision itself (taken from this
checkout's git history and run in a subprocess of its own), lets that code screen and
randomise, then upgrades with this code and checks that nothing was lost and that this code
serves what the old one wrote. The others check the refusals: a schema newer than the code
(unknown revision) is never touched, and the service does not start on a schema older than
its code. Migration 0003's status checks are held on both backends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import Connection, insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from audit.checkpoint import verifier_key_from_private
from keys import load_signing_key
from randomizer import create_app
from randomizer.cli import main
from randomizer.config import Settings
from randomizer.db import make_engine
from randomizer.domain import bundled_trial_path, parse_trial
from randomizer.domain.kits import KIT_STATUSES
from randomizer.domain.participants import PARTICIPANT_STATUSES, SITE_STATUSES
from randomizer.migrations import SchemaMismatch, alembic_config, head_revision
from randomizer.models import Base, Kit, Participant, Site
from tests.conftest import APPENDIX_A_SEED, BACKENDS, ELIGIBLE, IN_CI

REPO = Path(__file__).resolve().parents[2]
#: The revision that landed before migration 0003: its schema is at revision 0002.
LANDED_REVISION = "d46e5e1965443cfabb5a141c682fea1311d8d63c"
LANDED_SCHEMA = "0002"
#: The code's own revision.
HEAD = head_revision()
SEED = APPENDIX_A_SEED.hex()
#: Tables the landed code must have written rows to (every table is compared, these too).
KEPT_TABLES = ("participant", "kit", "slot", "site", "user_account", "audit_entry")

# Run by the landed code: screen three participants (one at each demo site), randomise two of
# them (the first with an Idempotency-Key), read them back; print what it was answered.
OLD_CLIENT = """
import json, os, sys
from datetime import UTC, datetime

import randomizer
from randomizer import create_app

eligible = json.loads(sys.argv[1])
with open(os.path.join(os.environ["SEALROOM_INSTANCE_DIR"], "tokens.json")) as handle:
    tokens = {t["user"]: t["token"] for t in json.load(handle)}
app = create_app({"TESTING": True})
client = app.test_client()
today = datetime.now(UTC).date().isoformat()
out = {"randomizer": randomizer.__file__, "screened": {}, "randomized": {}, "read": {}}

def call(method, path, user, body=None, key=None):
    headers = {"Authorization": "Bearer " + tokens[user]}
    if key:
        headers["Idempotency-Key"] = key
    response = client.open("/api/v1" + path, method=method, headers=headers, json=body)
    return {"status": response.status_code, "body": response.get_json()}

for number, site, prior_ig in (("OLD-0001", "101", "no"), ("OLD-0002", "201", "yes"),
                               ("OLD-0003", "102", "no")):
    user = "coordinator-" + site
    body = {"screening_number": number, "site": site, "screened_on": today,
            "strata": {"prior_ig": prior_ig}}
    out["screened"][number] = call("POST", "/participants", user, body)
for number, user, key in (("OLD-0001", "coordinator-101", "old-key-1"),
                          ("OLD-0002", "coordinator-201", None)):
    body = {"weight_kg": 70, "eligibility": eligible}
    out["randomized"][number] = call(
        "POST", "/participants/" + number + "/randomize", user, body, key
    )
for number, user in (("OLD-0001", "coordinator-101"), ("OLD-0002", "coordinator-201"),
                     ("OLD-0003", "coordinator-102")):
    out["read"][number] = call("GET", "/participants/" + number, user)
print(json.dumps(out))
"""

MODULES = "import json, audit, keys, randomizer, randomizer.cli; " + (
    "print(json.dumps([m.__file__ for m in (audit, keys, randomizer, randomizer.cli)]))"
)


# The landed revision's code ----------------------------------------------------------------


def unavailable(reason: str) -> None:
    """In CI the landed revision must be there; elsewhere (a shallow copy) skip."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def landed_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The landed revision's randomizer, keys and audit packages, extracted from git."""
    git = shutil.which("git")
    if git is None:
        unavailable("git is not installed: cannot extract the landed revision")
    found = subprocess.run(
        [git, "-C", str(REPO), "cat-file", "-e", f"{LANDED_REVISION}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        unavailable(
            f"commit {LANDED_REVISION} is not reachable from {REPO} (a shallow clone?): "
            f"{found.stderr.strip()}"
        )
    directory = tmp_path_factory.mktemp("landed-code")
    archive = subprocess.run(
        [git, "-C", str(REPO), "archive", LANDED_REVISION, "randomizer", "keys", "audit"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    assert (directory / "randomizer/migrations/versions/0002_refuse_replace_on_sqlite.py").is_file()
    assert not (
        directory / "randomizer/migrations/versions/0003_outbox_site_status_checks.py"
    ).exists()
    return directory


def old_environment(code: Path, url: str, instance: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEALROOM_")}
    environment.pop("PYTHONSAFEPATH", None)  # it would drop the working directory from sys.path
    environment.update(
        PYTHONPATH=str(code),
        SEALROOM_DATABASE_URL=url,
        SEALROOM_INSTANCE_DIR=str(instance),
        SEALROOM_KEYS_DIR=str(instance / "keys"),
    )
    return environment


def run_old(code: Path, environment: dict[str, str], *args: str) -> str:
    """``python <args>`` with the landed code first on the path; its standard output."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=code,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


# This code ---------------------------------------------------------------------------------


def sealroom(url: str, instance: Path, *args: str) -> Any:
    """This code's ``sealroom --database-url <url> <args>``, in process."""
    environment = {
        "SEALROOM_INSTANCE_DIR": str(instance),
        "SEALROOM_DATABASE_URL": None,
        "SEALROOM_KEYS_DIR": str(instance / "keys"),
        "SEALROOM_MASTER_KEY": None,
    }
    return CliRunner().invoke(main, ["--database-url", url, *args], env=environment)


def settings_for(url: str, instance: Path) -> Settings:
    return Settings.from_env(
        {}, database_url=url, instance_dir=instance, keys_dir=instance / "keys"
    )


def verifier_key_line(instance: Path) -> str:
    origin = parse_trial(bundled_trial_path().read_text(encoding="utf-8")).audit_origin
    return verifier_key_from_private(origin, load_signing_key(instance / "keys")).line()


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, Any]:
    """Every table's columns and rows (sorted), and the schema revision."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = {}
            for name in sorted(inspect(connection).get_table_names()):
                result = connection.execute(text(f'SELECT * FROM "{name}"'))
                rows = [dict(row._mapping) for row in result]
                tables[name] = sorted(rows, key=repr)
            return tables
    finally:
        engine.dispose()


def columns(url: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    try:
        found = inspect(engine)
        return {
            table: sorted(c["name"] for c in found.get_columns(table))
            for table in sorted(found.get_table_names())
        }
    finally:
        engine.dispose()


class NewClient:
    """This code's app over a real database, with the demo's tokens."""

    def __init__(self, url: str, instance: Path) -> None:
        self.app = create_app({"settings": settings_for(url, instance), "TESTING": True})
        self.client = self.app.test_client()
        tokens = json.loads((instance / "tokens.json").read_text())
        self.tokens = {t["user"]: t["token"] for t in tokens}

    def call(self, method: str, path: str, user: str, body: Any = None, key: str | None = None):
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        if key:
            headers["Idempotency-Key"] = key
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, json=body)

    def close(self) -> None:
        self.app.extensions["sealroom"].db.dispose()


# The landed revision's database ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.requirement("R-NF-2")
@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_made_by_the_landed_revision_upgrades_keeping_every_row(
    landed_code, scratch, tmp_path, backend
):
    url, instance = scratch.new_url(backend), tmp_path / "instance"
    environment = old_environment(landed_code, url, instance)

    # The landed code, not this checkout's, is what the subprocesses import.
    imported = json.loads(run_old(landed_code, environment, "-c", MODULES))
    assert all(Path(path).is_relative_to(landed_code) for path in imported), imported
    run_old(landed_code, environment, "-m", "randomizer.cli", "init-demo", "--seed", SEED)
    old = json.loads(run_old(landed_code, environment, "-c", OLD_CLIENT, json.dumps(ELIGIBLE)))
    assert Path(old["randomizer"]).is_relative_to(landed_code)
    assert {n: r["status"] for n, r in old["screened"].items()} == dict.fromkeys(old["read"], 201)
    assert {n: r["status"] for n, r in old["randomized"].items()} == {
        "OLD-0001": 201,
        "OLD-0002": 201,
    }
    assert revision(url) == LANDED_SCHEMA
    # Before the upgrade this code reports the old revision and will not serve it.
    assert f"database: 0002; code: {HEAD}" in sealroom(url, instance, "db", "revision").output
    with pytest.raises(SchemaMismatch, match="run `sealroom db upgrade`"):
        create_app({"settings": settings_for(url, instance), "TESTING": True})
    before = snapshot(url)

    upgraded = sealroom(url, instance, "db", "upgrade")

    assert upgraded.exit_code == 0, upgraded.output
    assert f"Schema upgraded from revision 0002 to {HEAD}." in upgraded.output
    assert revision(url) == HEAD
    after = snapshot(url)
    # The tables the later migrations add (the outbox, unblindings, corrections, ...) are
    # there, and empty: the old data holds none of what they record.
    added = set(after) - set(before)
    assert added == set(Base.metadata.tables) - set(before)
    assert {"outbox_message", "unblinding"} <= added
    assert all(after[table] == [] for table in added)
    for table, rows in before.items():
        # Every row is still there, every old column as it was.
        if table != "alembic_version":
            names = list(rows[0]) if rows else []
            kept = sorted(({k: row[k] for k in names} for row in after[table]), key=repr)
            assert kept == rows, table
    for table in KEPT_TABLES:
        assert before[table], f"the landed code wrote no {table} row"
    assert {(s["id"], s["status"], s["closed_at"]) for s in after["site"]} == {
        ("101", "open", None),
        ("102", "open", None),
        ("201", "open", None),
    }
    # The old audit trail verifies with this code and the log's own key, given out of band.
    key = verifier_key_line(instance)
    verified = sealroom(url, instance, "audit", "verify", "--verifier-key", key)
    assert verified.exit_code == 0, verified.output

    client = NewClient(url, instance)
    try:
        # It serves what the old code wrote, as the old code served it.
        for number, answer in old["read"].items():
            user = f"coordinator-{answer['body']['site']}"
            read = client.call("GET", f"/participants/{number}", user)
            assert read.status_code == 200, read.get_json()
            assert {k: read.get_json()[k] for k in answer["body"]} == answer["body"]
        # A retry of an old idempotent randomisation replays the old answer.
        body = {"weight_kg": 70, "eligibility": ELIGIBLE}
        retry = client.call(
            "POST", "/participants/OLD-0001/randomize", "coordinator-101", body, "old-key-1"
        )
        assert retry.status_code == 201
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.get_json() == old["randomized"]["OLD-0001"]["body"]
        # It randomises the participant the old code screened, and a new one.
        carried = client.call("POST", "/participants/OLD-0003/randomize", "coordinator-102", body)
        assert carried.status_code == 201, carried.get_json()
        today = datetime.now(UTC).date().isoformat()
        screening = {
            "screening_number": "NEW-0001",
            "site": "201",
            "screened_on": today,
            "strata": {"prior_ig": "yes"},
        }
        # The old definition has no number pattern: a new number is sent, with the site's
        # prefix (old numbers such as OLD-0001 stay as they are).
        refused = client.call("POST", "/participants", "coordinator-201", screening)
        assert refused.status_code == 422, refused.get_json()
        assert list(refused.get_json()["errors"]) == ["screening_number"]
        screening["screening_number"] = "201-NEW-0001"
        assert client.call("POST", "/participants", "coordinator-201", screening).status_code == 201
        fresh = client.call("POST", "/participants/201-NEW-0001/randomize", "coordinator-201", body)
        assert fresh.status_code == 201, fresh.get_json()
    finally:
        client.close()
    # Each takes the next slot of the stratum whose first slot the old code gave.
    for first, then in (("OLD-0001", carried), ("OLD-0002", fresh)):
        given = old["randomized"][first]["body"]
        assert given["randomization_number"].endswith("-0001")
        assert then.get_json()["stratum"] == given["stratum"]
        assert then.get_json()["randomization_number"] == given["randomization_number"][:-1] + "2"
        assert then.get_json()["kits"]
    # Old entries and new ones verify as one log.
    verified = sealroom(url, instance, "audit", "verify", "--verifier-key", key)
    assert verified.exit_code == 0, verified.output
    assert "checkpoints verified" in verified.output

    again = sealroom(url, instance, "db", "upgrade")

    assert again.exit_code == 0, again.output
    assert f"already at revision {HEAD}" in again.output
    assert revision(url) == HEAD


# Refusals ----------------------------------------------------------------------------------


def demo_at_landed_schema(scratch, backend: str, instance: Path) -> str:
    """A demo database made by this code, then migrated back down to revision 0002."""
    url = scratch.new_url(backend)
    created = sealroom(url, instance, "init-demo", "--seed", SEED)
    assert created.exit_code == 0, created.output
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), LANDED_SCHEMA)
    finally:
        engine.dispose()
    assert revision(url) == LANDED_SCHEMA
    return url


@pytest.fixture
def no_server(monkeypatch) -> None:
    """``sealroom serve`` fails the test instead of starting gunicorn (and hanging it)."""
    from gunicorn.app.base import BaseApplication

    def run(self: Any) -> None:
        raise AssertionError("sealroom serve started a server on a schema it should refuse")

    monkeypatch.setattr(BaseApplication, "run", run)


def stamp(url: str, version: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})
    finally:
        engine.dispose()


@pytest.mark.requirement("R-NF-2")
@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
def test_db_upgrade_refuses_a_schema_of_an_unknown_revision_and_changes_nothing(
    scratch, tmp_path, backend
):
    instance = tmp_path / "instance"
    url = demo_at_landed_schema(scratch, backend, instance)
    stamp(url, "9999")
    schema, rows = columns(url), snapshot(url)

    result = sealroom(url, instance, "db", "upgrade")

    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ")
    assert "revision 9999, which this code does not know" in result.output
    assert "newer Sealroom" in result.output
    assert "Traceback" not in result.output
    # Not one step of 0003 was applied to it: no outbox, no site status.
    assert columns(url) == schema
    assert "outbox_message" not in schema and "status" not in schema["site"]
    assert snapshot(url) == rows
    assert revision(url) == "9999"
    shown = sealroom(url, instance, "db", "revision")
    assert f"database: 9999; code: {HEAD}" in shown.output


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_service_refuses_a_schema_of_an_unknown_revision(scratch, tmp_path, backend, no_server):
    instance = tmp_path / "instance"
    url = scratch.new_url(backend)
    assert sealroom(url, instance, "init-demo", "--seed", SEED).exit_code == 0
    stamp(url, "9999")

    with pytest.raises(SchemaMismatch, match="revision 9999, which this code does not know"):
        create_app({"settings": settings_for(url, instance), "TESTING": True})
    served = sealroom(url, instance, "serve", "--port", "1")

    assert served.exit_code == 1, served.output
    assert "newer Sealroom" in served.output


@pytest.mark.requirement("R-NF-2")
@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_service_refuses_a_schema_older_than_its_code_until_db_upgrade(
    scratch, tmp_path, backend, no_server
):
    instance = tmp_path / "instance"
    url = demo_at_landed_schema(scratch, backend, instance)

    with pytest.raises(SchemaMismatch) as refused:
        create_app({"settings": settings_for(url, instance), "TESTING": True})
    served = sealroom(url, instance, "serve", "--port", "1")

    message = f"the database's schema is at revision 0002, the code's at {HEAD}"
    assert message in str(refused.value) and "run `sealroom db upgrade`" in str(refused.value)
    assert served.exit_code == 1, served.output
    assert f"error: {message}: run `sealroom db upgrade` first" in served.output
    assert revision(url) == LANDED_SCHEMA

    assert sealroom(url, instance, "db", "upgrade").exit_code == 0
    app = create_app({"settings": settings_for(url, instance), "TESTING": True})
    app.extensions["sealroom"].db.dispose()


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    "command",
    [
        ("sites", "add", "301", "--attr", "region=europe"),
        ("sites", "close", "101"),
        ("users", "add", "--role", "auditor", "late-auditor"),
        ("audit", "export", "--out", "never.jsonl"),
    ],
    ids=["sites add", "sites close", "users add", "audit export"],
)
def test_commands_refuse_a_schema_older_than_their_code_with_a_clear_error(
    scratch, tmp_path, backend, command
):
    instance = tmp_path / "instance"
    url = demo_at_landed_schema(scratch, backend, instance)

    result = sealroom(url, instance, *command)

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "run `sealroom db upgrade` first" in result.output
    assert revision(url) == LANDED_SCHEMA


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_service_refuses_a_database_without_a_schema(scratch, tmp_path, backend):
    url = scratch.new_url(backend)

    with pytest.raises(SchemaMismatch, match="run `sealroom init`"):
        create_app({"settings": settings_for(url, tmp_path), "TESTING": True})


# Migration 0003's status checks ------------------------------------------------------------


@pytest.fixture
def connection(trial_db) -> Iterator[Connection]:
    """A connection to the backend's demo database inside a transaction that is rolled back."""
    with trial_db.engine.connect() as connection:
        outer = connection.begin()
        try:
            yield connection
        finally:
            outer.rollback()


def refused(connection: Connection, statement: Any, constraint: str) -> None:
    """The statement fails on the named CHECK constraint (or trigger); the transaction goes on."""
    with pytest.raises(IntegrityError) as error, connection.begin_nested():
        connection.execute(statement)
    assert constraint in str(error.value)


def accepted(connection: Connection, statement: Any) -> None:
    with connection.begin_nested():
        assert connection.execute(statement).rowcount == 1


def a_participant(status: str = "screened") -> Any:
    return insert(Participant).values(
        screening_number=f"101-CK-{status}"[:32],
        site_id="101",
        status=status,
        screened_on=date(2026, 1, 5),
        screening_strata={"prior_ig": "no"},
        unblinded=False,
    )


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("bogus", ["bogus", "", "Screened", "randomised"])
def test_the_database_refuses_a_participant_status_outside_urs_8(connection, bogus):
    connection.execute(a_participant())
    participant = Participant.screening_number == "101-CK-screened"

    refused(connection, a_participant(bogus), "ck_participant_status")
    refused(
        connection,
        update(Participant).where(participant).values(status=bogus),
        "ck_participant_status",
    )
    for status in PARTICIPANT_STATUSES:
        accepted(connection, update(Participant).where(participant).values(status=status))


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("bogus", ["bogus", "", "Available", "destroyed"])
def test_the_database_refuses_a_kit_status_outside_urs_4(connection, bogus):
    kit = connection.execute(Kit.__table__.select().limit(1)).one()._asdict()
    copy = {**kit, "id": "00000000-0000-4000-8000-000000000001", "kit_number": "CK-0001"}

    refused(connection, insert(Kit).values({**copy, "status": bogus}), "ck_kit_status")
    refused(
        connection, update(Kit).where(Kit.id == kit["id"]).values(status=bogus), "ck_kit_status"
    )
    for status in KIT_STATUSES:
        accepted(connection, update(Kit).where(Kit.id == kit["id"]).values(status=status))


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("bogus", ["bogus", "", "Open", "reopened"])
def test_the_database_refuses_a_site_status_other_than_open_or_closed(connection, bogus):
    site = {"id": "CK1", "name": "Check site", "attributes": {"region": "europe"}}

    refused(connection, insert(Site).values({**site, "status": bogus}), "ck_site_status")
    refused(connection, update(Site).where(Site.id == "101").values(status=bogus), "ck_site_status")
    for status in SITE_STATUSES:
        accepted(connection, update(Site).where(Site.id == "101").values(status=status))
    # A site inserted without a status is open (the column's server default, as after 0003).
    connection.execute(
        text("INSERT INTO site (id, name, attributes) VALUES ('CK1', 'Check', '{}')")
    )
    assert connection.scalar(select(Site.status).where(Site.id == "CK1")) == "open"
