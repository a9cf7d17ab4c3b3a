"""Where the master keys are: one small interface, two providers (R-KEY-3).

* ``file`` (the default): the keys directory and ``SEALROOM_MASTER_KEY``
  (:class:`keys.masterkeys.MasterKeyRing`);
* ``pkcs11``: AES-256 keys inside a PKCS#11 token (an HSM, or SoftHSM2 for tests), which
  wraps and unwraps data keys itself; the key never leaves it (:mod:`keys.pkcs11`).

Both wrap the same way (AES-256-GCM, a 12-byte random nonce, the context as associated
data, ``nonce || ciphertext || tag``), so a key file imported into a token keeps unwrapping
what it wrapped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from keys.masterkeys import KeyStoreError, load_master_keys

PROVIDER_ENV = "SEALROOM_MASTER_KEY_PROVIDER"
FILE, PKCS11 = "file", "pkcs11"


class MasterKeys(Protocol):
    """What the rest of the code may do with master keys: wrap and unwrap, by key id."""

    @property
    def active_id(self) -> str:
        """The id of the key that wraps new data keys."""
        ...

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this provider can unwrap with."""
        ...

    def __contains__(self, key_id: object) -> bool: ...

    def wrap(self, plaintext: bytes, context: bytes) -> tuple[str, bytes]:
        """``(key id, nonce || ciphertext)`` under the active key, ``context`` authenticated."""
        ...

    def unwrap(self, master_key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """The plaintext of what ``wrap`` made; KeyStoreError if it does not open."""
        ...


def provider_name(environ: Mapping[str, str] | None = None) -> str:
    """``file`` or ``pkcs11``, from ``SEALROOM_MASTER_KEY_PROVIDER``; refuses anything else."""
    env = os.environ if environ is None else environ
    name = env.get(PROVIDER_ENV, FILE) or FILE
    if name not in (FILE, PKCS11):
        raise KeyStoreError(f"{PROVIDER_ENV} must be '{FILE}' or '{PKCS11}', not {name!r}")
    return name


def load_master_key_provider(
    keys_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> MasterKeys:
    """The master keys as the settings say: the key file ring, or the PKCS#11 token."""
    env = os.environ if environ is None else environ
    if provider_name(env) == PKCS11:
        from keys.pkcs11 import Pkcs11MasterKeys

        return Pkcs11MasterKeys.from_environ(env)
    return load_master_keys(keys_dir, env)
