"""Setting up a real trial from the command line: ``init``, ``sites add``, ``sites close``.

``sealroom init`` creates the schema, keys, the trial and its sealed lists and nothing else;
sites are added one by one with the levels of the site-derived factors and may be closed.
A closed site screens and randomises no one, over HTTP too. ``init-demo --keep-existing``
leaves a database that holds a trial as it is. Each command runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from randomizer import create_app, roles
from randomizer.config import Settings
from randomizer.db import Database, make_engine
from randomizer.domain import bundled_trial_path, definition_commitment, parse_trial
from randomizer.migrations import head_revision
from randomizer.models import (
    ApiToken,
    AuditEntry,
    Kit,
    Participant,
    Site,
    Slot,
    Stratum,
    Trial,
    User,
)
from randomizer.services.trial_setup import close_site
from randomizer.simulation import ELIGIBLE
from tests.conftest import BACKENDS, make_trial_database
from tests.randomizer.test_cli import (
    APPENDIX_A,
    HEX_64,
    LETTER,
    SEED,
    WRONG_SEED,
    Instance,
    mode,
    new_instance,
    snapshot,
)

TRIAL_FILE = str(bundled_trial_path())
DEFINITION_TEXT = bundled_trial_path().read_bytes().decode("utf-8")
DEFINITION = parse_trial(DEFINITION_TEXT)
REGIONS = ("north_america", "europe", "rest_of_world")


def seed_file(directory: Path, seed: str = SEED, file_mode: int = 0o600) -> Path:
    """The statistician's seed file, outside the instance directory."""
    path = directory / "seed.hex"
    path.write_text(seed + "\n", encoding="ascii")
    path.chmod(file_mode)
    return path


def init(instance: Instance, seed: Path) -> Any:
    return instance.run("init", "--trial", TRIAL_FILE, "--seed-file", str(seed))


def count(session: Session, model: Any) -> int:
    return session.scalar(select(func.count()).select_from(model))


def verifier_key(instance: Instance) -> str:
    from audit.checkpoint import verifier_key_from_private
    from keys import load_signing_key

    signing_key = load_signing_key(instance.keys_dir)
    return verifier_key_from_private(DEFINITION.audit_origin, signing_key).line()


