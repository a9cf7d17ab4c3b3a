"""The audit log's Ed25519 checkpoint-signing key (URS §7).

It lives in its own directory, apart from the master keys, because it serves another purpose
and may be handled by other people: whoever holds it can sign checkpoints, not unblind, and
whoever holds a master key can unblind, not forge the log.

Layout: ``<keys_dir>/signing/ed25519.key``, an unencrypted PKCS#8 PEM file, mode 0600, in a
directory of mode 0700 (the same checks as the master keys).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.masterkeys import (
    KeyStoreError,
    _check_private_dir,
    _ensure_private_dir,
    _read_secret_file,
    _write_new_secret_file,
)

SIGNING_DIR = "signing"
SIGNING_KEY_FILE = "ed25519.key"


def signing_key_path(keys_dir: str | os.PathLike[str]) -> Path:
    """Where the signing key of ``keys_dir`` lives."""
    return Path(keys_dir) / SIGNING_DIR / SIGNING_KEY_FILE


def create_signing_key(keys_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Generate the checkpoint-signing key and store it; refuse (KeyStoreError) to overwrite one.

    Replacing the key would orphan every checkpoint signed so far for verifiers holding the
    published verifier key, so an existing key is never replaced here.
    """
    path = signing_key_path(keys_dir)
    _ensure_private_dir(path.parent.parent)
    _ensure_private_dir(path.parent)
    if path.exists():
        raise KeyStoreError(f"{path} already exists; refusing to overwrite the signing key")
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        # Unencrypted: a passphrase would have to sit beside it for unattended signing; the
        # file's 0600 mode and the directory's 0700 are the protection.
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_new_secret_file(path, pem)
    return private_key


def load_signing_key(keys_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the signing key; KeyStoreError if it is missing, exposed, malformed or not Ed25519."""
    path = signing_key_path(keys_dir)
    _check_private_dir(path.parent.parent)
    _check_private_dir(path.parent)
    data = _read_secret_file(path)
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The parser's message is not passed on: it may describe the file's contents.
        raise KeyStoreError(
            f"signing key file {path} is malformed: expected an unencrypted PKCS#8 PEM key"
        ) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise KeyStoreError(f"signing key file {path} does not hold an Ed25519 key")
    return private_key


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key, as checkpoint key ids and verifier keys need it."""
    return private_key.public_key().public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
