"""The verifiable audit trail end to end: receipts, proofs over HTTP, checkpoints in every
transaction, and the attacks URS §7 and the verifiable-audit issue say must be detected.

Attacks are made on databases of their own, behind the triggers' back, as someone who
controls the database would.
"""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from audit.checkpoint import (
    Checkpoint,
    parse_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key_from_private,
    verify_checkpoint,
)
from audit.entry import canonical_bytes, entry_hash
from audit.merkle import (
    MemoryNodeStore,
    compact_range,
    leaf_hash,
    nodes_for_append,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from audit.monitor import MonitorAlarm, check_log
from randomizer.cli import main as cli
from randomizer.db import Database
from randomizer.models import AuditCheckpoint, AuditEntry, AuditNode, Participant
from tests.conftest import ELIGIBLE, make_trial_database

APPEND_ONLY = ("audit_entry", "audit_node", "audit_checkpoint")


def _b64(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


def _verifier_key(api: Any) -> Any:
    return parse_verifier_key(api.get("/audit/verifier-key").get_data(as_text=True))


# Receipts (R-RCPT) ----------------------------------------------------------------------


@pytest.mark.requirement("R-RCPT")
def test_a_receipt_proves_offline_what_the_site_was_given(api: Any) -> None:
    receipt = api.screen_and_randomize("101-RCPT-1").get_json()["receipt"]
    key = _verifier_key(api)

    checkpoint = verify_checkpoint(receipt["checkpoint"], key)
    entry = json.loads(receipt["entry"])
    assert entry["seq"] == receipt["seq"]
    assert entry["action"] == "participant.randomized"
    assert entry["subject"] == "101-RCPT-1"
    assert canonical_bytes(entry) == receipt["entry"].encode()
    # The checkpoint that first includes the entry is the one of seq + 1 entries.
    assert checkpoint.size == receipt["seq"] + 1
    assert verify_inclusion(
        leaf_hash(receipt["entry"].encode()),
        receipt["seq"],
        checkpoint.size,
        _b64(receipt["inclusion_proof"]),
        checkpoint.root,
    )


@pytest.mark.requirement("R-RCPT")
def test_a_site_later_proves_the_log_still_extends_its_receipt(api: Any) -> None:
    receipt = api.screen_and_randomize("101-RCPT-2").get_json()["receipt"]
    for number in ("101-RCPT-3", "101-RCPT-4"):
        api.screen_and_randomize(number)
    key = _verifier_key(api)
    old = verify_checkpoint(receipt["checkpoint"], key)
    latest = verify_checkpoint(
        api.get("/audit/checkpoint", "coordinator-101").get_data(as_text=True), key
    )
    assert latest.size > old.size
    proof = api.get(
        f"/audit/proof/consistency?first={old.size}&second={latest.size}", "coordinator-101"
    ).get_json()
    assert verify_consistency(old.size, latest.size, old.root, latest.root, _b64(proof["hashes"]))
    # A proof does not verify against a changed root or for other sizes.
    assert not verify_consistency(
        old.size, latest.size, bytes(32), latest.root, _b64(proof["hashes"])
    )
    assert not verify_consistency(
        old.size - 1, latest.size, old.root, latest.root, _b64(proof["hashes"])
    )


@pytest.mark.requirement("R-RCPT")
def test_an_inclusion_proof_for_the_wrong_index_fails(api: Any) -> None:
    receipt = api.screen_and_randomize("101-RCPT-5").get_json()["receipt"]
    checkpoint, _ = parse_checkpoint(receipt["checkpoint"])
    leaf = leaf_hash(receipt["entry"].encode())
    proof = _b64(receipt["inclusion_proof"])
    assert verify_inclusion(leaf, receipt["seq"], checkpoint.size, proof, checkpoint.root)
    assert not verify_inclusion(leaf, receipt["seq"] - 1, checkpoint.size, proof, checkpoint.root)


# Checkpoints in every transaction ----------------------------------------------------------


@pytest.mark.requirement("R-AUD")
def test_every_transaction_that_appends_stores_a_checkpoint_of_its_new_size(
    api: Any, db: Database
) -> None:
    api.screen("101-CP-1")
    api.randomize("101-CP-1", eligibility={**ELIGIBLE, "age_years": 17})  # refused: audited
    api.randomize("101-CP-1")
    key = _verifier_key(api)
    with db.reading() as session:
        size = session.scalar(select(text("size")).select_from(text("audit_head")))
        notes = session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)).all()
    sizes = [verify_checkpoint(note, key).size for note in notes]
    assert sizes[-3:] == [size - 2, size - 1, size]
    assert sizes == sorted(set(sizes))


