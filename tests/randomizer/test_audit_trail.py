"""The audit trail as stored (URS §7 R-AUD, R-NF-2).

Every change of state appends exactly one entry of URS §7's exact shape, chained to its
predecessor, in the same transaction as the change; the database refuses to change or
remove what was appended.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from audit.checkpoint import verify_checkpoint
from audit.entry import canonical_bytes, entry_hash, make_entry, parse_entry
from audit.merkle import CompactRange, compact_range, leaf_hash, verify_inclusion
from keys import SealedArm
from randomizer.db import savepoint
from randomizer.models import (
    AuditCheckpoint,
    AuditEntry,
    AuditHead,
    AuditNode,
    Kit,
    Participant,
    Slot,
    Stratum,
)
from randomizer.roles import SYSTEM, Actor
from randomizer.services import users
from randomizer.services.audit_log import AuditLog, SessionNodeStore
from randomizer.services.inputs import Submission
from randomizer.services.participants import (
    RandomizationRequest,
    ScreeningRequest,
    randomize_participant,
    screen_participant,
)
from tests.conftest import ELIGIBLE
from tests.randomizer.test_concurrency import assert_audit_log_verifies

ENTRY_KEYS = {"seq", "time", "actor", "role", "action", "subject", "data", "prev"}
RFC3339_MICROSECONDS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
COORDINATOR_101 = Actor(name="coordinator-101", role="coordinator", site="101")


def stored_log(db) -> list[str]:
    """Every entry's stored canonical text, in seq order."""
    with db.reading() as session:
        return list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))


def entries_since(db, size: int) -> list[dict[str, Any]]:
    """The entries appended after the log held ``size``, each checked against URS §7."""
    log = stored_log(db)
    new = []
    for seq in range(size, len(log)):
        new.append(assert_urs_entry(log[seq], log[seq - 1] if seq else None, seq))
    return new


def assert_urs_entry(canonical: str, previous: str | None, seq: int) -> dict[str, Any]:
    """URS §7: exactly these keys, contiguous seq, prev = SHA-256 of the predecessor, time."""
    raw = canonical.encode("utf-8")
    entry = parse_entry(raw)  # refuses floats and anything that is not canonical bytes
    assert set(entry) == ENTRY_KEYS
    assert entry["seq"] == seq
    expected_prev = "0" * 64 if previous is None else hashlib.sha256(previous.encode()).hexdigest()
    assert entry["prev"] == expected_prev
    assert RFC3339_MICROSECONDS_Z.match(entry["time"]), entry["time"]
    assert raw == canonical_bytes(entry)
    return entry


def one_entry_since(db, size: int) -> dict[str, Any]:
    entries = entries_since(db, size)
    assert len(entries) == 1, [entry["action"] for entry in entries]
    return entries[0]


# One entry per change, in the exact shape ---------------------------------------------------


@pytest.mark.requirement("R-AUD")
def test_the_whole_log_is_a_chain_from_seq_0_without_gaps(api, db):
    api.screen_and_randomize("101-CHAIN-1")
    api.screen_and_randomize("101-CHAIN-2", prior_ig="yes")

    log = stored_log(db)

    assert len(log) > 20
    for seq, canonical in enumerate(log):
        assert_urs_entry(canonical, log[seq - 1] if seq else None, seq)


@pytest.mark.requirement("R-AUD")
def test_screening_appends_one_participant_screened_entry(api, db, clock):
    size = len(stored_log(db))

    response = api.screen("101-AUD-1", prior_ig="yes")

    assert response.status_code == 201
    entry = one_entry_since(db, size)
    assert entry["action"] == "participant.screened"
    assert (entry["actor"], entry["role"], entry["subject"]) == (
        "coordinator-101",
        "coordinator",
        "101-AUD-1",
    )
    assert entry["data"] == {
        "site": "101",
        "screened_on": clock.today().isoformat(),
        "strata": {"prior_ig": "yes"},
        "number_assigned": False,
    }