# init --------------------------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("backend", BACKENDS)
def test_init_creates_the_trial_and_its_lists_and_no_site_kit_or_user(scratch, tmp_path, backend):
    instance = new_instance(scratch, backend, tmp_path)

    result = init(instance, seed_file(tmp_path))

    assert result.exit_code == 0, result.output
    assert "no sites, kits or users yet" in result.output
    assert SEED not in result.output and not HEX_64.search(result.output)
    with instance.session() as session:
        (trial,) = session.scalars(select(Trial)).all()
        assert trial.id == DEFINITION.id
        commitment = trial.seed_commitment
        assert count(session, Stratum) == len(DEFINITION.strata())
        slots = count(session, Slot)
        assert slots >= len(DEFINITION.strata())
        for model in (Site, Kit, User, ApiToken, Participant):
            assert count(session, model) == 0, model.__tablename__
    assert f"{len(DEFINITION.strata())} strata, {slots} slots" in result.output
    # One entry: trial.initialised, by system, committing to the seed without it.
    (entry,) = [json.loads(canonical) for canonical in instance.log()]
    assert (entry["seq"], entry["action"], entry["actor"]) == (0, "trial.initialised", "system")
    assert entry["subject"] == DEFINITION.id
    # Nothing a blinded auditor could confirm block sizes with: no slot count, no plain
    # hash of the definition, only a commitment keyed by the (secret) seed.
    assert "slots" not in entry["data"] and "definition_sha256" not in entry["data"]
    assert entry["data"]["definition_commitment"] == definition_commitment(
        bytes.fromhex(SEED), DEFINITION_TEXT
    )
    assert entry["data"]["seed_commitment"] == commitment
    assert SEED not in json.dumps(entry)
    # Keys 0700/0600, the schema at head, a log that verifies against its own key.
    assert mode(instance.keys_dir) == 0o700
    for path in instance.keys_dir.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert f"code: {head_revision()}" in instance.run("db", "revision").output
    assert f"database: {head_revision()};" in instance.run("db", "revision").output
    verified = instance.run("audit", "verify", "--verifier-key", verifier_key(instance))
    assert verified.exit_code == 0, verified.output


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_init_refuses_a_seed_file_others_may_read_and_creates_nothing(
    scratch, tmp_path, backend, file_mode
):
    instance = new_instance(scratch, backend, tmp_path)

    result = init(instance, seed_file(tmp_path, file_mode=file_mode))

    assert result.exit_code == 1, result.output
    assert f"may be read by others (mode {file_mode:04o})" in result.output
    assert "chmod 600" in result.output
    assert not instance.keys_dir.exists()
    engine = make_engine(instance.url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("source", ["stdin", "environment"])
def test_init_takes_the_seed_from_stdin_or_the_environment(scratch, tmp_path, source):
    instance = new_instance(scratch, "sqlite", tmp_path)
    if source == "stdin":
        args, env, stdin = ["--seed-file", "-"], {}, SEED + "\n"
    else:
        args, env, stdin = [], {"SEALROOM_LIST_SEED": SEED}, None

    result = instance.run("init", "--trial", TRIAL_FILE, *args, env=env, stdin=stdin)

    assert result.exit_code == 0, result.output
    assert not HEX_64.search(result.output)
    exported = instance.run(
        "lists", "export", "--out", str(tmp_path / "lists.csv"), env={"SEALROOM_LIST_SEED": SEED}
    )
    assert exported.exit_code == 0, exported.output


@pytest.mark.requirement("R-CLI")
def test_init_without_a_seed_is_a_usage_error_and_creates_nothing(scratch, tmp_path):
    instance = new_instance(scratch, "sqlite", tmp_path)

    result = instance.run("init", "--trial", TRIAL_FILE)

    assert result.exit_code == 2, result.output
    assert "--seed-file" in result.output and "SEALROOM_LIST_SEED" in result.output
    assert not instance.keys_dir.exists()


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [SEED, WRONG_SEED], ids=["same seed", "other seed"])
def test_a_second_init_is_refused_and_changes_nothing(scratch, tmp_path, backend, seed):
    instance = new_instance(scratch, backend, tmp_path)
    assert init(instance, seed_file(tmp_path)).exit_code == 0
    before = snapshot(instance)
    again = tmp_path / "again"
    again.mkdir()

    result = init(instance, seed_file(again, seed))

    assert result.exit_code == 1, result.output
    assert "already holds a trial" in result.output
    assert snapshot(instance) == before


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST")
@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_export_with_the_init_seed_writes_the_appendix_a_lists(scratch, tmp_path, backend):
    instance = new_instance(scratch, backend, tmp_path)
    assert init(instance, seed_file(tmp_path)).exit_code == 0
    out = tmp_path / "lists.csv"

    result = instance.run("lists", "export", "--seed", SEED, "--out", str(out))
    wrong = instance.run("lists", "export", "--seed", WRONG_SEED, "--out", str(tmp_path / "w"))

    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for key, letters in APPENDIX_A.items():
        arms = [LETTER[row["arm"]] for row in rows if row["stratum"] == key][:16]
        assert " ".join(arms) == letters, key
    assert wrong.exit_code == 1 and not (tmp_path / "w").exists()


# sites -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def trial_only(request, scratch, tmp_path_factory) -> Instance:
    """A trial made by ``sealroom init`` (no sites yet), shared by tests that add sites."""
    directory = tmp_path_factory.mktemp(f"init-{request.param}")
    instance = new_instance(scratch, request.param, directory)
    result = init(instance, seed_file(directory))
    assert result.exit_code == 0, result.output
    return instance


def site_row(instance: Instance, site_id: str) -> dict[str, Any] | None:
    with instance.session() as session:
        site = session.get(Site, site_id)
        if site is None:
            return None
        return {
            "name": site.name,
            "attributes": site.attributes,
            "status": site.status,
            "closed_at": site.closed_at,
        }


