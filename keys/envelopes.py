"""Sealed code-break envelopes for when the service is down (R-KEY-4).

As paper code-break envelopes are made in practice: one envelope per list slot, named by its
randomisation number, holding that slot's arm, readable only by the medical monitor's
24-hour safety line. Here an envelope is the arm encrypted to the monitor's X25519 public
key: a fresh ephemeral X25519 key per envelope, HKDF-SHA256 over the shared secret (salted
with both public keys) to an AES-256-GCM key, the trial and randomisation number as
associated data (an envelope renamed onto another number fails to open). The plaintext is
the arm id and label padded to one length, so every envelope file has the same size and
nothing about an arm shows from outside. An envelope file::

    sealroom code-break envelope v1
    trial: RECLAIIM
    randomization number: R01-0001
    recipient: <hex fingerprint of the public key>
    ephemeral: <base64 32 bytes>
    nonce: <base64 12 bytes>
    ciphertext: <base64 of 144 bytes>

Standard library and ``cryptography`` only: opening one needs nothing of the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.masterkeys import (
    KeysError,
    _ensure_private_dir,
    _read_secret_file,
    _write_new_secret_file,
)

HEADER = "sealroom code-break envelope v1"
PUBLIC_KEY_PREFIX = "sealroom-envelope-x25519:"
SUFFIX = ".envelope"
MANIFEST = "MANIFEST.sha256"
#: The padded plaintext: the arm's id and label as JSON, NUL-padded. 128 bytes hold any arm
#: the trial definition allows (id up to 32, label up to 64 characters).
PLAINTEXT_LENGTH = 128
_INFO = b"sealroom/envelope/v1"
_NUMBER = re.compile(r"R[0-9]{2}-[0-9]{4}")
_FIELDS = ("trial", "randomization number", "recipient", "ephemeral", "nonce", "ciphertext")


class EnvelopeError(KeysError):
    """An envelope or key that cannot be used; never names the arm."""


def new_recipient_key() -> tuple[bytes, str]:
    """A new X25519 key pair for the safety line: (PEM private key, public key line)."""
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_key_line(private.public_key())


def public_key_line(public: X25519PublicKey) -> str:
    """``sealroom-envelope-x25519:<base64 32 bytes>``: what the statistician is handed."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(line: str) -> X25519PublicKey:
    """The recipient's public key from its line; EnvelopeError if malformed."""
    text = line.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise EnvelopeError(f"a recipient key is '{PUBLIC_KEY_PREFIX}<base64 of 32 bytes>'")
    raw = _b64(text.removeprefix(PUBLIC_KEY_PREFIX), 32, "the recipient key")
    return X25519PublicKey.from_public_bytes(raw)