@pytest.mark.requirement("R-AUD")
def test_randomisation_appends_one_participant_randomized_entry(api, db, ctx):
    assert api.screen("101-AUD-2").status_code == 201
    size = len(stored_log(db))

    response = api.randomize("101-AUD-2", weight_kg=70.5)

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    entry = one_entry_since(db, size)
    assert entry["action"] == "participant.randomized"
    assert (entry["actor"], entry["role"], entry["subject"]) == (
        "coordinator-101",
        "coordinator",
        "101-AUD-2",
    )
    data = entry["data"]
    assert data["randomization_number"] == body["randomization_number"]
    assert data["stratum"] == body["stratum"] == "region=north_america|prior_ig=no"
    assert data["kits"] == sorted(body["kits"]) and len(data["kits"]) == 4
    assert data["weight_kg"] == "70.5"
    # Decimals are strings, integers integers, booleans booleans: no floats (URS §7).
    assert data["eligibility"] == {
        "age_years": 54,
        "eular_acr_dm": True,
        "prednisolone_mg_per_day": "10",
        "pga_vas_cm": "4.5",
        "mmt8": 120,
        "cdasi_activity": 20,
        "malignancy_within_5_years": False,
        "cancer_associated_myositis": False,
        "pgd_vas_cm": "1.0",
        "improved_since_screening": False,
    }
    assert set(data["sealed_arm"]) == {"key_id", "nonce", "ciphertext"}
    # The sealed arm is the participant's own arm, sealed to the participant.
    entry_arm = ctx.sealer.unseal_arm(
        SealedArm.from_json(data["sealed_arm"]), "participant", "101-AUD-2"
    )
    with db.reading() as session:
        stored = session.scalars(
            select(Participant.sealed_arm).where(Participant.screening_number == "101-AUD-2")
        ).one()
    assert entry_arm == ctx.sealer.unseal_arm(
        SealedArm.from_text(stored), "participant", "101-AUD-2"
    )
    # The receipt is this very entry (R-RCPT).
    assert body["receipt"]["seq"] == entry["seq"]
    assert body["receipt"]["entry"] == stored_log(db)[entry["seq"]]


@pytest.mark.requirement("R-AUD")
def test_an_ineligible_randomisation_appends_one_refusal_naming_the_failed_rules(api, db):
    assert api.screen("101-AUD-3").status_code == 201
    size = len(stored_log(db))

    response = api.randomize(
        "101-AUD-3", eligibility={**ELIGIBLE, "age_years": 17, "pgd_vas_cm": 3}
    )

    assert response.status_code == 422
    entry = one_entry_since(db, size)
    assert entry["action"] == "participant.randomization_refused"
    assert entry["subject"] == "101-AUD-3"
    assert entry["data"]["reason"] == "ineligible"
    assert entry["data"]["failed_rules"] == ["I1", "E3"]


@pytest.mark.requirement("R-AUD")
def test_a_randomisation_outside_the_screening_window_appends_one_refusal_with_its_reason(
    api, db, clock
):
    assert (
        api.screen("101-AUD-4", screened_on=clock.today() - timedelta(days=22)).status_code == 201
    )
    size = len(stored_log(db))

    response = api.randomize("101-AUD-4")

    assert response.status_code == 422
    entry = one_entry_since(db, size)
    assert entry["action"] == "participant.randomization_refused"
    assert entry["data"]["reason"] == "screening-window"


@pytest.mark.requirement("R-AUD")
def test_adding_a_user_appends_one_user_created_entry_without_the_token(db, ctx):
    size = len(stored_log(db))

    with db.transaction() as session:
        _user, token = users.add_user(session, ctx, SYSTEM, "alice", "coordinator", "101")

    entry = one_entry_since(db, size)
    assert entry["action"] == "user.created"
    assert (entry["actor"], entry["role"], entry["subject"]) == ("system", "system", "alice")
    assert entry["data"] == {"user": "alice", "role": "coordinator", "site": "101"}
    assert token not in stored_log(db)[-1]


@pytest.mark.requirement("R-AUD")
def test_deactivating_a_user_appends_one_user_deactivated_entry(db, ctx):
    with db.transaction() as session:
        users.add_user(session, ctx, SYSTEM, "bob", "auditor", None)
    size = len(stored_log(db))

    with db.transaction() as session:
        users.deactivate_user(session, ctx, SYSTEM, "bob")

    entry = one_entry_since(db, size)
    assert entry["action"] == "user.deactivated"
    assert (entry["actor"], entry["subject"], entry["data"]) == ("system", "bob", {"user": "bob"})


# The change and its entry commit together (R-NF-2) ------------------------------------------


class AuditUnavailable(RuntimeError):
    """Stands for a crash between a change and its entry."""


def fail_after(real):
    """An append that does its work and then fails: the entry is written, then we crash."""

    def append(*args, **kwargs):
        real(*args, **kwargs)
        raise AuditUnavailable

    return append


def refuse(*_args, **_kwargs):
    raise AuditUnavailable