@pytest.mark.requirement("R-CLI")
def test_sites_add_creates_an_open_site_audited_as_site_created(trial_only):
    result = trial_only.run("sites", "add", "301", "--attr", "region=europe", "--name", "Lyon")
    unnamed = trial_only.run("sites", "add", "302", "--attr", "region=rest_of_world")

    assert result.exit_code == 0, result.output
    assert "site 301 added (region=europe)" in result.output
    assert site_row(trial_only, "301") == {
        "name": "Lyon",
        "attributes": {"region": "europe"},
        "status": "open",
        "closed_at": None,
    }
    (entry,) = trial_only.entries_about("301")
    assert (entry["action"], entry["actor"], entry["role"]) == ("site.created", "system", "system")
    assert entry["data"] == {"site": "301", "name": "Lyon", "attributes": {"region": "europe"}}
    assert unnamed.exit_code == 0, unnamed.output
    assert site_row(trial_only, "302")["name"] == "Site 302"
    # The new site is usable: a coordinator can be added at it.
    added = trial_only.run("users", "add", "--role", "coordinator", "--site", "301", "c-301")
    assert added.exit_code == 0, added.output


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    ("site_id", "options", "message"),
    [
        (
            "310",
            ["--attr", "region=europe", "--attr", "colour=blue"],
            "attributes.colour: Not a site-derived stratification factor.",
        ),
        (
            "311",
            ["--attr", "region=mars"],
            f"attributes.region: Must be one of: {', '.join(REGIONS)}.",
        ),
        ("312", [], f"attributes.region: Must be one of: {', '.join(REGIONS)}."),
        ("312", ["--attr", "prior_ig=yes", "--attr", "region=europe"], "attributes.prior_ig"),
        ("3 13", ["--attr", "region=europe"], "site: 1 to 16 of A-Z a-z 0-9 -."),
        ("3" * 17, ["--attr", "region=europe"], "site: 1 to 16 of A-Z a-z 0-9 -."),
        ("314\n", ["--attr", "region=europe"], "site: 1 to 16 of A-Z a-z 0-9 -."),
        ("315", ["--attr", "region"], "--attr 'region': write it as FACTOR=LEVEL"),
        ("316", ["--attr", "=europe"], "--attr '=europe': write it as FACTOR=LEVEL"),
        ("317", ["--attr", "region=europe", "--name", "x" * 129], "name: 1 to 128 printable"),
        ("318", ["--attr", "region=europe", "--name", "Ly\non"], "name: 1 to 128 printable"),
        ("319", ["--attr", "region=europe", "--name", ""], "name: 1 to 128 printable"),
    ],
    ids=[
        "unknown factor",
        "unknown level",
        "missing factor",
        "screening factor",
        "space in id",
        "17 characters",
        "trailing newline",
        "no equals sign",
        "no factor",
        "long name",
        "control character in name",
        "empty name",
    ],
)
def test_sites_add_refuses_bad_input_with_a_clear_error_and_adds_nothing(
    trial_only, site_id, options, message
):
    size = len(trial_only.log())

    result = trial_only.run("sites", "add", site_id, *options)

    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output
    assert site_row(trial_only, site_id) is None
    assert len(trial_only.log()) == size


@pytest.mark.requirement("R-CLI")
def test_sites_add_refuses_a_site_that_exists(trial_only):
    assert trial_only.run("sites", "add", "320", "--attr", "region=europe").exit_code == 0
    size = len(trial_only.log())

    result = trial_only.run("sites", "add", "320", "--attr", "region=north_america")

    assert result.exit_code == 1, result.output
    assert "error: Site 320 already exists." in result.output
    assert site_row(trial_only, "320")["attributes"] == {"region": "europe"}
    assert len(trial_only.log()) == size


