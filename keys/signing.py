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
    _create_subdir_secret_file,
    _read_secret_file,
    _read_subdir_secret_file,
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
    private_key = Ed25519PrivateKey.generate()
    _create_subdir_secret_file(signing_key_path(keys_dir), _pem(private_key), "the signing key")
    return private_key


def _pem(private_key: Ed25519PrivateKey) -> bytes:
    """The key as an unencrypted PKCS#8 PEM file's bytes."""
    return private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        # Unencrypted: a passphrase would have to sit beside it for unattended signing; the
        # file's 0600 mode and the directory's 0700 are the protection.
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_signing_key(keys_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the signing key; KeyStoreError if it is missing, exposed, malformed or not Ed25519."""
    path = signing_key_path(keys_dir)
    return _parse_pem(path, _read_subdir_secret_file(path))


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key, as checkpoint key ids and verifier keys need it."""
    return private_key.public_key().public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


# --------------------------------------------------------------------------------------------
# Rotation (R-KEY-1). ``ed25519.key`` is the key in force; a rotation writes the incoming key
# as ``ed25519-<fingerprint>.key``, records the hand-over in the database, then moves it onto
# ``ed25519.key`` (the outgoing key is destroyed). Serving processes find the key the audit
# head names by its fingerprint under either name, so no instant of the move leaves them
# without it.

_PREFIX = "ed25519-"


def signing_key_fingerprint(private_key: Ed25519PrivateKey) -> str:
    """``sk-<16 hex>``: the first 8 bytes of SHA-256 of the public key; names the key anywhere."""
    import hashlib

    return "sk-" + hashlib.sha256(public_key_bytes(private_key)).hexdigest()[:16]


def _incoming_path(keys_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    return signing_key_path(keys_dir).parent / f"{_PREFIX}{fingerprint}.key"


def create_incoming_signing_key(keys_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Generate the next signing key and store it beside the current one (mode 0600)."""
    load_signing_key(keys_dir)  # refuse to rotate a key store that does not load
    private_key = Ed25519PrivateKey.generate()
    path = _incoming_path(keys_dir, signing_key_fingerprint(private_key))
    _write_new_secret_file(path, _pem(private_key))
    return private_key


def _parse_pem(path: Path, data: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key in ``data`` (read from ``path``); KeyStoreError if it holds none."""
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


def load_signing_key_by_fingerprint(
    keys_dir: str | os.PathLike[str], fingerprint: str
) -> Ed25519PrivateKey:
    """The signing key of that fingerprint, incoming or in force; KeyStoreError if neither."""
    current = signing_key_path(keys_dir)
    _check_private_dir(current.parent)
    for path in (_incoming_path(keys_dir, fingerprint), current):
        try:
            private_key = _parse_pem(path, _read_secret_file(path))
        except KeyStoreError:
            if path.exists():
                raise
            continue
        if signing_key_fingerprint(private_key) == fingerprint:
            return private_key
    raise KeyStoreError(
        f"the signing key {fingerprint}, which the audit log names as the key in force, is "
        f"not in {current.parent}"
    )


def promote_signing_key(keys_dir: str | os.PathLike[str], fingerprint: str) -> None:
    """Make the incoming key of ``fingerprint`` the one in force; the outgoing key is gone.

    Run once the hand-over has committed. An atomic rename: a reader sees the outgoing key or
    the incoming one under ``ed25519.key``, never a half-written file.
    """
    from keys.masterkeys import _fsync_dir

    incoming = _incoming_path(keys_dir, fingerprint)
    current = signing_key_path(keys_dir)
    if not incoming.exists():
        if signing_key_fingerprint(load_signing_key(keys_dir)) == fingerprint:
            return  # already promoted
        raise KeyStoreError(f"no incoming signing key {fingerprint} in {current.parent}")
    try:
        os.replace(incoming, current)
        _fsync_dir(current.parent)
    except OSError as exc:
        raise KeyStoreError(f"cannot put the signing key in place: {exc.strerror}") from None