def screening(number: str, ctx) -> ScreeningRequest:
    return ScreeningRequest(number, "101", ctx.today(), {"prior_ig": "no"})


def participants_named(db, number: str) -> list[Participant]:
    with db.reading() as session:
        return list(
            session.scalars(select(Participant).where(Participant.screening_number == number))
        )


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("failure", ["append refuses", "append fails after writing"])
def test_a_screening_whose_entry_fails_leaves_no_participant(db, ctx, monkeypatch, failure):
    size = len(stored_log(db))
    monkeypatch.setattr(
        ctx.audit, "append", refuse if failure == "append refuses" else fail_after(ctx.audit.append)
    )

    with pytest.raises(AuditUnavailable), db.transaction() as session:
        screen_participant(session, ctx, COORDINATOR_101, screening("101-ATOM-1", ctx))

    assert participants_named(db, "101-ATOM-1") == []
    assert len(stored_log(db)) == size


@pytest.mark.requirement("R-NF-2")
def test_a_screening_whose_checkpoint_fails_at_commit_leaves_neither_participant_nor_entry(
    db, ctx, monkeypatch
):
    size = len(stored_log(db))
    # The checkpoint is signed just before the commit, after the entry was appended.
    monkeypatch.setattr(ctx.audit, "checkpoint", refuse)

    with pytest.raises(AuditUnavailable), db.transaction() as session:
        screen_participant(session, ctx, COORDINATOR_101, screening("101-ATOM-2", ctx))

    assert participants_named(db, "101-ATOM-2") == []
    assert len(stored_log(db)) == size


def randomisation_state(db) -> dict[str, Any]:
    """Everything a randomisation at site 101, stratum 2 changes."""
    with db.reading() as session:
        return {
            "cursor": session.scalar(select(Stratum.next_position).where(Stratum.number == 2)),
            "used slots": session.scalar(
                select(func.count()).select_from(Slot).where(Slot.participant_id.is_not(None))
            ),
            "kits by status": sorted(
                session.execute(
                    select(Kit.status, func.count())
                    .where(Kit.site_id == "101")
                    .group_by(Kit.status)
                ).all()
            ),
            "participant": [
                (p.status, p.randomization_number, p.sealed_arm, p.weight_kg)
                for p in session.scalars(
                    select(Participant).where(Participant.screening_number == "101-ATOM-3")
                )
            ],
            "log size": len(stored_log(db)),
        }


@pytest.mark.requirement("R-NF-2")
@pytest.mark.parametrize("failure", ["append refuses", "append fails after writing"])
def test_a_randomisation_whose_entry_fails_leaves_slot_kits_and_participant_untouched(
    db, ctx, monkeypatch, failure
):
    with db.transaction() as session:
        screen_participant(session, ctx, COORDINATOR_101, screening("101-ATOM-3", ctx))
    before = randomisation_state(db)
    monkeypatch.setattr(
        ctx.audit, "append", refuse if failure == "append refuses" else fail_after(ctx.audit.append)
    )
    request = RandomizationRequest(
        Decimal(70),
        {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in ELIGIBLE.items()},
    )

    with pytest.raises(AuditUnavailable), db.transaction() as session:
        randomize_participant(session, ctx, COORDINATOR_101, "101-ATOM-3", Submission.of(request))

    assert randomisation_state(db) == before
    assert before["participant"] == [("screened", None, None, None)]


@pytest.mark.requirement("R-NF-2")
def test_a_randomisation_through_the_api_whose_entry_fails_changes_nothing(api, db, monkeypatch):
    from randomizer.services.audit_log import AuditLog

    assert api.screen("101-ATOM-3").status_code == 201
    before = randomisation_state(db)
    monkeypatch.setattr(AuditLog, "append", refuse)

    try:
        response = api.randomize("101-ATOM-3")
    except AuditUnavailable:
        pass  # the test app propagates exceptions
    else:
        assert response.status_code == 500

    assert randomisation_state(db) == before


# The database refuses to rewrite the trail -------------------------------------------------

#: An UPDATE that would forge each append-only table.
FORGERIES = {
    "audit_entry": "UPDATE audit_entry SET canonical = '{}' WHERE seq = 0",
    "audit_node": "UPDATE audit_node SET level = level + 100",
    "audit_checkpoint": "UPDATE audit_checkpoint SET note = 'forged'",
}


def table_contents(db, table: str) -> list[tuple]:
    with db.reading() as session:
        return [tuple(row) for row in session.execute(text(f"SELECT * FROM {table}"))]