@pytest.mark.requirement("R-AUD")
def test_reading_changes_nothing_and_issues_no_checkpoint(api: Any, db: Database) -> None:
    with db.reading() as session:
        before = session.scalar(select(text("count(*)")).select_from(AuditCheckpoint))
    api.get("/trial", "sponsor")
    api.get("/audit/checkpoint", "sponsor")
    with db.reading() as session:
        after = session.scalar(select(text("count(*)")).select_from(AuditCheckpoint))
    assert after == before


# Endpoints: roles and shapes (URS §8) ------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_every_user_may_read_the_checkpoint_and_anyone_the_verifier_key(api: Any) -> None:
    for user in ("coordinator-101", "pharmacist-102", "sponsor", "statistician", "admin"):
        response = api.get("/audit/checkpoint", user)
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        verify_checkpoint(response.get_data(as_text=True), _verifier_key(api))
    assert api.get("/audit/checkpoint").status_code == 401
    key = api.get("/audit/verifier-key")
    assert key.status_code == 200 and key.mimetype == "text/plain"
    assert key.get_data(as_text=True).startswith("sealroom/RECLAIIM+")


@pytest.mark.requirement("R-API")
def test_only_the_auditor_reads_entries_as_json_lines(api: Any, db: Database) -> None:
    response = api.get("/audit/entries?start=0&end=5", "auditor")
    assert response.status_code == 200
    assert response.mimetype == "application/jsonl"
    lines = response.get_data().split(b"\n")
    assert lines[-1] == b""
    with db.reading() as session:
        stored = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.seq < 5).order_by(AuditEntry.seq)
        ).all()
    assert [line.decode() for line in lines[:-1]] == stored
    for user in ("coordinator-101", "sponsor", "statistician", "admin", "medical-monitor"):
        assert api.get("/audit/entries?start=0", user).status_code == 403


@pytest.mark.requirement("R-API")
def test_entries_come_at_most_ten_thousand_at_a_time(api: Any) -> None:
    assert api.get("/audit/entries?start=0&end=10001", "auditor").status_code == 422
    assert api.get("/audit/entries?start=5&end=4", "auditor").status_code == 422
    assert api.get("/audit/entries?start=-1", "auditor").status_code == 422
    assert api.get("/audit/entries?start=x", "auditor").status_code == 422
    assert api.get("/audit/entries", "auditor").status_code == 422
    default = api.get("/audit/entries?start=0", "auditor").get_data().count(b"\n")
    assert 0 < default <= 1000


@pytest.mark.requirement("R-API")
def test_site_staff_get_inclusion_proofs_only_for_their_own_site(api: Any) -> None:
    seq = api.screen_and_randomize("101-INC-1").get_json()["receipt"]["seq"]
    size = seq + 1
    for user in ("coordinator-101", "investigator-101", "pharmacist-101", "auditor"):
        response = api.get(f"/audit/proof/inclusion?index={seq}&size={size}", user)
        assert response.status_code == 200, user
        assert set(response.get_json()) == {"index", "size", "hashes"}
    for user in ("coordinator-102", "pharmacist-201"):
        response = api.get(f"/audit/proof/inclusion?index={seq}&size={size}", user)
        assert response.status_code == 404
    for user in ("sponsor", "statistician", "admin", "medical-monitor"):
        response = api.get(f"/audit/proof/inclusion?index={seq}&size={size}", user)
        assert response.status_code == 403