def fingerprint(public: X25519PublicKey) -> str:
    """16 hex digits of SHA-256 of the raw public key: which key a set was made for."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{what} is not base64") from None
    if len(raw) != length:
        raise EnvelopeError(f"{what} is not {length} bytes")
    return raw


def _aead_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO
    ).derive(shared)


def _associated_data(trial: str, number: str) -> bytes:
    return _INFO + b"|" + trial.encode("utf-8") + b"|" + number.encode("ascii")


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_envelope(
    recipient: X25519PublicKey, trial: str, number: str, arm_id: str, arm_label: str
) -> str:
    """The text of one envelope holding ``(arm_id, arm_label)`` for slot ``number``."""
    if not _NUMBER.fullmatch(number) or not trial or "|" in trial or "\n" in trial:
        raise EnvelopeError("an envelope needs a trial id and a randomisation number Rss-pppp")
    plaintext = json.dumps({"arm": arm_id, "label": arm_label}, ensure_ascii=True).encode()
    if len(plaintext) > PLAINTEXT_LENGTH:
        raise EnvelopeError(f"an arm's id and label must fit {PLAINTEXT_LENGTH} bytes")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = _raw(ephemeral.public_key())
    key = _aead_key(ephemeral.exchange(recipient), ephemeral_raw, _raw(recipient))
    # A fresh key per envelope: the random nonce can never repeat under it.
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(
        nonce, plaintext.ljust(PLAINTEXT_LENGTH, b"\0"), _associated_data(trial, number)
    )
    values = (
        trial,
        number,
        fingerprint(recipient),
        base64.b64encode(ephemeral_raw).decode(),
        base64.b64encode(nonce).decode(),
        base64.b64encode(ciphertext).decode(),
    )
    return HEADER + "\n" + "".join(f"{n}: {v}\n" for n, v in zip(_FIELDS, values, strict=True))


@dataclass(frozen=True)
class OpenedEnvelope:
    """What an opened envelope says."""

    trial: str
    randomization_number: str
    arm_id: str
    arm_label: str


def open_envelope(text: str, private: X25519PrivateKey) -> OpenedEnvelope:
    """Open an envelope with the safety line's private key; EnvelopeError if it does not."""
    lines = text.splitlines()
    if len(lines) != 1 + len(_FIELDS) or lines[0] != HEADER:
        raise EnvelopeError("not a sealroom code-break envelope")
    fields: dict[str, str] = {}
    for name, line in zip(_FIELDS, lines[1:], strict=True):
        if not line.startswith(f"{name}: "):
            raise EnvelopeError(f"malformed envelope: expected the {name!r} line")
        fields[name] = line.removeprefix(f"{name}: ")
    trial, number = fields["trial"], fields["randomization number"]
    if fields["recipient"] != fingerprint(private.public_key()):
        raise EnvelopeError("this envelope was made for another key (its recipient differs)")
    ephemeral = _b64(fields["ephemeral"], 32, "the ephemeral key")
    nonce = _b64(fields["nonce"], 12, "the nonce")
    ciphertext = _b64(fields["ciphertext"], PLAINTEXT_LENGTH + 16, "the ciphertext")
    key = _aead_key(
        private.exchange(X25519PublicKey.from_public_bytes(ephemeral)),
        ephemeral,
        _raw(private.public_key()),
    )
    try:
        padded = AESGCM(key).decrypt(nonce, ciphertext, _associated_data(trial, number))
    except InvalidTag:
        raise EnvelopeError(
            f"envelope {number} does not open: it was altered, or made for another number"
        ) from None
    content = json.loads(padded.rstrip(b"\0"))
    return OpenedEnvelope(trial, number, content["arm"], content["label"])


def load_private_key(path: Path) -> X25519PrivateKey:
    """The safety line's private key file (PEM, mode 0600)."""
    data = _read_secret_file(path)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise EnvelopeError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(private, X25519PrivateKey):
        raise EnvelopeError(f"{path} does not hold an X25519 key")
    return private


def write_recipient_key(path: Path) -> str:
    """Create the safety line's key pair: the private key at ``path`` (0600); the public line."""
    pem, line = new_recipient_key()
    _ensure_private_dir(path.parent)
    _write_new_secret_file(path, pem)
    return line


def write_envelope_set(directory: Path, envelopes: dict[str, str]) -> str:
    """Write each envelope (``{number: text}``) and a manifest of their SHA-256; the manifest's
    own SHA-256, which names the set (in the audit trail and on the envelopes' cover).

    ``directory`` must be new or empty: a set is never mixed with another. Each file is
    created 0600 with O_EXCL; the directory is synced once at the end, not per file (a set
    of some thousand files would otherwise cost two syncs each).
    """
    _ensure_private_dir(directory)
    if any(directory.iterdir()):
        raise EnvelopeError(f"{directory} is not empty: write a new set into a new directory")
    lines = []
    for number in sorted(envelopes):
        data = envelopes[number].encode("ascii")
        name = number + SUFFIX
        _create_file(directory / name, data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    manifest = "".join(lines).encode("ascii")
    _create_file(directory / MANIFEST, manifest)
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(manifest).hexdigest()


def _create_file(path: Path, data: bytes) -> None:
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise EnvelopeError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