def assert_refused(db, table: str, statement: str) -> None:
    before = table_contents(db, table)
    assert before, f"{table} is empty: a row trigger would have nothing to refuse"

    with pytest.raises(DBAPIError) as refusal, db.transaction() as session:
        session.execute(text(statement))

    assert "append-only" in str(refusal.value)
    assert sorted(table_contents(db, table)) == sorted(before)


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("table", sorted(FORGERIES))
def test_the_database_refuses_update_on_audit_tables(db, table):
    assert_refused(db, table, FORGERIES[table])


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("table", sorted(FORGERIES))
def test_the_database_refuses_delete_on_audit_tables(db, table):
    assert_refused(db, table, f"DELETE FROM {table}")


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("table", sorted(FORGERIES))
def test_postgresql_refuses_truncate_on_audit_tables(db, backend, table):
    if backend != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    assert_refused(db, table, f"TRUNCATE {table}")


#: Forgeries by INSERT. SQLite's REPLACE removes the row in its way without firing DELETE
#: triggers; an upsert turns the insert into an UPDATE.
REPLACEMENTS = {
    "audit_entry": "REPLACE INTO audit_entry (seq, canonical, action, subject, site_id) "
    "SELECT seq, '{}', action, subject, site_id FROM audit_entry WHERE seq = 0",
    "audit_node": "REPLACE INTO audit_node (level, node_index, hash) "
    "SELECT level, node_index, zeroblob(32) FROM audit_node WHERE level = 0 AND node_index = 0",
    "audit_checkpoint": "REPLACE INTO audit_checkpoint (size, note, created_at) "
    "SELECT size, 'forged', created_at FROM audit_checkpoint "
    "WHERE size = (SELECT MIN(size) FROM audit_checkpoint)",
}
UPSERTS = {
    "audit_entry": "INSERT INTO audit_entry (seq, canonical, action, subject, site_id) "
    "SELECT seq, '{}', action, subject, site_id FROM audit_entry WHERE seq = 0 "
    "ON CONFLICT (seq) DO UPDATE SET canonical = excluded.canonical",
    "audit_node": "INSERT INTO audit_node (level, node_index, hash) "
    "SELECT level, node_index, hash FROM audit_node WHERE level = 0 AND node_index = 0 "
    "ON CONFLICT (level, node_index) DO UPDATE SET hash = excluded.hash",
    "audit_checkpoint": "INSERT INTO audit_checkpoint (size, note, created_at) "
    "SELECT size, 'forged', created_at FROM audit_checkpoint "
    "WHERE size = (SELECT MIN(size) FROM audit_checkpoint) "
    "ON CONFLICT (size) DO UPDATE SET note = excluded.note",
}


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("table", sorted(REPLACEMENTS))
def test_sqlite_refuses_replace_into_audit_tables(db, backend, table):
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no REPLACE")
    assert_refused(db, table, REPLACEMENTS[table])


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("table", sorted(UPSERTS))
def test_the_database_refuses_an_upsert_over_audit_rows(db, table):
    assert_refused(db, table, UPSERTS[table])


# Appendix A --------------------------------------------------------------------------------


@pytest.mark.requirement("R-AUD")
def test_appendix_a_canonical_bytes_hash_and_leaf_hash():
    entry = make_entry(
        seq=0,
        time=datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC),
        actor="system",
        role="system",
        action="trial.initialised",
        subject="RECLAIIM",
        data={"trial": "RECLAIIM", "weight_kg": "70.5"},
        prev="0" * 64,
    )

    canonical = canonical_bytes(entry)

    assert canonical == (
        b'{"action":"trial.initialised","actor":"system","data":{"trial":"RECLAIIM",'
        b'"weight_kg":"70.5"},"prev":"0000000000000000000000000000000000000000000000000000000'
        b'000000000","role":"system","seq":0,"subject":"RECLAIIM",'
        b'"time":"2026-11-29T08:00:00.000000Z"}'
    )
    assert entry_hash(canonical) == (
        "ee97bad56ca7dbc3bb80228aeceac493e77893e8341426b73b6dea3c1e43ace3"
    )
    assert leaf_hash(canonical).hex() == (
        "5a0c199c61becf904ab898569258b4ae4f30ae54e4d7ecd42e7038e821bca07d"
    )
    assert parse_entry(canonical) == entry


# Receipts (R-RCPT) ------------------------------------------------------------------------