@pytest.mark.requirement("R-API")
def test_proof_arguments_are_checked(api: Any) -> None:
    assert api.get("/audit/proof/inclusion?index=5&size=5", "auditor").status_code == 422
    assert api.get("/audit/proof/inclusion?index=0&size=0", "auditor").status_code == 422
    assert api.get("/audit/proof/inclusion?index=0&size=99999", "auditor").status_code == 422
    assert api.get("/audit/proof/consistency?first=0&second=3", "sponsor").status_code == 422
    assert api.get("/audit/proof/consistency?first=4&second=3", "sponsor").status_code == 422
    assert api.get("/audit/proof/consistency?first=1&second=99999", "sponsor").status_code == 422
    same = api.get("/audit/proof/consistency?first=3&second=3", "sponsor").get_json()
    assert same == {"first": 3, "second": 3, "hashes": []}


# Attacks on the stored log -----------------------------------------------------------------


@contextmanager
def behind_the_triggers(database: Database) -> Any:
    """A connection on which the append-only triggers do not fire (an attacker's)."""
    with database.engine.begin() as connection:
        if database.dialect == "postgresql":
            for table in APPEND_ONLY:
                connection.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            for table in APPEND_ONLY:
                for operation in ("update", "delete"):
                    connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_{operation}")
        yield connection
        if database.dialect == "postgresql":
            for table in APPEND_ONLY:
                connection.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.fixture
def own_trial(scratch: Any, backend: str, tmp_path: Path) -> Any:
    """A small trial database of this test's own, with a few randomisations in it."""
    from randomizer import create_app
    from tests.conftest import ApiClient, Clock

    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=12)
    app = create_app({"settings": trial.settings, "TESTING": True})
    client = ApiClient(app.test_client(), trial.tokens, Clock())
    for number in ("101-A-1", "101-A-2", "101-A-3"):
        assert client.screen_and_randomize(number).status_code == 201
    yield trial, client, app.extensions["sealroom"].db
    app.extensions["sealroom"].db.dispose()


def _verify(trial: Any, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", trial.url, "audit", "verify", *args],
        env={"SEALROOM_KEYS_DIR": str(trial.settings.keys_dir)},
    )


def _log(database: Database) -> list[str]:
    with database.reading() as session:
        return list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-CLI")
def test_a_good_log_verifies_against_the_published_key(own_trial: Any) -> None:
    trial, client, _db = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    result = _verify(trial, "--verifier-key", key)
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


@pytest.mark.requirement("R-AUD")
def test_changing_one_entry_names_that_entry(own_trial: Any) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = _log(database)
    target = len(log) - 5
    edited = json.loads(log[target])
    edited["actor"] = "someone-else"
    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
            {"c": canonical_bytes(edited).decode(), "s": target},
        )
    result = _verify(trial, "--verifier-key", key)
    assert result.exit_code == 1
    assert f"entry {target} " in result.output
    assert f"entry {target + 1} " not in result.output


@pytest.mark.requirement("R-AUD")
def test_deleting_the_last_entries_is_detected_as_truncation(
    own_trial: Any, tmp_path: Path
) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    saved = tmp_path / "saved-checkpoint.txt"
    saved.write_text(client.get("/audit/checkpoint", "auditor").get_data(as_text=True))
    log = _log(database)
    size = len(log)
    with behind_the_triggers(database) as connection:
        connection.execute(text("DELETE FROM audit_entry WHERE seq >= :s"), {"s": size - 3})
        connection.execute(text("DELETE FROM audit_checkpoint WHERE size > :s"), {"s": size - 3})
        connection.execute(
            text("UPDATE audit_head SET size = :s, last_hash = :h"),
            {"s": size - 3, "h": entry_hash(log[size - 4].encode())},
        )
    result = _verify(trial, "--verifier-key", key, "--checkpoint", str(saved))
    assert result.exit_code == 1
    assert "trunc" in result.output.lower() or "missing" in result.output.lower()


