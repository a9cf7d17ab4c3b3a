"""Backup and restore (R-NF-7): `sealroom backup` and `sealroom restore`, and the drill.

Every test builds databases of its own (a restore target is a new empty database made by the
`scratch` fixture, dropped at the end of the session), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy import select

from audit.checkpoint import parse_verifier_key, verifier_key_from_private, verify_checkpoint
from audit.entry import parse_entry
from audit.monitor import MonitorAlarm, accept_restore, check_log
from keys import load_signing_key
from randomizer.cli import main
from randomizer.db import Database
from randomizer.migrations import alembic_config, head_revision
from randomizer.models import AuditCheckpoint, AuditEntry
from randomizer.services.backup import BackupError, database_contents, find_pg_tool
from tests.conftest import BACKENDS, ELIGIBLE, TrialDatabase, make_trial_database
from tests.randomizer.served import HttpClient, Server
from tests.randomizer.test_readme_recipes import FENCED_SH, readme_section

pytestmark = pytest.mark.requirement("R-NF-7")


@pytest.fixture(params=BACKENDS)
def trial(request: pytest.FixtureRequest, scratch: Any, tmp_path: Path) -> TrialDatabase:
    """A small demo trial of this test's own."""
    return make_trial_database(scratch, request.param, tmp_path / "service", kits_per_arm=12)


def sealroom(trial: TrialDatabase, *args: str, url: str | None = None) -> Result:
    """``sealroom --database-url URL ARGS`` with the trial's keys."""
    return CliRunner().invoke(
        main,
        ["--database-url", url or trial.url, *args],
        env={
            "SEALROOM_KEYS_DIR": str(trial.settings.keys_dir),
            "SEALROOM_INSTANCE_DIR": str(trial.settings.instance_dir),
            "SEALROOM_MASTER_KEY": None,
        },
    )


def log(url: str) -> list[dict[str, Any]]:
    database = Database(url)
    try:
        with database.reading() as session:
            rows = session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
            return [parse_entry(row.encode()) for row in rows]
    finally:
        database.dispose()


def latest_checkpoint(url: str) -> str:
    database = Database(url)
    try:
        with database.reading() as session:
            return session.scalars(
                select(AuditCheckpoint.note).order_by(AuditCheckpoint.size.desc()).limit(1)
            ).one()
    finally:
        database.dispose()


def verifier_key(trial: TrialDatabase) -> str:
    return verifier_key_from_private(
        "sealroom/RECLAIIM", load_signing_key(trial.settings.keys_dir)
    ).line()


def randomise(client: Any, *numbers: str) -> None:
    """Screen and randomise at site 101, over HTTP (a served client) or in process."""
    for number in numbers:
        screening = {
            "screening_number": number,
            "site": "101",
            "screened_on": date.today().isoformat(),
            "strata": {"prior_ig": "no"},
        }
        randomisation = {"weight_kg": 70, "eligibility": ELIGIBLE}
        if isinstance(client, HttpClient):
            assert client.post("/participants", "coordinator-101", screening)[0] == 201
            status, body = client.post(
                f"/participants/{number}/randomize", "coordinator-101", randomisation
            )
            assert status == 201, body
        else:
            assert (
                client.post("/participants", "coordinator-101", json=screening).status_code == 201
            )
            response = client.post(
                f"/participants/{number}/randomize", "coordinator-101", json=randomisation
            )
            assert response.status_code == 201, response.get_json()


def in_process_client(trial: TrialDatabase, url: str | None = None) -> Any:
    from randomizer import create_app
    from randomizer.config import Settings
    from tests.conftest import ApiClient, Clock

    settings = Settings.from_env(
        {},
        database_url=url or trial.url,
        instance_dir=trial.settings.instance_dir,
        keys_dir=trial.settings.keys_dir,
    )
    app = create_app({"settings": settings, "TESTING": True})
    return ApiClient(app.test_client(), trial.tokens, Clock())


def fetcher(client: Any) -> Any:
    def fetch(path: str) -> bytes:
        response = client.get(path, "sponsor")
        assert response.status_code == 200, response.get_data()
        return response.get_data()

    return fetch


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Backup -----------------------------------------------------------------------------------


