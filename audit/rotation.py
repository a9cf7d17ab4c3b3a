"""Signing-key hand-overs (R-KEY-1): how a verifier follows the log's key from one to the next.

``sealroom keys rotate-signing`` appends one ``key.rotated`` entry (``data.key`` =
``signing``) naming the outgoing and incoming verifier keys (public keys: nothing secret), and
the checkpoint of exactly that transaction, the *hand-over*, of size ``seq + 1``, is signed by
both keys. Checkpoints before it are signed by the outgoing key, those after it by the
incoming one. A verifier trusts only the key it was given; from there:

* forward: a hand-over signed by the trusted key covers the entry announcing the next key,
  so that key is trusted from the hand-over on;
* backward: a hand-over signed by the trusted key covers the entry naming the key before it,
  so that key is trusted for the checkpoints before the hand-over.

Any other change of signing key (a checkpoint signed by a key no hand-over announced) is
refused by the verifier as a checkpoint not signed by the key in force.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_verifier_key,
    verify_checkpoint,
)
from audit.merkle import leaf_hash, verify_inclusion

ROTATED = "key.rotated"
SIGNING = "signing"
#: Canonical entries hold this exact text when their action is key.rotated (sort_keys puts
#: "action" first): a cheap test before parsing, on every entry of a long log.
_MARK = b'{"action":"key.rotated",'


class HandOverError(ValueError):
    """A hand-over that does not hold: the chain of keys is broken or not signed as it must."""


@dataclass(frozen=True)
class SigningRotation:
    """One signing-key hand-over as its ``key.rotated`` entry announces it."""

    seq: int
    old: VerifierKey
    new: VerifierKey

    @property
    def hand_over_size(self) -> int:
        """The size of the checkpoint both keys sign: the tree that ends with this entry."""
        return self.seq + 1


def rotation_data(old: VerifierKey, new: VerifierKey) -> dict[str, str]:
    """The ``data`` of a signing ``key.rotated`` entry: ids and public verifier keys only."""
    return {
        "key": SIGNING,
        "old_key_id": old.label(),
        "new_key_id": new.label(),
        "old_verifier_key": old.line(),
        "new_verifier_key": new.line(),
    }


def signing_rotation(canonical: bytes) -> SigningRotation | None:
    """The hand-over an entry announces, or None if it is not a signing ``key.rotated``.

    HandOverError for a signing rotation entry whose keys cannot be read.
    """
    if not canonical.startswith(_MARK):
        return None
    try:
        entry = json.loads(canonical)
        data = entry["data"]
        if data.get("key") != SIGNING:
            return None
        return SigningRotation(
            entry["seq"],
            parse_verifier_key(data["old_verifier_key"]),
            parse_verifier_key(data["new_verifier_key"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, CheckpointError) as exc:
        raise HandOverError(f"a signing key.rotated entry cannot be read: {exc}") from None


@dataclass(frozen=True)
class KeySchedule:
    """Which key must sign a checkpoint of each size, anchored at the trusted key.

    ``keys[i]`` is in force from ``starts[i]`` (sizes ``starts[i] < size < starts[i+1]``);
    at a hand-over size ``starts[i]`` (i > 0) both ``keys[i-1]`` and ``keys[i]`` must sign.
    Picklable: signature checks run in other processes.
    """

    keys: tuple[VerifierKey, ...]
    starts: tuple[int, ...]

    @classmethod
    def single(cls, key: VerifierKey) -> KeySchedule:
        """One key for every size: a log whose signing key never changed."""
        return cls((key,), (0,))

    def keys_for(self, size: int) -> tuple[VerifierKey, ...]:
        """The keys that must all sign a checkpoint of ``size``."""
        index = 0
        for i, start in enumerate(self.starts):
            if start <= size:
                index = i
        if index > 0 and self.starts[index] == size:
            return (self.keys[index - 1], self.keys[index])
        return (self.keys[index],)

    @property
    def hand_over_sizes(self) -> tuple[int, ...]:
        """The sizes at which the key changes."""
        return self.starts[1:]


def _same(a: VerifierKey, b: VerifierKey) -> bool:
    return (a.name, a.key_id, a.public_key) == (b.name, b.key_id, b.public_key)


def schedule_from(trusted: VerifierKey, rotations: list[SigningRotation]) -> KeySchedule:
    """The key schedule the rotations give, if the trusted key is one of the chain's keys.

    HandOverError if the chain is broken (a rotation that does not hand over from the key
    the one before handed over to). A trusted key that is not in the chain gets the single
    schedule: every checkpoint is then refused as not signed by it, which is what a log
    re-signed by another key must get.
    """
    if not rotations:
        return KeySchedule.single(trusted)
    chain = [rotations[0].old]
    for rotation in rotations:
        if not _same(rotation.old, chain[-1]):
            raise HandOverError(
                f"the key.rotated entry at seq {rotation.seq} hands over from "
                f"{rotation.old.label()}, but the key in force was {chain[-1].label()}"
            )
        chain.append(rotation.new)
    if not any(_same(trusted, key) for key in chain):
        return KeySchedule.single(trusted)
    starts = (0, *(rotation.hand_over_size for rotation in rotations))
    return KeySchedule(tuple(chain), starts)


def follow_hand_over(
    trusted: VerifierKey, seq: int, entry: bytes, note: str, proof: list[bytes]
) -> tuple[VerifierKey, Checkpoint]:
    """The incoming key of a hand-over, checked from the trusted (outgoing) key alone.

    ``entry`` is the ``key.rotated`` entry at ``seq``, ``note`` the checkpoint of size
    ``seq + 1`` and ``proof`` the entry's inclusion proof in it: the note must be signed by
    ``trusted`` and by the key the entry announces, the entry must hand over from
    ``trusted``, and the proof must put the entry in the signed tree. HandOverError if not.
    """
    try:
        checkpoint = verify_checkpoint(note, trusted)
    except CheckpointError as exc:
        raise HandOverError(f"the hand-over is not signed by the trusted key: {exc}") from None
    rotation = signing_rotation(entry)
    if rotation is None or rotation.seq != seq:
        raise HandOverError(f"entry {seq} is not a signing key.rotated entry")
    if not _same(rotation.old, trusted):
        raise HandOverError(
            f"the key.rotated entry at seq {seq} hands over from {rotation.old.label()}, "
            f"not from the trusted key {trusted.label()}"
        )
    if checkpoint.size != rotation.hand_over_size:
        raise HandOverError(
            f"the hand-over checkpoint has size {checkpoint.size}, not {rotation.hand_over_size}"
        )
    if not verify_inclusion(leaf_hash(entry), seq, checkpoint.size, proof, checkpoint.root):
        raise HandOverError(f"entry {seq} is not in the tree the hand-over checkpoint signs")
    try:
        verify_checkpoint(note, rotation.new)
    except CheckpointError as exc:
        raise HandOverError(f"the hand-over is not signed by the incoming key: {exc}") from None
    return rotation.new, checkpoint