@pytest.mark.requirement("R-AUD")
def test_reordering_two_entries_is_detected_and_named(own_trial: Any) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = _log(database)
    first, second = len(log) - 4, len(log) - 3
    with behind_the_triggers(database) as connection:
        for seq, canonical in ((first, log[second]), (second, log[first])):
            connection.execute(
                text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
                {"c": canonical, "s": seq},
            )
    result = _verify(trial, "--verifier-key", key)
    assert result.exit_code == 1
    assert f"{first}" in result.output


# The head row is a lock and a cache: verify derives the log from the entries and the
# signed checkpoints, never from audit_head (issue 7, finding 2).


def _lower_head(connection: Any, log: list[str], size: int) -> None:
    """Make audit_head claim ``size`` entries, consistently (its hash that of entry size-1)."""
    connection.execute(
        text("UPDATE audit_head SET size = :s, last_hash = :h"),
        {"s": size, "h": entry_hash(log[size - 1].encode())},
    )


def _failed_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAILED")]


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("where", ["last", "middle"])
def test_an_edit_hidden_behind_a_lowered_head_is_found_and_named(
    own_trial: Any, where: str
) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = _log(database)
    target = len(log) - 1 if where == "last" else len(log) - 4
    edited = json.loads(log[target])
    edited["actor"] = "someone-else"
    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
            {"c": canonical_bytes(edited).decode(), "s": target},
        )
        # The head now ends just before the edit, and agrees with the entries below it.
        _lower_head(connection, log, target)

    result = _verify(trial, "--verifier-key", key)

    assert result.exit_code == 1, result.output
    failed = _failed_lines(result.output)
    assert failed and f"entry {target} was altered" in failed[0], result.output
    assert f"entry {target + 1} " not in result.output
    # The head row that disagrees with the entries is reported as well.
    assert any("head" in line and f"{len(log)} entries" in line for line in failed), failed


@pytest.mark.requirement("R-AUD")
def test_a_head_that_disagrees_with_the_entries_is_reported(own_trial: Any) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = _log(database)
    with behind_the_triggers(database) as connection:
        _lower_head(connection, log, len(log) - 2)
    lowered = _verify(trial, "--verifier-key", key)
    assert lowered.exit_code == 1, lowered.output
    assert "head" in lowered.output and f"{len(log)} entries" in lowered.output

    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_head SET size = :s, last_hash = :h"),
            {"s": len(log), "h": "ab" * 32},
        )
    wrong_hash = _verify(trial, "--verifier-key", key)
    assert wrong_hash.exit_code == 1, wrong_hash.output
    assert "head hash" in wrong_hash.output

    with behind_the_triggers(database) as connection:
        _lower_head(connection, log, len(log))
    assert _verify(trial, "--verifier-key", key).exit_code == 0


@pytest.mark.requirement("R-AUD")
def test_every_stored_checkpoint_is_checked_also_those_above_the_head(own_trial: Any) -> None:
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = _log(database)
    with database.reading() as session:
        latest = session.scalar(
            select(AuditCheckpoint.note).where(AuditCheckpoint.size == len(log))
        )
    checkpoint, _ = parse_checkpoint(latest)
    forged = sign_checkpoint(checkpoint, Ed25519PrivateKey.generate(), checkpoint.origin)
    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_checkpoint SET note = :n WHERE size = :s"),
            {"n": forged, "s": len(log)},
        )
        _lower_head(connection, log, len(log) - 1)

    result = _verify(trial, "--verifier-key", key)

    assert result.exit_code == 1, result.output
    assert f"(size {len(log)}) is not signed by the trusted key" in result.output


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-CLI")
def test_verify_holds_while_the_service_appends(own_trial: Any) -> None:
    """Verify reads one consistent log while another connection keeps appending."""
    import threading

    trial, client, _database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    stop = threading.Event()
    appended: list[int] = []
    errors: list[BaseException] = []

    def append() -> None:
        from randomizer.roles import SYSTEM
        from randomizer.services import users
        from randomizer.services.context import load_trial_context

        writer = Database(trial.url)
        try:
            with writer.reading() as session:
                ctx = load_trial_context(session, trial.settings.keys_dir)
            number = 0
            while not stop.is_set() and number < 200:
                with writer.transaction() as session:
                    users.add_user(session, ctx, SYSTEM, f"busy{number}", "auditor", None, None)
                appended.append(number)
                number += 1
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            writer.dispose()

    thread = threading.Thread(target=append)
    thread.start()
    try:
        results = []
        while len(results) < 8 and (len(appended) < 200 or not results):
            results.append(_verify(trial, "--verifier-key", key))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert appended, "nothing was appended while verify ran"
    for result in results:
        assert result.exit_code == 0, result.output
        assert "not covered" not in result.output
    assert _verify(trial, "--verifier-key", key).exit_code == 0