def assert_receipt_proves(receipt: dict[str, Any], entry: Any, ctx: Any) -> Any:
    """The receipt's checkpoint is the first to include ``entry`` and its proof proves it."""
    checkpoint = verify_checkpoint(receipt["checkpoint"], ctx.audit.verifier_key)
    assert checkpoint.size == entry.seq + 1
    assert verify_inclusion(
        leaf_hash(entry.canonical),
        entry.seq,
        checkpoint.size,
        [base64.b64decode(h) for h in receipt["inclusion_proof"]],
        checkpoint.root,
    )
    return checkpoint


@pytest.mark.requirement("R-RCPT")
def test_a_receipts_inclusion_proof_is_the_one_the_stored_tree_gives(db, ctx):
    """The receipt's proof is built from the compact range at the append (no node read): it
    is the proof the stored nodes give, and it proves the entry under the checkpoint's root,
    at every size (each power of two and its neighbours included)."""
    for _ in range(40):
        with db.transaction() as session:
            entry = ctx.audit.append(session, SYSTEM, "test.appended", None, {})
            receipt = ctx.audit.receipt(session, entry)
        with db.reading() as session:
            stored = AuditLog.inclusion_proof(session, entry.seq, entry.seq + 1)
        assert receipt["inclusion_proof"] == stored
        assert_receipt_proves(receipt, entry, ctx)


def test_the_node_store_reads_exactly_the_nodes_asked_for_whatever_the_shape(db, ctx):
    """Its queries are built once per shape (levels and indexes per level), then bound: each
    call must still read the nodes it names and no other, missing ones left out."""
    for _ in range(37):
        with db.transaction() as session:
            ctx.audit.append(session, SYSTEM, "test.appended", None, {})
    with db.reading() as session:
        every = {
            (level, index): bytes(digest)
            for level, index, digest in session.execute(
                select(AuditNode.level, AuditNode.node_index, AuditNode.hash)
            )
        }
        store = SessionNodeStore(session)
        asked_sets = [
            [(0, 5)],
            [(0, 5), (0, 6), (2, 1)],
            [(5, 0), (2, 8), (0, 36)],
            [(1, 3), (1, 2), (0, 99), (7, 0)],  # two missing
            [(3, 0), (3, 1), (3, 2), (3, 3), (3, 4)],
        ]
        for asked in asked_sets * 2:  # the second time from the cached queries
            assert store.get_nodes(asked) == {c: every[c] for c in asked if c in every}


@pytest.mark.requirement("R-RCPT")
def test_a_checkpoint_signed_in_work_a_savepoint_undid_is_never_handed_out_again(db, ctx):
    """A refusal undoes its work in a savepoint, then appends its own entry, at the same size
    the undone work had reached: its checkpoint must be signed over its own tree and stored,
    never the undone work's (whose row the savepoint removed)."""
    with db.transaction() as session:
        with pytest.raises(RuntimeError), savepoint(session):
            undone = ctx.audit.append(session, SYSTEM, "test.undone", None, {"n": 1})
            ctx.audit.receipt(session, undone)  # signs the checkpoint of its size
            raise RuntimeError("undo the block")
        kept = ctx.audit.append(session, SYSTEM, "test.kept", None, {"n": 2})
        receipt = ctx.audit.receipt(session, kept)
    assert kept.seq == undone.seq
    checkpoint = assert_receipt_proves(receipt, kept, ctx)
    with db.reading() as session:
        assert AuditLog.checkpoint_at(session, checkpoint.size) == receipt["checkpoint"]