@pytest.mark.requirement("R-CLI")
def test_sites_close_closes_the_site_audited_and_a_second_close_is_refused(trial_only):
    assert trial_only.run("sites", "add", "401", "--attr", "region=europe").exit_code == 0

    result = trial_only.run("sites", "close", "401")

    assert result.exit_code == 0, result.output
    assert "site 401 closed" in result.output
    closed = site_row(trial_only, "401")
    assert closed["status"] == "closed"
    assert isinstance(closed["closed_at"], datetime) and closed["closed_at"].tzinfo is not None
    created, entry = trial_only.entries_about("401")
    assert created["action"] == "site.created"
    assert (entry["action"], entry["actor"], entry["data"]) == (
        "site.closed",
        "system",
        {"site": "401"},
    )
    size = len(trial_only.log())

    again = trial_only.run("sites", "close", "401")

    assert again.exit_code == 1, again.output
    assert "error: Site 401 is already closed." in again.output
    assert site_row(trial_only, "401") == closed
    assert len(trial_only.log()) == size


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("site_id", ["NOPE", "bad id"])
def test_sites_close_refuses_a_site_that_does_not_exist(trial_only, site_id):
    size = len(trial_only.log())

    result = trial_only.run("sites", "close", site_id)

    assert result.exit_code == 1, result.output
    assert f"error: No site {site_id}." in result.output
    assert len(trial_only.log()) == size


# A closed site over HTTP ---------------------------------------------------------------------


def audit_entries(db: Any) -> list[dict[str, Any]]:
    with db.reading() as session:
        return [
            json.loads(canonical)
            for canonical in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
        ]


def state_of(db: Any, screening_number: str) -> dict[str, Any]:
    """What randomising the participant would change: its row, its stratum's cursors, kits."""
    with db.reading() as session:
        participant = session.scalars(
            select(Participant).where(Participant.screening_number == screening_number)
        ).one()
        return {
            "status": participant.status,
            "randomization_number": participant.randomization_number,
            "cursors": sorted(session.execute(select(Stratum.number, Stratum.next_position))),
            "used_slots": session.scalar(
                select(func.count()).where(Slot.participant_id.isnot(None))
            ),
            "kits": session.scalar(
                select(func.count()).where(Kit.participant_id == participant.id)
            ),
        }


@pytest.fixture
def site_102_closed(api, db, ctx) -> Iterator[None]:
    """Site 102 of the demo, closed (as `sealroom sites close 102` does) after 102-CL-0001."""
    screened = api.screen("102-CL-0001", user="coordinator-102", site="102")
    assert screened.status_code == 201, screened.get_json()
    with db.transaction() as session:
        close_site(session, ctx, roles.SYSTEM, "102")
    yield


@pytest.mark.requirement("R-API")
def test_a_closed_site_screens_no_one(api, db, site_102_closed):
    before = audit_entries(db)

    response = api.screen("102-CL-0002", user="coordinator-102", site="102")

    assert response.status_code == 409, response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/conflict"
    assert problem["detail"] == "Site 102 is closed: it screens no one."
    assert api.get("/participants/102-CL-0002", "coordinator-102").status_code == 404
    assert not [e for e in audit_entries(db)[len(before) :] if e["action"].endswith("screened")]


@pytest.mark.requirement("R-API")
@pytest.mark.requirement("R-AUD")
def test_a_participant_screened_before_the_close_cannot_be_randomised_and_the_refusal_is_audited(
    api, db, site_102_closed
):
    size, before = len(audit_entries(db)), state_of(db, "102-CL-0001")

    response = api.randomize("102-CL-0001", user="coordinator-102")

    assert response.status_code == 409, response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/conflict"
    assert problem["detail"] == "Site 102 is closed: it randomises no one."
    assert state_of(db, "102-CL-0001") == before
    (entry,) = audit_entries(db)[size:]
    assert (entry["action"], entry["actor"], entry["subject"]) == (
        "participant.randomization_refused",
        "coordinator-102",
        "102-CL-0001",
    )
    assert entry["data"]["reason"] == "conflict" and entry["data"]["status"] == 409
    # Still readable as it was; the other sites go on.
    read = api.get("/participants/102-CL-0001", "coordinator-102")
    assert read.status_code == 200 and read.get_json()["status"] == "screened"
    assert api.screen_and_randomize("101-CL-0003").status_code == 201