def test_a_backup_is_a_private_copy_with_a_manifest_of_the_checkpoint_it_covers(
    trial: TrialDatabase, tmp_path: Path
) -> None:
    out = tmp_path / "backup"
    result = sealroom(trial, "backup", "--out", str(out))

    assert result.exit_code == 0, result.output
    data = "sealroom.pgdump" if trial.backend == "postgresql" else "sealroom.db"
    if trial.backend == "postgresql":
        assert "PostgreSQL: backup written" in result.output
        assert "pg_dump, custom format" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [data, "checkpoint.txt", "manifest.json"]
    )
    assert mode(out) == 0o700
    assert {mode(p) for p in out.iterdir()} == {0o600}
    manifest = json.loads((out / "manifest.json").read_text())
    entries = log(trial.url)
    stored = latest_checkpoint(trial.url)
    covered = manifest["audit"]["checkpoint"]
    assert manifest["backend"] == trial.backend
    assert manifest["schema_revision"] == head_revision()
    assert manifest["audit"]["entries"] == len(entries) == covered["size"]
    assert covered["note"] == stored == (out / "checkpoint.txt").read_text()
    checkpoint = verify_checkpoint(stored, parse_verifier_key(verifier_key(trial)))
    assert covered["root"] == base64.b64encode(checkpoint.root).decode()
    assert covered["key_id"] == parse_verifier_key(verifier_key(trial)).key_id.hex()
    assert manifest["files"] == {name: sha256(out / name) for name in (data, "checkpoint.txt")}
    # No key is in the backup.
    keys = [p.read_bytes() for p in trial.settings.keys_dir.rglob("*.key")]
    assert len(keys) == 3  # the master key, the signing key and the web session secret
    master = next(trial.settings.keys_dir.glob("master/*.key")).read_text()
    keys.append(base64.b64decode(master))  # its 32 bytes, too
    for path in out.iterdir():
        content = path.read_bytes()
        assert not any(key.strip() in content for key in keys), path


@pytest.mark.parametrize("where", ["keys", "keys/master", "keys/../keys/inside", "."])
def test_a_backup_is_refused_inside_or_around_the_keys_directory(
    scratch: Any, tmp_path: Path, where: str
) -> None:
    trial = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    out = trial.settings.keys_dir.parent / where
    before = sorted(p for p in trial.settings.keys_dir.parent.rglob("*"))

    result = sealroom(trial, "backup", "--out", str(out))

    assert result.exit_code == 1
    assert "the database and the keys are backed up apart" in result.output
    assert sorted(p for p in trial.settings.keys_dir.parent.rglob("*")) == before


def test_a_backup_is_refused_into_a_directory_that_is_not_empty(
    scratch: Any, tmp_path: Path
) -> None:
    trial = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    out = tmp_path / "backup"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")

    result = sealroom(trial, "backup", "--out", str(out))

    assert result.exit_code == 1
    assert "is not an empty directory" in result.output
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_pg_dump_missing_everywhere_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="pg_dump was found neither on PATH nor in"):
        find_pg_tool("pg_dump", path=str(tmp_path), pattern=str(tmp_path / "*" / "bin"))


def test_pg_tools_off_the_path_are_taken_from_the_newest_version(tmp_path: Path) -> None:
    for version in ("9.6", "15", "16"):
        program = tmp_path / version / "bin" / "pg_restore"
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o700)

    found = find_pg_tool("pg_restore", path=str(tmp_path), pattern=str(tmp_path / "*" / "bin"))

    assert found == tmp_path / "16" / "bin" / "pg_restore"


# Restore ----------------------------------------------------------------------------------


