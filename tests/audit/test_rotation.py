"""Signing-key hand-overs in the pure verifier (R-KEY-1): a verifier holding either key
follows the change only through the checkpoint both keys sign, and refuses any other."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import Checkpoint, cosign_checkpoint, verifier_key_from_private
from audit.merkle import leaf_hash, root_from_leaves
from audit.rotation import rotation_data
from audit.verify import verify_log
from tests.audit.test_verify import KEY, NAME, chain, checkpoint_at, entry_fields

NEW_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
THIRD_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
OLD = verifier_key_from_private(NAME, KEY)
NEW = verifier_key_from_private(NAME, NEW_KEY)
THIRD = verifier_key_from_private(NAME, THIRD_KEY)
ROTATED_AT = 10  # the key.rotated entry's seq: the hand-over is the checkpoint of size 11


def rotated_log(total=20, old=OLD, new=NEW, seq=ROTATED_AT):
    fields = [entry_fields(i) for i in range(total)]
    fields[seq] = {
        **fields[seq],
        "actor": "system",
        "role": "system",
        "action": "key.rotated",
        "subject": new.label(),
        "data": rotation_data(old, new),
    }
    return chain(fields)


def cosigned(entries, size, signers):
    root = root_from_leaves([leaf_hash(raw) for raw in entries[:size]])
    return cosign_checkpoint(Checkpoint(NAME, size, root), [(k, NAME) for k in signers])


def notes(entries, hand_over=(KEY, NEW_KEY), after=NEW_KEY, seq=ROTATED_AT):
    """One checkpoint per transaction: the old key's, the hand-over, then ``after``'s."""
    size = seq + 1
    return (
        [checkpoint_at(entries, n) for n in range(1, size)]
        + [cosigned(entries, size, hand_over)]
        + [checkpoint_at(entries, n, after) for n in range(size + 1, len(entries) + 1)]
    )


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("trusted", [OLD, NEW], ids=["old key, forward", "new key, backward"])
def test_either_key_verifies_the_log_across_the_hand_over(trusted):
    entries = rotated_log()

    report = verify_log(entries, notes(entries), trusted)

    assert report.ok, report.problems
    assert report.latest is not None and report.latest.size == len(entries)


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("trusted", [OLD, NEW])
def test_a_hand_over_signed_by_one_key_only_is_refused(trusted):
    entries = rotated_log()

    for signers in ((KEY,), (NEW_KEY,)):
        hand_over = notes(entries, hand_over=signers)
        hand_over[ROTATED_AT] = (
            checkpoint_at(entries, ROTATED_AT + 1, signers[0])
            if len(signers) == 1
            else hand_over[ROTATED_AT]
        )
        report = verify_log(entries, hand_over, trusted)
        assert not report.ok
        assert any("has no hand-over checkpoint" in problem for problem in report.problems)


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("trusted", [OLD, NEW])
def test_a_key_change_without_a_hand_over_is_an_alarm(trusted):
    entries = rotated_log()
    # After the hand-over, a third key signs: no entry announced it.
    report = verify_log(entries, notes(entries, after=THIRD_KEY), trusted)

    assert not report.ok
    assert any("is not signed by the trusted key" in problem for problem in report.problems)


@pytest.mark.requirement("R-KEY-1")
def test_a_rotation_entry_without_a_cosigned_checkpoint_is_not_followed():
    entries = rotated_log()
    # The new key signs from the rotation on, but no checkpoint carries both signatures.
    unsigned = [checkpoint_at(entries, n) for n in range(1, ROTATED_AT + 1)] + [
        checkpoint_at(entries, n, NEW_KEY) for n in range(ROTATED_AT + 1, len(entries) + 1)
    ]

    report = verify_log(entries, unsigned, OLD)

    assert not report.ok
    assert any("is not signed by the trusted key" in problem for problem in report.problems)
    assert any("has no hand-over checkpoint" in problem for problem in report.problems)


@pytest.mark.requirement("R-KEY-1")
def test_a_forged_rotation_to_the_forgers_key_is_refused():
    # Someone without the trusted key appends a key.rotated entry handing over to their own
    # key, and signs with it: the hand-over lacks the trusted key's signature.
    entries = rotated_log(new=THIRD)
    forged = notes(entries, hand_over=(THIRD_KEY, THIRD_KEY), after=THIRD_KEY)

    report = verify_log(entries, forged, OLD)

    assert not report.ok


@pytest.mark.requirement("R-KEY-1")
def test_a_trusted_key_outside_the_chain_trusts_nothing():
    entries = rotated_log()

    report = verify_log(entries, notes(entries), THIRD)

    assert not report.ok
    assert any("is not signed by the trusted key" in problem for problem in report.problems)
