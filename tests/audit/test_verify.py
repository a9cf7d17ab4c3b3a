"""Verifying a whole log (URS §7, §9): tampering is detected and the altered entry is named."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_from_private
from audit.entry import ZERO_HASH, canonical_bytes, entry_hash, make_entry
from audit.merkle import (
    MemoryNodeStore,
    inclusion_proof,
    leaf_hash,
    nodes_for_append,
    root_from_leaves,
    verify_inclusion,
)
from audit.verify import verify_export_stream, verify_log

NAME = "sealroom/RECLAIIM"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
VERIFIER = verifier_key_from_private(NAME, KEY)
TRUSTED = "the trusted key sealroom/RECLAIIM+36566c03"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def entry_fields(seq, flavour=""):
    return {
        "seq": seq,
        "time": T0 + timedelta(minutes=seq),
        "actor": "coord101",
        "role": "coordinator",
        "action": "participant.screened",
        "subject": f"101-{seq:04d}",
        "data": {"site": "101", "strata": {"region": "north_america"}, "note": flavour},
    }


def chain(fields_list):
    """Canonical bytes of entries built from ``fields_list``, each chained to the one before."""
    entries, prev = [], ZERO_HASH
    for fields in fields_list:
        raw = canonical_bytes(make_entry(**fields, prev=prev))
        entries.append(raw)
        prev = entry_hash(raw)
    return entries


def build_entries(count, flavour=""):
    return chain([entry_fields(seq, flavour) for seq in range(count)])


def checkpoint_at(entries, size, key=KEY, name=NAME):
    root = root_from_leaves([leaf_hash(raw) for raw in entries[:size]])
    return sign_checkpoint(Checkpoint(NAME, size, root), key, name)


def checkpoints_for(entries, sizes=None, key=KEY):
    """Checkpoints as the service stores them: by default one per transaction (per entry)."""
    sizes = range(1, len(entries) + 1) if sizes is None else sizes
    return [checkpoint_at(entries, size, key) for size in sizes]


def edited(raw, **changes):
    """The entry with some fields changed, re-serialised canonically (as a forger would)."""
    entry = json.loads(raw)
    entry.update(changes)
    return canonical_bytes(entry)


def edit_data(raw):
    entry = json.loads(raw)
    return edited(raw, data={**entry["data"], "note": "edited"})


LOG = build_entries(40)
CHECKPOINTS = checkpoints_for(LOG)
EVERY_5 = checkpoints_for(LOG, range(5, 41, 5))
HEAD = entry_hash(LOG[-1])


def replaced(entries, position, raw):
    return [*entries[:position], raw, *entries[position + 1 :]]


# --- a good log --------------------------------------------------------------------------------


def test_a_good_log_verifies():
    report = verify_log(LOG, CHECKPOINTS, VERIFIER, head_hash=HEAD)
    assert report.ok
    assert (report.size, report.first_bad_seq, report.problems, report.warnings) == (
        40,
        None,
        [],
        [],
    )
    assert report.latest == Checkpoint(NAME, 40, root_from_leaves([leaf_hash(e) for e in LOG]))


def test_an_empty_log_verifies():
    empty_checkpoint = sign_checkpoint(Checkpoint(NAME, 0, root_from_leaves([])), KEY, NAME)
    report = verify_log([], [empty_checkpoint], VERIFIER)
    assert report.ok and report.size == 0 and report.latest.size == 0


def test_a_good_log_with_sparse_or_no_checkpoints_verifies_with_warnings():
    assert verify_log(LOG, EVERY_5, VERIFIER).ok
    report = verify_log(LOG, [], VERIFIER, head_hash=HEAD)
    assert report.ok
    assert report.warnings == [
        "no signed checkpoint covers the log: only the hash chain was checked, and a rewrite"
        " that recomputes the chain would go unnoticed"
    ]


def test_without_a_verifier_key_the_report_warns_that_it_proves_nothing():
    report = verify_log(LOG, CHECKPOINTS)
    assert report.ok
    assert report.warnings == [
        "no verifier key was given: checkpoint signatures were not checked, so this proves"
        " nothing against whoever holds the log's signing key"
    ]


def test_entries_not_yet_covered_by_a_checkpoint_are_a_warning():
    report = verify_log(LOG, CHECKPOINTS[:37], VERIFIER)
    assert report.ok
    assert report.warnings == ["entries 37 to 39 are not covered by any checkpoint yet"]


def test_an_exported_file_verifies_line_by_line():
    lines = [raw + b"\n" for raw in LOG]
    assert verify_export_stream(iter(lines), CHECKPOINTS, VERIFIER).ok
    tampered = replaced(lines, 17, edit_data(LOG[17]) + b"\n")
    assert verify_export_stream(iter(tampered), CHECKPOINTS, VERIFIER).first_bad_seq == 17


# --- an altered entry is named itself, not its successor ---------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 17, 38, 39])
def test_changing_one_entrys_data_names_that_entry(seq):
    log = replaced(LOG, seq, edit_data(LOG[seq]))
    report = verify_log(log, CHECKPOINTS, VERIFIER, head_hash=HEAD)
    assert not report.ok
    assert report.first_bad_seq == seq
    assert report.problems[0] == (
        f"entry {seq} was altered: its hash no longer matches the signed checkpoint of size"
        f" {seq + 1}"
    )


@pytest.mark.parametrize("seq", [0, 1, 17, 38, 39])
def test_changing_one_entrys_prev_names_that_entry(seq):
    log = replaced(LOG, seq, edited(LOG[seq], prev="ab" * 32))
    report = verify_log(log, CHECKPOINTS, VERIFIER, head_hash=HEAD)
    assert report.first_bad_seq == seq
    assert report.problems[0] == (
        f"entry {seq} was altered: its hash no longer matches the signed checkpoint of size"
        f" {seq + 1}"
    )


@pytest.mark.parametrize("seq", [15, 17, 19])
@pytest.mark.parametrize("field", ["data", "prev"])
def test_with_checkpoints_several_entries_apart_the_chain_pins_the_entry(seq, field):
    changed = edit_data(LOG[seq]) if field == "data" else edited(LOG[seq], prev="cd" * 32)
    report = verify_log(replaced(LOG, seq, changed), EVERY_5, VERIFIER)
    assert report.first_bad_seq == seq
    assert report.problems[0] == (
        f"entry {seq} was altered: its hash no longer matches the signed checkpoint of size 20"
    )


@pytest.mark.parametrize("field", ["data", "prev"])
def test_without_checkpoints_the_chain_and_head_hash_name_the_entry(field):
    for seq in (0, 17, 39):
        changed = edit_data(LOG[seq]) if field == "data" else edited(LOG[seq], prev="ef" * 32)
        report = verify_log(replaced(LOG, seq, changed), [], VERIFIER, head_hash=HEAD)
        assert report.first_bad_seq == seq
        where = (
            "its hash no longer matches the stored head hash"
            if seq == 39 and field == "data"
            else "the hash chain breaks at it"
        )
        assert report.problems == [f"entry {seq} was altered: {where} (no checkpoint covers it)"]


def test_an_edit_hidden_by_recomputing_the_chain_is_still_caught_by_the_checkpoints():
    fields = [entry_fields(seq) for seq in range(40)]
    fields[17]["data"] = {"site": "101", "note": "forged"}
    forged = chain(fields)  # every later prev recomputed: the chain alone looks perfect
    assert verify_log(forged, [], VERIFIER).ok

    report = verify_log(forged, CHECKPOINTS, VERIFIER)
    assert report.first_bad_seq == 17
    assert report.problems == [
        "entry 17 was altered: its hash no longer matches the signed checkpoint of size 18"
    ]
    # With checkpoints five entries apart, the window is what can be said.
    report = verify_log(forged, EVERY_5, VERIFIER)
    assert report.first_bad_seq == 15
    assert report.problems == [
        "one of entries 15 to 19 was altered and the chain after it recomputed: they no longer"
        " match the signed checkpoint of size 20"
    ]


def test_a_non_canonical_entry_is_named():
    spaced = LOG[17].replace(b'"seq":17', b'"seq": 17')
    report = verify_log(replaced(LOG, 17, spaced), CHECKPOINTS, VERIFIER)
    assert report.first_bad_seq == 17
    assert report.problems == [
        "entry 17 is not a valid entry (altered or corrupted): bytes are not the entry's"
        " canonical form"
    ]


def test_a_signer_who_signed_two_histories_is_caught():
    other_history = build_entries(10, flavour="other")
    log = LOG
    checkpoints = [*CHECKPOINTS[:9], checkpoint_at(other_history, 10), *CHECKPOINTS[10:]]
    report = verify_log(log, checkpoints, VERIFIER)
    assert not report.ok
    assert report.problems[-1] == (
        "the signed checkpoint of size 10 contradicts the checkpoint of size 40, which the log"
        " matches: the signing key signed two histories (fork)"
    )


# --- missing, truncated and misplaced entries --------------------------------------------------


def test_truncation_is_detected_from_a_stored_checkpoint_of_the_bigger_size():
    log = build_entries(42)
    report = verify_log(log[:40], checkpoints_for(log), VERIFIER)
    assert report.first_bad_seq == 40
    assert report.problems == [
        "entries 40 to 41 are missing: the log has 40 entries but checkpoint of size 42 was"
        " signed (truncation or rollback)"
    ]


def test_truncation_of_entries_and_checkpoints_is_detected_from_a_trusted_checkpoint():
    log = build_entries(42)
    saved_by_auditor = checkpoint_at(log, 42)
    report = verify_log(log[:30], checkpoints_for(log[:30]), VERIFIER, [saved_by_auditor])
    assert report.first_bad_seq == 30
    assert report.problems == [
        "entries 30 to 41 are missing: the log has 30 entries but the trusted checkpoint of"
        " size 42 was signed (truncation or rollback)"
    ]


def test_truncation_is_detected_from_the_head_hash_alone():
    report = verify_log(LOG[:39], CHECKPOINTS[:39], VERIFIER, head_hash=HEAD)
    assert report.first_bad_seq == 39
    assert report.problems == [
        "the stored head hash is not the hash of entry 38, which a signed checkpoint covers:"
        " later entries are missing (truncation) or the head record was altered"
    ]


def test_a_missing_entry_in_the_middle_is_named_by_its_seq():
    report = verify_log([*LOG[:5], *LOG[6:]], CHECKPOINTS, VERIFIER, head_hash=HEAD)
    assert report.first_bad_seq == 5
    assert report.problems[0] == "entry 5 is missing: position 5 holds the entry with seq 6"
    report = verify_log([*LOG[:5], *LOG[8:]], [], VERIFIER)
    assert report.problems[0] == "entries 5 to 7 are missing: position 5 holds the entry with seq 8"


def test_reordered_entries_are_named_by_position():
    log = [*LOG[:5], LOG[6], LOG[5], *LOG[7:]]
    report = verify_log(log, CHECKPOINTS, VERIFIER, head_hash=HEAD)
    assert report.first_bad_seq == 5
    assert report.problems == [
        "entry 5 is out of place: position 5 holds the entry with seq 6",
        "entry 6 is out of place: position 6 holds the entry with seq 5",
    ]


def test_an_inserted_copy_is_named():
    report = verify_log([*LOG[:8], LOG[5], *LOG[8:]], CHECKPOINTS, VERIFIER)
    assert report.first_bad_seq == 8
    assert report.problems[0] == "position 8 holds a second entry with seq 5 (inserted or copied)"


# --- rewrites and checkpoints ------------------------------------------------------------------


def test_a_whole_rewrite_re_signed_with_another_key_fails_against_the_verifier_key():
    rewritten = build_entries(40, flavour="rewritten")
    forged_checkpoints = checkpoints_for(rewritten, key=OTHER_KEY)
    # Checked only against the log's own checkpoints, without a key, it looks fine.
    assert verify_log(rewritten, forged_checkpoints).ok

    report = verify_log(rewritten, forged_checkpoints, VERIFIER)
    assert not report.ok
    assert report.first_bad_seq == 0
    assert report.problems == [
        f"checkpoint 0 (size 1) is not signed by {TRUSTED}",
        "other checkpoints are not signed by the trusted key either",
        "entries 0 to 39 are not covered by any checkpoint signed by the trusted key",
    ]
    assert report.latest is None


def test_a_whole_rewrite_is_caught_by_a_trusted_checkpoint():
    rewritten = build_entries(40, flavour="rewritten")
    saved_by_auditor = CHECKPOINTS[29]
    report = verify_log(
        rewritten, checkpoints_for(rewritten, key=OTHER_KEY), VERIFIER, [saved_by_auditor]
    )
    fork = "the log does not extend the trusted checkpoint of size 30: the history was rewritten"
    assert f"{fork} (fork)" in report.problems
    # Without a key the stored checkpoints are taken at their word, yet the rewrite shows.
    report = verify_log(
        rewritten, checkpoints_for(rewritten, key=OTHER_KEY), None, [saved_by_auditor]
    )
    assert report.problems == [
        "one of entries 0 to 29 was altered and the chain after it recomputed: they no longer"
        " match the trusted checkpoint of size 30",
        "the log does not extend the trusted checkpoint of size 30: the history was rewritten"
        " (fork)",
    ]
    assert report.warnings[0].startswith("no verifier key was given")


def test_a_rewrite_from_one_entry_on_is_located_between_checkpoints():
    fields = [entry_fields(seq) for seq in range(40)]
    for seq in range(25, 40):
        fields[seq]["data"] = {"site": "101", "note": "rewritten"}
    rewritten = chain(fields)
    checkpoints = [*CHECKPOINTS[:25], *checkpoints_for(rewritten, range(26, 41), key=OTHER_KEY)]
    report = verify_log(rewritten, checkpoints, VERIFIER, [CHECKPOINTS[29]])
    assert report.first_bad_seq == 25
    assert report.problems == [
        "one of entries 25 to 29 was altered and the chain after it recomputed: they no longer"
        " match the trusted checkpoint of size 30",
        f"checkpoint 25 (size 26) is not signed by {TRUSTED}",
        "other checkpoints are not signed by the trusted key either",
        "the log does not extend the trusted checkpoint of size 30: the history was rewritten"
        " (fork)",
        "entries 25 to 39 are not covered by any checkpoint signed by the trusted key",
    ]


def test_a_trusted_checkpoint_signed_by_another_key_is_refused():
    report = verify_log(LOG, CHECKPOINTS, VERIFIER, [checkpoint_at(LOG, 30, key=OTHER_KEY)])
    assert report.problems == [f"trusted checkpoint 0 (size 30) is not signed by {TRUSTED}"]


def test_one_damaged_checkpoint_signature_is_reported_without_blaming_entries():
    damaged = CHECKPOINTS[3].replace(CHECKPOINTS[3].split(" ")[-1][:4], "AAAA")
    checkpoints = replaced(CHECKPOINTS, 3, damaged)
    report = verify_log(LOG, checkpoints, VERIFIER)
    assert report.problems == [f"checkpoint 3 (size 4) is not signed by {TRUSTED}"]
    assert report.first_bad_seq is None


def test_an_unreadable_checkpoint_is_reported():
    report = verify_log(LOG, [*CHECKPOINTS, "garbage\n"], VERIFIER)
    assert report.problems == [
        "checkpoint 40 cannot be read: malformed checkpoint: no blank line before the signatures"
    ]


def test_checkpoints_stored_out_of_order_are_reported():
    checkpoints = [*CHECKPOINTS[:10], CHECKPOINTS[4], *CHECKPOINTS[10:]]
    report = verify_log(LOG, checkpoints, VERIFIER)
    assert report.problems == [
        "checkpoints are out of order: one of size 5 was stored after one of size 10 (rollback"
        " or tampering with the checkpoint table)"
    ]


# --- proofs about a verified log ---------------------------------------------------------------


def test_an_inclusion_proof_for_an_entry_verifies_only_at_its_own_index():
    store = MemoryNodeStore()
    for size, raw in enumerate(LOG):
        store.put_nodes(nodes_for_append(size, leaf_hash(raw), store))
    latest = verify_log(LOG, CHECKPOINTS, VERIFIER).latest
    proof = inclusion_proof(17, 40, store)
    assert verify_inclusion(leaf_hash(LOG[17]), 17, 40, proof, latest.root)
    assert not verify_inclusion(leaf_hash(LOG[17]), 18, 40, proof, latest.root)
    assert not verify_inclusion(leaf_hash(LOG[17]), 16, 40, proof, latest.root)
    assert not verify_inclusion(leaf_hash(edit_data(LOG[17])), 17, 40, proof, latest.root)


# --- any single tampering, anywhere ------------------------------------------------------------

SPARSE = {
    "every size": CHECKPOINTS,
    "every 5": EVERY_5,
    "every 7": checkpoints_for(LOG, [*range(7, 40, 7), 40]),
    "none": [],
}


@given(
    seq=st.integers(0, 39),
    how=st.sampled_from(["data", "prev", "seq", "malformed"]),
    checkpoints=st.sampled_from(sorted(SPARSE)),
)
def test_any_single_edit_names_the_edited_entry(seq, how, checkpoints):
    if how == "data":
        changed = edit_data(LOG[seq])
    elif how == "prev":
        changed = edited(LOG[seq], prev=entry_hash(b"elsewhere"))
    elif how == "seq":
        changed = edited(LOG[seq], seq=seq + 100)
    else:
        changed = LOG[seq] + b" "
    report = verify_log(replaced(LOG, seq, changed), SPARSE[checkpoints], VERIFIER, head_hash=HEAD)
    assert not report.ok
    assert report.first_bad_seq == seq
    assert str(seq) in report.problems[0]


@given(position=st.integers(0, 38), checkpoints=st.sampled_from(sorted(SPARSE)))
def test_any_swap_or_deletion_names_the_first_position(position, checkpoints):
    swapped = [*LOG[:position], LOG[position + 1], LOG[position], *LOG[position + 2 :]]
    report = verify_log(swapped, SPARSE[checkpoints], VERIFIER, head_hash=HEAD)
    assert report.first_bad_seq == position
    assert report.problems[0].startswith(f"entry {position} is out of place")

    report = verify_log([*LOG[:position], *LOG[position + 1 :]], SPARSE[checkpoints], VERIFIER)
    assert report.first_bad_seq == position
    assert report.problems[0].startswith(f"entry {position} is missing")


def test_an_edit_of_the_last_entries_without_a_head_hash_is_located_between_checkpoints():
    report = verify_log(replaced(LOG, 39, edit_data(LOG[39])), EVERY_5, VERIFIER)
    assert report.first_bad_seq == 35
    assert report.problems == [
        "one of entries 35 to 39 was altered: they no longer match the signed checkpoint of size 40"
    ]
    report = verify_log(replaced(LOG, 39, edit_data(LOG[39])), EVERY_5, VERIFIER, head_hash=HEAD)
    assert report.problems == [
        "entry 39 was altered: its hash no longer matches the signed checkpoint of size 40"
    ]


def test_an_empty_log_with_a_head_hash_is_missing_entries():
    report = verify_log([], [], VERIFIER, head_hash=HEAD)
    assert report.problems == [
        "entry 0 is missing: the log is empty but storage records a last entry"
    ]


# --- storage's head is a cache, not evidence (issue 7, finding 2) -------------------------------


def test_a_head_that_claims_the_whole_log_adds_nothing():
    assert verify_log(LOG, CHECKPOINTS, VERIFIER, head_hash=HEAD, head_size=40).ok


def test_a_head_lowered_to_hide_an_edit_of_the_last_entry_does_not_hide_it():
    log = replaced(LOG, 39, edit_data(LOG[39]))
    report = verify_log(log, CHECKPOINTS, VERIFIER, head_hash=entry_hash(LOG[38]), head_size=39)
    assert report.first_bad_seq == 39
    assert report.problems == [
        "entry 39 was altered: its hash no longer matches the signed checkpoint of size 40",
        "the stored head records 39 entries, but the log holds 40 entries: the head row was"
        " altered (every stored entry and checkpoint was verified all the same)",
    ]


def test_a_lowered_head_whose_hash_is_wrong_too_is_reported_once():
    report = verify_log(LOG, CHECKPOINTS, VERIFIER, head_hash=HEAD, head_size=30)
    assert report.first_bad_seq is None and not report.ok
    assert report.problems == [
        "the stored head records 30 entries, but the log holds 40 entries, and its hash is not"
        " that of entry 29 either: the head row was altered (every stored entry and checkpoint"
        " was verified all the same)"
    ]


def test_a_head_beyond_the_entries_names_the_first_missing_one():
    report = verify_log(LOG[:35], CHECKPOINTS[:35], VERIFIER, head_hash=HEAD, head_size=40)
    assert report.first_bad_seq == 35
    assert report.problems == [
        "entries 35 to 39 are missing: the stored head records 40 entries but the log holds 35"
        " (truncation, or the head row was altered)"
    ]
    # A checkpoint beyond the entries says it first; the head adds nothing to it.
    report = verify_log(LOG[:35], CHECKPOINTS, VERIFIER, head_hash=HEAD, head_size=40)
    assert report.problems == [
        "entries 35 to 39 are missing: the log has 35 entries but checkpoint of size 40 was"
        " signed (truncation or rollback)"
    ]


def test_the_head_hash_of_a_head_that_claims_the_last_entry_still_names_it():
    report = verify_log(LOG, CHECKPOINTS, VERIFIER, head_hash="ab" * 32, head_size=40)
    assert report.first_bad_seq == 40
    assert report.problems == [
        "the stored head hash is not the hash of entry 39, which a signed checkpoint covers:"
        " later entries are missing (truncation) or the head record was altered"
    ]


# --- speed without a different verdict (issue 9) ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["good", "an entry edited", "a signature by another key", "a note cut short"]
)
def test_signatures_checked_by_a_pool_of_processes_give_the_same_report(monkeypatch, case):
    entries, notes = list(LOG), list(CHECKPOINTS)
    if case == "an entry edited":
        entries[17] = edit_data(entries[17])
    elif case == "a signature by another key":
        notes[23] = checkpoint_at(LOG, 24, OTHER_KEY)
    elif case == "a note cut short":
        notes[30] = notes[30][:40]
    serial = verify_log(entries, notes, VERIFIER, head_hash=HEAD, processes=1)
    monkeypatch.setattr("audit.verify.PARALLEL_FROM", 10)  # a pool for 40 checkpoints
    pooled = verify_log(entries, notes, VERIFIER, head_hash=HEAD, processes=2)
    assert pooled == serial
    assert pooled.ok == (case == "good")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_JSON | st.sampled_from(["\ud800", {"k\u00e9": 1}, {"k": ["\udfff"]}, (1, 2)]))
def test_the_fast_check_of_entry_data_allows_exactly_what_the_full_check_allows(value):
    from audit.entry import AuditFormatError, _check_value, _plain_json

    def allowed(data):
        try:
            _check_value(data, "data")
        except AuditFormatError:
            return False
        return True

    # It may hand a value over to the full check (a tuple), never allow what that refuses;
    # on what JSON parsing gives (what audit verify checks) the two agree exactly.
    assert not _plain_json(value) or allowed(value)
    parsed = json.loads(json.dumps(value))
    assert _plain_json(parsed) == allowed(parsed)