def test_a_restore_refuses_a_database_that_is_not_empty_unless_forced(
    trial: TrialDatabase, tmp_path: Path
) -> None:
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    covered = len(log(trial.url))
    randomise(in_process_client(trial), "101-0001")
    before = log(trial.url)

    refused = sealroom(trial, "restore", "--from", str(out))

    assert refused.exit_code == 1
    assert "the target database is not empty" in refused.output
    assert f"{len(before)} audit entries" in refused.output
    assert "give --force to replace it" in refused.output
    assert log(trial.url) == before

    forced = sealroom(trial, "restore", "--from", str(out), "--force")

    assert forced.exit_code == 0, forced.output
    assert (
        f"--force: replacing the target database, which holds trial RECLAIIM, schema revision "
        f"{head_revision()}, {len(before)} audit entries" in forced.output
    )
    after = log(trial.url)
    assert after[:covered] == before[:covered]
    assert len(after) == covered + 1
    announcement = after[-1]
    assert announcement["action"] == "database.restored"
    assert announcement["data"]["checkpoint_size"] == covered
    assert announcement["data"]["replaced"]["entries"] == len(before)
    assert sealroom(trial, "audit", "verify", "--verifier-key", verifier_key(trial)).exit_code == 0


def test_a_backup_with_a_file_that_does_not_match_its_manifest_is_refused(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    data = next(p for p in out.iterdir() if p.name.startswith("sealroom."))
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0x01
    data.write_bytes(bytes(content))
    target = scratch.new_url(trial.backend)

    result = sealroom(trial, "restore", "--from", str(out), url=target)

    assert result.exit_code == 1
    assert f"{data} has SHA-256 {sha256(data)}, not the" in result.output
    assert "the backup was altered or damaged" in result.output
    database = Database(target)
    try:
        assert database_contents(database)[0] == []
    finally:
        database.dispose()


def test_a_copy_whose_audit_was_altered_is_restored_but_fails_and_says_what(
    scratch: Any, tmp_path: Path
) -> None:
    """A backup rewritten consistently (file and manifest hash) is caught by the verification."""
    trial = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    copy = out / "sealroom.db"
    with sqlite3.connect(copy) as connection:
        connection.execute("DROP TRIGGER audit_entry_no_update")
        row = connection.execute("SELECT canonical FROM audit_entry WHERE seq = 3").fetchone()
        altered = json.loads(row[0])
        altered["data"]["altered"] = True
        connection.execute(
            "UPDATE audit_entry SET canonical = ? WHERE seq = 3",
            (json.dumps(altered, sort_keys=True, separators=(",", ":")),),
        )
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["sealroom.db"] = sha256(copy)
    (out / "manifest.json").write_text(json.dumps(manifest))

    result = sealroom(trial, "restore", "--from", str(out), url=scratch.new_url("sqlite"))

    assert result.exit_code == 1
    assert "FAILED: the restored copy: entry 3 was altered" in result.output
    assert "do not serve this database" in result.output


def test_a_restore_needs_this_trials_keys_and_touches_nothing_without_them(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    other = make_trial_database(scratch, "sqlite", tmp_path / "other", kits_per_arm=12)
    target = scratch.new_url(trial.backend)

    result = sealroom(
        replace(trial, settings=other.settings), "restore", "--from", str(out), url=target
    )

    assert result.exit_code == 1
    assert "the backup's covered checkpoint is not signed by the signing key in" in result.output
    assert "restore the keys of this trial first" in result.output
    assert database_contents(Database(target))[0] == []


def test_a_backup_of_an_older_schema_is_restored_and_upgraded(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    database = Database(trial.url)
    with database.schema_transaction() as connection:
        command.downgrade(alembic_config(connection), "0005")
    database.dispose()
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["schema_revision"] == "0005"
    target = scratch.new_url(trial.backend)

    result = sealroom(trial, "restore", "--from", str(out), url=target)

    assert result.exit_code == 0, result.output
    assert "Schema upgraded from revision 0005." in result.output
    assert log(target)[-1]["data"]["upgraded_to"] == head_revision()
    assert sealroom(trial, "db", "revision", url=target).output.startswith(
        f"database: {head_revision()};"
    )


@pytest.mark.slow
def test_a_backup_taken_while_writes_go_on_restores_and_verifies(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    from randomizer.roles import SYSTEM
    from randomizer.services import users
    from randomizer.services.context import load_trial_context

    stop = threading.Event()
    appended: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        writer = Database(trial.url)
        try:
            with writer.reading() as session:
                ctx = load_trial_context(session, trial.settings.keys_dir)
            while not stop.is_set() and len(appended) < 400:
                with writer.transaction() as session:
                    users.add_user(
                        session, ctx, SYSTEM, f"busy{len(appended)}", "auditor", None, None
                    )
                appended.append(len(appended))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            writer.dispose()

    thread = threading.Thread(target=write)
    thread.start()
    backups = []
    try:
        for number in range(3):
            out = tmp_path / f"backup-{number}"
            result = sealroom(trial, "backup", "--out", str(out))
            assert result.exit_code == 0, result.output
            backups.append((out, len(appended)))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert appended, "nothing was written while the backups ran"
    sizes = []
    for out, _ in backups:
        target = scratch.new_url(trial.backend)
        result = sealroom(trial, "restore", "--from", str(out), url=target)
        assert result.exit_code == 0, result.output
        covered = json.loads((out / "manifest.json").read_text())["audit"]["entries"]
        restored = log(target)
        assert len(restored) == covered + 1
        assert restored[-1]["action"] == "database.restored"
        assert restored[:-1] == log(trial.url)[:covered]
        sizes.append(covered)
    # The backups were taken at different moments of the writing.
    assert len(set(sizes)) > 1 or len(appended) == 400


# The monitor after a restore --------------------------------------------------------------


def test_a_monitor_accepts_an_announced_restore_once_and_says_what_was_lost(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    key = parse_verifier_key(verifier_key(trial))
    state = tmp_path / "monitor"
    client = in_process_client(trial)
    randomise(client, "101-0001")
    check_log(fetcher(client), key, state)  # seen before the backup
    out = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(out)).exit_code == 0
    randomise(client, "101-0002", "101-0003")
    seen = check_log(fetcher(client), key, state).latest
    target = scratch.new_url(trial.backend)
    assert sealroom(trial, "restore", "--from", str(out), url=target).exit_code == 0
    restored = in_process_client(trial, target)

    for _ in range(2):  # the alarm stands until the restore is accepted
        with pytest.raises(MonitorAlarm, match="rollback"):
            check_log(fetcher(restored), key, state)
    accepted = accept_restore(fetcher(restored), key, state, (out / "checkpoint.txt").read_text())

    covered = json.loads((out / "manifest.json").read_text())["audit"]["entries"]
    assert accepted.restored.size == covered
    assert accepted.latest.size == covered + 1
    assert accepted.lost == seen.size - covered
    assert f"{seen.size - covered} entries it saw signed are no longer in the log" in (
        accepted.message()
    )
    randomise(restored, "101-0004")
    assert check_log(fetcher(restored), key, state).latest.size > covered + 1


def test_a_monitor_refuses_a_restore_to_a_log_it_never_saw_grow_from(
    scratch: Any, tmp_path: Path
) -> None:
    """Two logs signed by one key: 'accepting a restore' to the other one is a fork."""
    first = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    # The same directory, so the same keys, but another log (other times in its entries).
    second = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    key = parse_verifier_key(verifier_key(first))
    state = tmp_path / "monitor"
    client, other = in_process_client(first), in_process_client(second)
    check_log(fetcher(client), key, state)
    randomise(client, "101-0001", "101-0002")
    check_log(fetcher(client), key, state)
    randomise(other, "101-0001")

    with pytest.raises(MonitorAlarm, match="fork"):
        accept_restore(fetcher(other), key, state, latest_checkpoint(second.url))


def test_a_monitor_refuses_a_restored_checkpoint_signed_by_another_key(
    scratch: Any, tmp_path: Path
) -> None:
    first = make_trial_database(scratch, "sqlite", tmp_path / "one", kits_per_arm=12)
    second = make_trial_database(scratch, "sqlite", tmp_path / "two", kits_per_arm=12)
    key = parse_verifier_key(verifier_key(first))
    state = tmp_path / "monitor"
    client = in_process_client(first)
    check_log(fetcher(client), key, state)

    with pytest.raises(MonitorAlarm, match="bad signature: the restored checkpoint"):
        accept_restore(fetcher(client), key, state, latest_checkpoint(second.url))


# The drill --------------------------------------------------------------------------------


def monitor(trial: TrialDatabase, server: Server, state: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        main,
        [
            "monitor",
            "--url",
            server.client.base,
            "--verifier-key",
            verifier_key(trial),
            "--state",
            str(state),
            *extra,
        ],
        env={"SEALROOM_MONITOR_TOKEN": trial.tokens["sponsor"]},
    )


@pytest.mark.slow
def test_the_restore_drill_raises_the_monitors_rollback_alarm_and_verifies(
    trial: TrialDatabase, scratch: Any, tmp_path: Path
) -> None:
    """Randomise, back up, randomise more, let a monitor see it, restore: the alarm rings."""
    state = tmp_path / "monitor"
    out = tmp_path / "backup"
    service = Server(trial, tmp_path / "service", workers=1).start()
    try:
        randomise(service.client, "101-0001", "101-0002")
        assert monitor(trial, service, state).exit_code == 0
        backup = sealroom(trial, "backup", "--out", str(out))
        assert backup.exit_code == 0, backup.output
        randomise(service.client, "101-0003", "101-0004")
        seen = monitor(trial, service, state)
        assert seen.exit_code == 0, seen.output
    finally:
        service.stop()
    later = len(log(trial.url))
    covered = json.loads((out / "manifest.json").read_text())["audit"]["entries"]
    assert covered < later

    # The service's machine is lost: a new, empty database and the keys restored apart.
    target = scratch.new_url(trial.backend)
    restored_trial = replace(trial, url=target)
    restore = sealroom(trial, "restore", "--from", str(out), url=target)
    assert restore.exit_code == 0, restore.output
    assert "now raises its rollback alarm" in restore.output
    (tmp_path / "restored").mkdir()
    restored = Server(restored_trial, tmp_path / "restored", workers=1).start()
    try:
        alarm = monitor(trial, restored, state)
        assert alarm.exit_code == 1, alarm.output
        assert (
            f"ALARM: rollback: the log now has {covered + 1} entries, but a checkpoint of "
            f"{later} entries was signed and seen earlier" in alarm.output
        )
        # What was randomised after the backup is gone; what came before is there.
        status, _type, _body = restored.client.request(
            "GET", "/api/v1/participants/101-0003", "coordinator-101"
        )
        assert status == 404
        status, _type, _body = restored.client.request(
            "GET", "/api/v1/participants/101-0002", "coordinator-101"
        )
        assert status == 200
        # The restore is announced in the log the service serves.
        status, _type, body = restored.client.request(
            "GET", f"/api/v1/audit/entries?start={covered}", "auditor"
        )
        assert status == 200
        (announcement,) = [json.loads(line) for line in body.splitlines()]
        assert announcement["action"] == "database.restored"
        assert announcement["data"]["checkpoint_size"] == covered
        verified = sealroom(
            trial, "audit", "verify", "--verifier-key", verifier_key(trial), url=target
        )
        assert verified.exit_code == 0, verified.output
        assert f"OK: {covered + 1} entries" in verified.output

        # The monitor's operator, told of the restore, accepts it; then watches as before.
        assert monitor(trial, restored, state).exit_code == 1
        accepted = monitor(trial, restored, state, "--accept-restore", str(out / "checkpoint.txt"))
        assert accepted.exit_code == 0, accepted.output
        assert f"{later - covered} entries it saw signed are no longer in the log" in (
            accepted.output
        )
        randomise(restored.client, "101-0005")
        assert monitor(trial, restored, state).exit_code == 0
    finally:
        restored.stop()


def test_the_readme_drill_runs_as_written(scratch: Any, tmp_path: Path) -> None:
    """The restore drill of README.md's Operations section, run with bash, unchanged."""
    (recipe,) = [
        match.group("body")
        for match in FENCED_SH.finditer(readme_section("## Operations"))
        if 'restore --from "$BACKUP"' in match.group("body")
    ]
    trial = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    backup = tmp_path / "backup"
    assert sealroom(trial, "backup", "--out", str(backup)).exit_code == 0
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SEALROOM_KEYS_DIR": str(trial.settings.keys_dir),
        "BACKUP": str(backup),
        "DRILL": str(tmp_path / "drill"),  # not there yet: the restore makes it (0700)
        "KEY": verifier_key(trial),
    }
    environment.pop("SEALROOM_DATABASE_URL", None)

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", recipe],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK: ") == 2, result.stdout
    assert mode(tmp_path / "drill") == 0o700
    assert mode(tmp_path / "drill" / "drill.db") == 0o600