def _rewrite_log(database: Database, origin: str, signing_key: Ed25519PrivateKey) -> str:
    """Rewrite history: change an early entry, re-chain, rebuild the tree, re-sign every
    checkpoint with ``signing_key``. Returns the forged latest checkpoint."""
    log = [json.loads(c) for c in _log(database)]
    log[3]["data"] = {**log[3]["data"], "rewritten": True}
    with database.reading() as session:
        sizes = list(session.scalars(select(AuditCheckpoint.size).order_by(AuditCheckpoint.size)))
    store, prev, canonicals, nodes = MemoryNodeStore(), "0" * 64, [], []
    for seq, entry in enumerate(log):
        entry["prev"] = prev
        canonical = canonical_bytes(entry)
        new_nodes = nodes_for_append(seq, leaf_hash(canonical), store)
        store.put_nodes(new_nodes)
        nodes.extend(new_nodes)
        canonicals.append(canonical)
        prev = entry_hash(canonical)
    notes = {
        size: sign_checkpoint(Checkpoint(origin, size, root_hash(size, store)), signing_key, origin)
        for size in sizes
    }
    with behind_the_triggers(database) as connection:
        for seq, canonical in enumerate(canonicals):
            connection.execute(
                text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
                {"c": canonical.decode(), "s": seq},
            )
        connection.execute(text(f"DELETE FROM {AuditNode.__tablename__}"))
        for level, index, digest in nodes:
            connection.execute(
                text("INSERT INTO audit_node (level, node_index, hash) VALUES (:l, :i, :h)"),
                {"l": level, "i": index, "h": digest},
            )
        for size, note in notes.items():
            connection.execute(
                text("UPDATE audit_checkpoint SET note = :n WHERE size = :s"),
                {"n": note, "s": size},
            )
        connection.execute(text("UPDATE audit_head SET last_hash = :h"), {"h": prev})
    return notes[max(sizes)]


@pytest.mark.requirement("R-AUD")
def test_a_rewrite_resigned_by_another_key_is_detected(own_trial: Any, tmp_path: Path) -> None:
    trial, client, database = own_trial
    published = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    saved = tmp_path / "saved-checkpoint.txt"
    saved.write_text(client.get("/audit/checkpoint", "auditor").get_data(as_text=True))
    forger = Ed25519PrivateKey.generate()
    _rewrite_log(database, "sealroom/RECLAIIM", forger)
    forged_key = verifier_key_from_private("sealroom/RECLAIIM", forger).line()

    # Against the key obtained out of band: no stored checkpoint is signed by it.
    against_key = _verify(trial, "--verifier-key", published)
    assert against_key.exit_code == 1
    assert "not signed by the trusted key" in against_key.output
    # Even trusting the forger's key, a checkpoint saved earlier exposes the rewrite.
    against_saved = _verify(trial, "--verifier-key", forged_key, "--checkpoint", str(saved))
    assert against_saved.exit_code == 1
    # And the forged log is internally consistent: only outside evidence catches it.
    assert _verify(trial, "--verifier-key", forged_key).exit_code == 0


# The monitor --------------------------------------------------------------------------------


def _fetcher(client: Any, user: str = "sponsor") -> Any:
    def fetch(path: str) -> bytes:
        response = client.get(path, user)
        assert response.status_code == 200, response.get_data()
        return response.get_data()

    return fetch


