"""Key hierarchy and sealing (URS §5, §7): master keys outside the database wrap per-trial data
keys; data keys seal arms; a separate Ed25519 key signs audit checkpoints.

Depends on ``cryptography`` and the standard library only.
"""

from keys.datakeys import WrappedDataKey, new_data_key, rewrap_data_key, unwrap_data_key
from keys.masterkeys import (
    MASTER_KEY_ENV,
    KeysError,
    KeyStoreError,
    MasterKeyRing,
    create_keys_dir,
    load_master_keys,
    rotate_master_key,
)
from keys.sealing import ARM_PLAINTEXT_LENGTH, SealedArm, Sealer, UnsealError
from keys.session import create_session_secret, load_session_secret, session_secret_path
from keys.signing import (
    create_signing_key,
    load_signing_key,
    public_key_bytes,
    signing_key_path,
)

__all__ = [
    "ARM_PLAINTEXT_LENGTH",
    "MASTER_KEY_ENV",
    "KeyStoreError",
    "KeysError",
    "MasterKeyRing",
    "SealedArm",
    "Sealer",
    "UnsealError",
    "WrappedDataKey",
    "create_keys_dir",
    "create_session_secret",
    "create_signing_key",
    "load_master_keys",
    "load_session_secret",
    "load_signing_key",
    "new_data_key",
    "public_key_bytes",
    "rewrap_data_key",
    "rotate_master_key",
    "session_secret_path",
    "signing_key_path",
    "unwrap_data_key",
]