@pytest.mark.requirement("R-AUD")
def test_an_entrys_insert_files_the_tree_nodes_its_append_completed(db, ctx):
    """Each entry records the nodes its leaf completes, level 0 up, and its insert stores
    each as the node (level, seq >> level) (migration 0014's trigger): at seqs with no, one
    and several trailing 1 bits, the very nodes a tree built from the entries alone has."""
    for _ in range(16):
        with db.transaction() as session:
            ctx.audit.append(session, SYSTEM, "test.appended", None, {})
    with db.reading() as session:
        entries = session.execute(
            select(AuditEntry.seq, AuditEntry.canonical, AuditEntry.nodes).order_by(AuditEntry.seq)
        ).all()
        stored = {
            (level, index): bytes(digest)
            for level, index, digest in session.execute(
                select(AuditNode.level, AuditNode.node_index, AuditNode.hash)
            )
        }
    tree = CompactRange()
    for seq, canonical, nodes in entries:
        completed = tree.append(leaf_hash(canonical.encode("utf-8")))
        assert [stored[(level, index)] for level, index, _ in completed] == [
            digest for _, _, digest in completed
        ]
        assert bytes(nodes) == b"".join(digest for _, _, digest in completed)
        assert [(level, index) for level, index, _ in completed] == [
            (level, seq >> level) for level in range(len(nodes) // 32)
        ]
    assert any(len(nodes) >= 4 * 32 for _, _, nodes in entries)  # seq 15 at least
    assert len(stored) == sum(len(nodes) // 32 for _, _, nodes in entries)


def _head(session: Any) -> tuple[int, str, bytes]:
    size, last_hash, frontier = session.execute(
        select(AuditHead.size, AuditHead.last_hash, AuditHead.frontier)
    ).one()
    return size, last_hash, bytes(frontier)


@pytest.mark.requirement("R-AUD")
def test_the_head_row_moves_once_a_transaction_with_its_stored_checkpoint(db, ctx):
    """Appends leave the head row alone; storing the transaction's checkpoint moves it (the
    trigger of migration 0013) to the head that checkpoint records: its size, the hash of
    its last entry and the tree's compact range, the one the stored nodes give."""
    with db.reading() as session:
        before = _head(session)
    with db.transaction() as session:
        ctx.audit.append(session, SYSTEM, "test.appended", None, {"n": 1})
        second = ctx.audit.append(session, SYSTEM, "test.appended", None, {"n": 2})
        assert _head(session) == before
        assert AuditLog.size(session) == before[0] + 2
        ctx.audit.receipt(session, second)  # stores the checkpoint now
        assert _head(session)[0] == before[0] + 2
    with db.reading() as session:
        head = _head(session)
        stored = session.execute(
            select(AuditCheckpoint.size, AuditCheckpoint.last_hash, AuditCheckpoint.frontier)
            .order_by(AuditCheckpoint.size.desc())
            .limit(1)
        ).one()
        from_nodes = compact_range(head[0], SessionNodeStore(session)).to_bytes()
    assert head == (before[0] + 2, entry_hash(second.canonical), from_nodes)
    assert (stored.size, stored.last_hash, bytes(stored.frontier)) == head


@pytest.mark.requirement("R-AUD")
def test_the_database_refuses_a_checkpoint_that_would_move_the_head_back(db, ctx):
    with db.transaction() as session:  # two appends, one checkpoint: size - 1 has none
        ctx.audit.append(session, SYSTEM, "test.appended", None, {"n": 1})
        ctx.audit.append(session, SYSTEM, "test.appended", None, {"n": 2})
    with db.reading() as session:
        head = _head(session)
        checkpoints = session.scalar(select(func.count()).select_from(AuditCheckpoint))
    with pytest.raises(DBAPIError) as refusal, db.transaction() as session:
        session.execute(
            insert(AuditCheckpoint).values(
                size=head[0] - 1,
                note="forged",
                created_at=datetime.now(UTC),
                last_hash="0" * 64,
                frontier=bytes(32),
            )
        )
    assert "behind the audit head" in str(refusal.value)
    with db.reading() as session:
        assert _head(session) == head
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == checkpoints


@pytest.mark.requirement("R-AUD")
def test_a_savepoint_rolled_back_after_appends_of_its_own_gives_the_head_back(db, ctx):
    """The head row moves only at the checkpoint, so the head a rolled-back savepoint found
    (after its transaction's earlier appends) is only in the session: the next append must
    follow the last entry kept, and the checkpoint the undone work signed is never used."""
    with db.transaction() as session:
        kept = ctx.audit.append(session, SYSTEM, "test.kept", None, {"n": 1})  # not signed yet
        with pytest.raises(RuntimeError), savepoint(session):
            undone = ctx.audit.append(session, SYSTEM, "test.undone", None, {"n": 2})
            ctx.audit.receipt(session, undone)
            raise RuntimeError("undo the block")
        assert AuditLog.size(session) == kept.seq + 1
        after = ctx.audit.append(session, SYSTEM, "test.after", None, {"n": 3})
        receipt = ctx.audit.receipt(session, after)
    assert after.seq == undone.seq == kept.seq + 1
    assert parse_entry(after.canonical)["prev"] == entry_hash(kept.canonical)
    assert_receipt_proves(receipt, after, ctx)
    with db.reading() as session:
        assert _head(session)[:2] == (after.seq + 1, entry_hash(after.canonical))
        assert_audit_log_verifies(session, ctx)