@pytest.mark.requirement("R-AUD")
def test_the_monitor_accepts_a_log_that_grows(own_trial: Any, tmp_path: Path) -> None:
    _trial, client, _db = own_trial
    key = _verifier_key(client)
    first = check_log(_fetcher(client), key, tmp_path / "state")
    assert first.previous is None
    assert client.screen_and_randomize("101-A-4").status_code == 201
    second = check_log(_fetcher(client), key, tmp_path / "state")
    assert second.previous == first.latest
    assert second.latest.size > first.latest.size
    assert (tmp_path / "state" / "history.log").read_text().count("\n") == 2


@pytest.mark.requirement("R-AUD")
def test_the_monitor_raises_the_alarm_on_a_rewrite_signed_by_another_key(
    own_trial: Any, tmp_path: Path
) -> None:
    _trial, client, database = own_trial
    key = _verifier_key(client)
    check_log(_fetcher(client), key, tmp_path / "state")
    _rewrite_log(database, "sealroom/RECLAIIM", Ed25519PrivateKey.generate())
    with pytest.raises(MonitorAlarm, match="bad signature"):
        check_log(_fetcher(client), key, tmp_path / "state")


@pytest.mark.requirement("R-AUD")
def test_the_monitor_raises_the_alarm_on_a_fork_signed_by_the_stolen_key(
    own_trial: Any, tmp_path: Path
) -> None:
    trial, client, database = own_trial
    from keys import load_signing_key

    key = _verifier_key(client)
    check_log(_fetcher(client), key, tmp_path / "state")
    client.screen_and_randomize("101-A-5")
    _rewrite_log(database, "sealroom/RECLAIIM", load_signing_key(trial.settings.keys_dir))
    with pytest.raises(MonitorAlarm, match="fork"):
        check_log(_fetcher(client), key, tmp_path / "state")


@pytest.mark.requirement("R-AUD")
def test_the_monitor_raises_the_alarm_on_a_rollback(own_trial: Any, tmp_path: Path) -> None:
    _trial, client, database = own_trial
    key = _verifier_key(client)
    client.screen_and_randomize("101-A-6")
    check_log(_fetcher(client), key, tmp_path / "state")
    with database.reading() as session:
        latest = session.scalar(select(AuditCheckpoint.size).order_by(AuditCheckpoint.size.desc()))
    with behind_the_triggers(database) as connection:
        connection.execute(text("DELETE FROM audit_checkpoint WHERE size = :s"), {"s": latest})
    with pytest.raises(MonitorAlarm, match="rollback"):
        check_log(_fetcher(client), key, tmp_path / "state")


@pytest.mark.requirement("R-AUD")
def test_the_service_refuses_to_sign_over_a_rewritten_tree(own_trial: Any) -> None:
    _trial, client, database = own_trial
    before = len(_log(database))
    with database.reading() as session:
        checkpoints = session.scalar(select(func.count()).select_from(AuditCheckpoint))
    # The largest perfect subtree: every later root and proof is built on it.
    level = before.bit_length() - 1
    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_node SET hash = :h WHERE level = :l AND node_index = 0"),
            {"h": bytes(32), "l": level},
        )
    response = client.screen("101-A-7")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert len(_log(database)) == before
    with database.reading() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == checkpoints
        assert (
            session.scalar(
                select(func.count())
                .select_from(Participant)
                .where(Participant.screening_number == "101-A-7")
            )
            == 0
        )


# The head's compact range (issue 9) is a cache the service checks, never evidence.


def _forge_tree(connection: Any, canonicals: list[bytes], frontier: bytes | None) -> None:
    """Rewrite every tree node and the head as those entries make them, the head's frontier
    replaced by ``frontier`` when given: an attacker hiding an edit from the service."""
    store, nodes = MemoryNodeStore(), []
    for seq, canonical in enumerate(canonicals):
        new_nodes = nodes_for_append(seq, leaf_hash(canonical), store)
        store.put_nodes(new_nodes)
        nodes.extend(new_nodes)
    for level, index, digest in nodes:
        connection.execute(
            text("UPDATE audit_node SET hash = :h WHERE level = :l AND node_index = :i"),
            {"h": digest, "l": level, "i": index},
        )
    honest = compact_range(len(canonicals), store).to_bytes()
    connection.execute(
        text("UPDATE audit_head SET size = :s, last_hash = :h, frontier = :f"),
        {"s": len(canonicals), "h": entry_hash(canonicals[-1]), "f": frontier or honest},
    )


