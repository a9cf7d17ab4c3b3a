"""Key custody: split knowledge of the master key and rotation of the keys (R-KEY-1, R-KEY-2).

Every key event is one audit entry naming key ids only, never key material: ``key.split``,
``key.combined`` and ``key.rotated`` (``data.key`` says which: ``master``, ``data`` or
``signing``). Key files are written before the transaction that records them commits, and a
key that a committed row needs is never removed, so a failure at any point leaves every
sealed arm openable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.checkpoint import verifier_key_from_private
from audit.rotation import rotation_data
from keys import (
    MASTER_KEY_ENV,
    KeyStoreError,
    MasterKeyRing,
    WrappedDataKey,
    new_data_key,
    rewrap_data_key,
    rotate_master_key,
    unwrap_data_key,
)
from keys.custody import MasterKeyShare, split_key
from keys.masterkeys import load_master_keys, read_master_key
from keys.pkcs11 import KEY_ENV, TOKEN_ENV, Pkcs11MasterKeys
from keys.providers import (
    PKCS11,
    PROVIDER_ENV,
    MasterKeys,
    load_master_key_provider,
    provider_name,
)
from keys.signing import create_incoming_signing_key, promote_signing_key
from randomizer.locks import lock_audit_head
from randomizer.models import AuditHead, DataKey, Trial
from randomizer.roles import Actor
from randomizer.services.context import TrialContext


@dataclass(frozen=True)
class KeySplit:
    """The shares of one split, and the SLIP-39 identifier the audit entry records."""

    shares: list[MasterKeyShare]
    share_set: int


def split_master_key(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    keys_dir: Path,
    shares: int,
    threshold: int,
    passphrase: bytes = b"",
    environ: Mapping[str, str] | None = None,
) -> KeySplit:
    """Split the active master key into SLIP-39 shares; audit ``key.split``.

    The key itself stays where it is. The entry names the key id, the counts, whether a
    passphrase was used and the split's SLIP-39 identifier (which every share of this split
    carries), so an inspector can tell which share set is in circulation.
    """
    if provider_name(environ) == PKCS11:
        raise KeyStoreError(
            "the master key is in the PKCS#11 token, which never lets it out: back it up with "
            "the HSM's own means (its backup or cloning of keys under split knowledge)"
        )
    key_id, key = read_master_key(keys_dir, environ=environ)
    made = split_key(key_id, key, shares, threshold, passphrase)
    share_set = _share_set(made[0])
    ctx.audit.append(
        session,
        actor,
        "key.split",
        key_id,
        {
            "master_key_id": key_id,
            "shares": shares,
            "threshold": threshold,
            "passphrase": bool(passphrase),
            "share_set": share_set,
        },
    )
    return KeySplit(made, share_set)


def _share_set(share: MasterKeyShare) -> int:
    from shamir_mnemonic import Share

    return Share.from_mnemonic(share.mnemonic).identifier


def check_master_key(session: Session, key_id: str, key: bytes) -> list[str]:
    """The data keys that ``key`` (claimed to be master key ``key_id``) unwraps.

    KeyStoreError if no data key is wrapped by ``key_id`` or one does not open: a wrong
    passphrase or a share of another key rebuilds another key, and this is where it shows.
    """
    trial_id = session.scalars(select(Trial.id)).one()
    ring = MasterKeyRing({key_id: key}, key_id)
    rows = session.scalars(select(DataKey).where(DataKey.master_key_id == key_id)).all()
    if not rows:
        raise KeyStoreError(
            f"no data key of this database is wrapped by master key {key_id}: it is not (or "
            "no longer) this trial's master key"
        )
    for row in rows:
        try:
            unwrap_data_key(ring, WrappedDataKey(row.id, row.master_key_id, row.wrapped), trial_id)
        except KeyStoreError:
            raise KeyStoreError(
                f"the rebuilt key does not open data key {row.id}: the shares or the passphrase "
                f"are not those of master key {key_id}"
            ) from None
    return [row.id for row in rows]


def record_master_key_combined(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    key_id: str,
    key: bytes,
    members: Sequence[int],
    destination: str,
) -> list[str]:
    """Check a rebuilt master key against the data keys it wrapped; audit ``key.combined``.

    ``members`` are the share numbers used; ``destination`` is ``file`` or ``environment``.
    Returns the data key ids it opened.
    """
    opened = check_master_key(session, key_id, key)
    ctx.audit.append(
        session,
        actor,
        "key.combined",
        key_id,
        {
            "master_key_id": key_id,
            "shares_used": sorted(members),
            "destination": destination,
            "data_keys": opened,
        },
    )
    return opened


@dataclass(frozen=True)
class Rotation:
    """What a rotation changed: the key ids before and after, and the data keys rewrapped."""

    old_key_id: str
    new_key_id: str
    data_keys: tuple[str, ...] = ()


def rotate_master(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    keys_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> Rotation:
    """A new master key version, and every data key rewrapped under it; audit ``key.rotated``.

    No arm is re-encrypted: the data keys keep their ids and bytes. The new key file is
    written (and made active) before the rewrap, and the old one stays, so whatever commits
    or fails, every data key opens with a key of the directory.
    """
    import os

    env = os.environ if environ is None else environ
    ring: MasterKeys
    if provider_name(env) == PKCS11:
        token = load_master_key_provider(keys_dir, env)
        assert isinstance(token, Pkcs11MasterKeys)
        old = token.active_id
        # Made inside the token: this key never exists outside it.
        token.activate(token.generate())
        ring = token
    else:
        if MASTER_KEY_ENV in env:
            raise KeyStoreError(
                f"the active master key comes from {MASTER_KEY_ENV}: rotate it in the secrets"
                " manager (a key directory rotation would not be used while the variable is set)"
            )
        old = load_master_keys(keys_dir, env).active_id
        ring = rotate_master_key(keys_dir)
    # The audit head's lock (which the entry below takes anyway) serialises key events: two
    # rotations at once rewrap one after the other, never interleaved.
    lock_audit_head(session)
    rows = session.scalars(select(DataKey).order_by(DataKey.id)).all()
    for row in rows:
        rewrapped = rewrap_data_key(
            ring, WrappedDataKey(row.id, row.master_key_id, row.wrapped), ctx.definition.id
        )
        row.master_key_id = rewrapped.master_key_id
        row.wrapped = rewrapped.wrapped
    session.flush()
    rotation = Rotation(old, ring.active_id, tuple(row.id for row in rows))
    ctx.audit.append(
        session,
        actor,
        "key.rotated",
        ring.active_id,
        {
            "key": "master",
            "old_key_id": rotation.old_key_id,
            "new_key_id": rotation.new_key_id,
            "data_keys": list(rotation.data_keys),
        },
    )
    return rotation


def rotate_data_key(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    keys_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> Rotation:
    """A new data key for new seals, wrapped by the active master key; audit ``key.rotated``.

    Older data keys stay in the database and keep opening what they sealed. Serving
    processes learn the new key when they meet a seal made with it, and seal with it from
    their next start.
    """
    ring = load_master_key_provider(keys_dir, environ)
    lock_audit_head(session)  # serialises key events (see rotate_master)
    trial = session.scalars(select(Trial)).one()
    wrapped, _key = new_data_key(ring, trial.id)
    session.add(
        DataKey(
            id=wrapped.key_id,
            master_key_id=wrapped.master_key_id,
            wrapped=wrapped.wrapped,
            created_at=ctx.clock(),
        )
    )
    session.flush()
    old = trial.data_key_id
    trial.data_key_id = wrapped.key_id
    session.flush()
    ctx.audit.append(
        session,
        actor,
        "key.rotated",
        wrapped.key_id,
        {
            "key": "data",
            "old_key_id": old,
            "new_key_id": wrapped.key_id,
            "master_key_id": wrapped.master_key_id,
        },
    )
    return Rotation(old, wrapped.key_id)


def rotate_signing(session: Session, ctx: TrialContext, actor: Actor, keys_dir: Path) -> Rotation:
    """Hand over to a new checkpoint-signing key; audit ``key.rotated`` (R-KEY-1).

    The entry names both verifier keys (public); the checkpoint of this transaction, the
    hand-over, is signed by the outgoing and the incoming key, and the audit head names the
    incoming key as the one in force, so every serving process signs with it from its next
    append. The incoming key file is written first; the caller calls
    :func:`finish_signing_rotation` once this has committed.
    """
    incoming = create_incoming_signing_key(keys_dir)
    # Under the head lock: no checkpoint by the outgoing key can follow the hand-over.
    lock_audit_head(session)
    outgoing = ctx.audit.current_verifier_key(session)
    new = verifier_key_from_private(ctx.audit.origin, incoming)
    ctx.audit.append(session, actor, "key.rotated", new.label(), rotation_data(outgoing, new))
    ctx.audit.hand_over(session, incoming)
    return Rotation(outgoing.label(), new.label())


def finish_signing_rotation(session: Session, keys_dir: Path) -> None:
    """After the hand-over committed: the incoming key file becomes ``ed25519.key``."""
    in_force = session.execute(select(AuditHead.signing_key)).scalar_one()
    promote_signing_key(keys_dir, in_force)


def import_master_keys_into_token(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    keys_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Put every master key of the keys directory into the PKCS#11 token; audit it.

    The move from the key file provider to an HSM: the keys keep their ids, so every data
    key they wrapped unwraps inside the token. The files stay until the operator destroys
    them (README: key custody); the entry ``key.imported`` names the ids and the token.
    """
    import os

    env = os.environ if environ is None else environ
    token_settings = {**env, PROVIDER_ENV: PKCS11}
    files = load_master_keys(keys_dir, {k: v for k, v in env.items() if k != MASTER_KEY_ENV})
    token = Pkcs11MasterKeys.from_environ({**token_settings, KEY_ENV: ""}, empty_ok=True)
    imported = []
    for key_id in files.key_ids:
        _, key = read_master_key(keys_dir, key_id, environ={})
        imported.append(token.import_key(key_id, key))
    token.activate(files.active_id)
    # Each data key must now open inside the token.
    for row in session.scalars(select(DataKey)):
        unwrap_data_key(
            token, WrappedDataKey(row.id, row.master_key_id, row.wrapped), ctx.definition.id
        )
    ctx.audit.append(
        session,
        actor,
        "key.imported",
        files.active_id,
        {
            "master_key_ids": imported,
            "token": token_settings.get(TOKEN_ENV, ""),
            "provider": PKCS11,
        },
    )
    return imported
