"""Per-trial data keys, stored in the database only wrapped by a master key (URS §5).

Arms are sealed under a data key (``keys.sealing``); the data key is stored wrapped, beside the
id of the master key that wrapped it. Rotating the master key therefore means rewrapping a few
data keys, never re-encrypting every sealed row.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keys.masterkeys import KEY_BYTES, KeyStoreError

if TYPE_CHECKING:
    from keys.providers import MasterKeys

_CONTEXT_PREFIX = b"sealroom/data-key/v1|"


@dataclass(frozen=True)
class WrappedDataKey:
    """A data key as the database stores it: its id, its master key's id and the wrapped bytes.

    Nothing here is secret: ``wrapped`` is AES-GCM ciphertext under a master key that is never
    in the database.
    """

    key_id: str
    master_key_id: str
    wrapped: bytes


def _context(trial_id: str, key_id: str) -> bytes:
    """Associated data binding a wrapped data key to its trial and its own id.

    Without it a wrapped key could be copied onto another trial's row (or another key id's) and
    would open there; with it the tag check fails. Trial ids may not contain "|", so the
    encoding cannot be read two ways.
    """
    if not isinstance(trial_id, str) or not trial_id or "|" in trial_id:
        raise ValueError("trial id must be a non-empty string without '|'")
    return _CONTEXT_PREFIX + trial_id.encode("utf-8") + b"|" + key_id.encode("utf-8")


def new_data_key(ring: MasterKeys, trial_id: str) -> tuple[WrappedDataKey, bytes]:
    """Generate a random 32-byte data key for ``trial_id``; return it wrapped and in clear.

    The clear key is for building a ``keys.sealing.Sealer``; store only the wrapped one.
    """
    key_id = "dk-" + secrets.token_hex(8)
    key = secrets.token_bytes(KEY_BYTES)
    master_key_id, wrapped = ring.wrap(key, _context(trial_id, key_id))
    return WrappedDataKey(key_id=key_id, master_key_id=master_key_id, wrapped=wrapped), key


def unwrap_data_key(ring: MasterKeys, wrapped: WrappedDataKey, trial_id: str) -> bytes:
    """The clear data key; KeyStoreError if the master key is unknown or the check fails.

    The check fails for a wrapped key of another trial or another key id, or an altered one.
    """
    try:
        key = ring.unwrap(
            wrapped.master_key_id, wrapped.wrapped, _context(trial_id, wrapped.key_id)
        )
    except KeyStoreError as exc:
        raise KeyStoreError(
            f"cannot unwrap data key {wrapped.key_id} for trial {trial_id}: {exc}"
        ) from None
    if len(key) != KEY_BYTES:
        raise KeyStoreError(f"data key {wrapped.key_id} is not {KEY_BYTES} bytes")
    return key


def rewrap_data_key(ring: MasterKeys, wrapped: WrappedDataKey, trial_id: str) -> WrappedDataKey:
    """Rewrap a data key under the ring's active master key, keeping its id (and so its seals).

    This is master key rotation without re-encrypting rows: unwrap with whichever master key
    wrapped it, wrap again with the active one. A key already under the active master key is
    still checked, then returned unchanged, so a rotation job can be rerun safely.
    """
    key = unwrap_data_key(ring, wrapped, trial_id)
    if wrapped.master_key_id == ring.active_id:
        return wrapped
    master_key_id, rewrapped = ring.wrap(key, _context(trial_id, wrapped.key_id))
    return WrappedDataKey(key_id=wrapped.key_id, master_key_id=master_key_id, wrapped=rewrapped)