def _appends(client: Any, database: Database, number: str) -> bool:
    """Whether the service appends (a screening); a refusal must leave the log as it was."""
    before = len(_log(database))
    response = client.screen(number)
    if response.status_code == 201:
        return True
    assert response.status_code == 500, response.get_json()
    assert len(_log(database)) == before
    return False


@pytest.mark.requirement("R-AUD")
def test_the_service_refuses_to_sign_over_a_forged_head_and_tree(own_trial: Any) -> None:
    """An edit hidden by rewriting the nodes and the head's frontier to match it is refused:
    the root the head gives no longer is the one the last checkpoint signed."""
    _trial, client, database = own_trial
    log = [entry.encode() for entry in _log(database)]
    edited = json.loads(log[-1])
    edited["actor"] = "someone-else"
    with behind_the_triggers(database) as connection:
        connection.execute(
            text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
            {"c": canonical_bytes(edited).decode(), "s": len(log) - 1},
        )
        _forge_tree(connection, [*log[:-1], canonical_bytes(edited)], None)
    assert not _appends(client, database, "101-0001")


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-CLI")
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_stored_head_cache_cannot_fool_verify(own_trial: Any, data: Any) -> None:
    """Whatever the head's frontier says (honest, random, or recomputed over an edit), verify
    reads the entries and the signed checkpoints alone, and the service signs nothing over
    a frontier that is not the log's own."""
    trial, client, database = own_trial
    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    log = [entry.encode() for entry in _log(database)]
    with database.reading() as session:
        honest = bytes(session.scalar(select(text("frontier")).select_from(text("audit_head"))))
    # Draws that do not depend on the log's size, which grows when the service appends.
    back = data.draw(st.none() | st.integers(1, 4), label="edited entry, counted from the end")
    forged = data.draw(st.sampled_from(["honest", "random", "recomputed"]), label="frontier")
    actor = data.draw(st.sampled_from(["someone-else", "x"]), label="actor")
    noise = data.draw(st.binary(min_size=32 * 31, max_size=32 * 31), label="random frontier")
    target = None if back is None else len(log) - back
    canonicals = list(log)
    if target is not None:
        edited = json.loads(log[target])
        edited["actor"] = actor
        canonicals[target] = canonical_bytes(edited)
    frontier = {"honest": honest, "random": noise[: len(honest)], "recomputed": None}[forged]
    with behind_the_triggers(database) as connection:
        for seq in {target} - {None}:
            connection.execute(
                text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
                {"c": canonicals[seq].decode(), "s": seq},
            )
        _forge_tree(connection, canonicals if forged == "recomputed" else log, frontier)
    try:
        result = _verify(trial, "--verifier-key", key)
        if target is None:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 1, result.output
            assert f"entry {target} was altered" in _failed_lines(result.output)[0], result.output
        with database.reading() as session:
            stored = bytes(session.scalar(select(text("frontier")).select_from(text("audit_head"))))
        # The service does not reread the entries (verify does): it refuses a head whose
        # frontier is not the tree's, whatever the entries under it say.
        assert _appends(client, database, f"101-{len(log):04d}") == (stored == honest)
    finally:  # undo the forgery for the next example
        appended = len(_log(database)) > len(log)  # over an honest tree: nothing to redo
        with behind_the_triggers(database) as connection:
            for seq in {target} - {None}:
                connection.execute(
                    text("UPDATE audit_entry SET canonical = :c WHERE seq = :s"),
                    {"c": log[seq].decode(), "s": seq},
                )
            if not appended:
                _forge_tree(connection, log, honest)