@pytest.mark.requirement("R-API")
def test_a_site_closed_while_a_randomisation_waits_for_its_locks_randomises_no_one(
    scratch, backend, tmp_path
):
    """PostgreSQL: another request closes the site and holds its lock while the
    randomisation asks for the participant's and the site's locks; once the close commits,
    the randomisation reads the site's status as its lock sees it (closed), refuses, and
    writes nothing but the refusal."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: no close can come in between")
    import threading

    from randomizer.services.context import load_trial_context

    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=4)
    database, other = Database(trial.url), Database(trial.url)
    try:
        client = create_app({"settings": trial.settings, "database": database}).test_client()
        headers = {"Authorization": f"Bearer {trial.tokens['coordinator-102']}"}
        screened = client.post(
            "/api/v1/participants",
            headers=headers,
            json={
                "screening_number": "102-CL-0001",
                "site": "102",
                "screened_on": datetime.now(UTC).date().isoformat(),
                "strata": {"prior_ig": "no"},
            },
        )
        assert screened.status_code == 201, screened.get_json()
        with other.reading() as session:
            other_ctx = load_trial_context(session, trial.settings.keys_dir, {})
        size, before = len(audit_entries(other)), state_of(other, "102-CL-0001")
        answered: list[Any] = []

        def randomise() -> None:
            answered.append(
                client.post(
                    "/api/v1/participants/102-CL-0001/randomize",
                    headers=headers,
                    json={"weight_kg": 30, "eligibility": ELIGIBLE},
                )
            )

        randomising = threading.Thread(target=randomise)
        with other.transaction() as closing:  # another request: the site's lock held
            close_site(closing, other_ctx, roles.SYSTEM, "102")
            randomising.start()
            waiting = _wait_for_a_lock_wait(other, "FOR UPDATE OF participant, site")
        randomising.join(timeout=60)

        assert waiting, "the randomisation never waited for the participant's and site's locks"
        [response] = answered
        assert response.status_code == 409, response.get_json()
        assert response.get_json()["detail"] == "Site 102 is closed: it randomises no one."
        assert state_of(other, "102-CL-0001") == before
        assert [entry["action"] for entry in audit_entries(other)[size:]] == [
            "site.closed",
            "participant.randomization_refused",
        ]
    finally:
        database.dispose()
        other.dispose()


def _wait_for_a_lock_wait(database: Database, statement_part: str) -> bool:
    """Whether, within 30 s, a backend of the database waits for a row lock in a statement
    containing ``statement_part`` (read from pg_stat_activity on a connection of its own)."""
    deadline = time.monotonic() + 30
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND position(:part in query) > 0"
    )
    while time.monotonic() < deadline:
        with database.engine.connect() as connection:
            if connection.execute(query, {"part": statement_part}).scalar_one():
                return True
        time.sleep(0.02)
    return False


# init-demo --keep-existing -----------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
def test_init_demo_keep_existing_twice_keeps_the_first_trial_and_its_tokens(
    scratch, tmp_path, backend
):
    instance = new_instance(scratch, backend, tmp_path)
    first = instance.run("init-demo", "--keep-existing", "--seed", SEED)
    assert first.exit_code == 0, first.output
    tokens = json.loads(instance.tokens_path.read_text())
    before = snapshot(instance)

    second = instance.run("init-demo", "--keep-existing")

    assert second.exit_code == 0, second.output
    assert "already holds a trial: keeping it" in second.output
    assert not HEX_64.search(second.output)  # no fresh seed for lists never made
    assert snapshot(instance) == before
    for token in tokens:
        actor = instance.authenticate(token["token"])
        assert actor is not None and actor.name == token["user"]
    # The service started on it answers the first run's tokens.
    settings = Settings.from_env(
        {"SEALROOM_INSTANCE_DIR": str(instance.directory)}, database_url=instance.url
    )
    app = create_app({"settings": settings, "TESTING": True})
    try:
        auditor = next(t["token"] for t in tokens if t["role"] == "auditor")
        answer = app.test_client().get(
            "/api/v1/trial", headers={"Authorization": f"Bearer {auditor}"}
        )
        assert answer.status_code == 200, answer.get_json()
    finally:
        app.extensions["sealroom"].db.dispose()
    assert mode(instance.tokens_path) == 0o600
