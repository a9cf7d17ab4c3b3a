"""Signed checkpoints of the audit tree: C2SP tlog-checkpoint signed notes (URS §7).

A checkpoint note is::

    sealroom/RECLAIIM
    42
    <base64 of the 32-byte root>

    — sealroom/RECLAIIM <base64(key id (4 bytes) || Ed25519 signature of the body)>

The body (everything before the blank line, final newline included) is what is signed.
Verifiers accept several signature lines and ignore keys they do not know; they trust only
the verifier key they were given out of band, never one the log hands them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519_ALGORITHM = 0x01
SIGNATURE_PREFIX = "\u2014 "  # EM DASH, then a space
MAX_SIGNATURES = 100  # C2SP lets verifiers refuse notes with absurdly many signatures
MAX_TREE_SIZE = 2**64 - 1  # the tree size is a uint64 in C2SP tlog-checkpoint

#: A tree size as a note writes it: decimal, no leading zeros.
DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f]")  # every control character but newline


class CheckpointError(ValueError):
    """A checkpoint or verifier key is malformed, or not signed by the trusted key."""


@dataclass(frozen=True)
class Signature:
    """One signature line of a note: who claims to sign, with which key id, and the bytes."""

    key_name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class VerifierKey:
    """An Ed25519 note verifier key: its name, 4-byte key id and 32-byte public key."""

    name: str
    key_id: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name, "verifier key")
        if len(self.public_key) != 32:
            raise CheckpointError("malformed verifier key: an Ed25519 public key is 32 bytes")
        if self.key_id != key_id(self.name, self.public_key):
            raise CheckpointError("malformed verifier key: the key id does not match the key")

    def line(self) -> str:
        """The published form ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        encoded = _b64(bytes([ED25519_ALGORITHM]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def label(self) -> str:
        """``<name>+<hex key id>``: how messages name this key."""
        return f"{self.name}+{self.key_id.hex()}"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin line, its size and its 32-byte root hash.

    ``extensions`` holds any extra body lines C2SP allows after the root; they are signed
    with the rest of the body, so they are kept, but nothing here interprets them.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The signed note body: ``origin\\nsize\\nbase64(root)\\n`` (then any extensions)."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def key_id(name: str, public_key: bytes) -> bytes:
    """The C2SP key id: first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``."""
    material = name.encode("utf-8") + b"\n" + bytes([ED25519_ALGORITHM]) + public_key
    return hashlib.sha256(material).digest()[:4]


def verifier_key_from_private(name: str, private_key: Ed25519PrivateKey) -> VerifierKey:
    """The verifier key that checks signatures made by ``private_key`` under ``name``."""
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return VerifierKey(name, key_id(name, public), public)


def parse_verifier_key(line: str) -> VerifierKey:
    """Parse ``<name>+<hex key id>+<base64(0x01 || public key)>``, checking the key id."""
    # The name and hex id contain no '+', but base64 may: split only twice.
    parts = line.strip().split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("malformed verifier key: expected <name>+<key id>+<key>")
    name, id_hex, encoded = parts
    _check_key_name(name, "verifier key")
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise CheckpointError("malformed verifier key: the key id is 8 lowercase hex digits")
    material = _b64decode(encoded, "malformed verifier key: the key is not base64")
    if len(material) != 33 or material[0] != ED25519_ALGORITHM:
        raise CheckpointError("malformed verifier key: not an Ed25519 key (0x01 and 32 bytes)")
    public = material[1:]
    if bytes.fromhex(id_hex) != key_id(name, public):
        raise CheckpointError("malformed verifier key: the key id does not match the key")
    return VerifierKey(name, bytes.fromhex(id_hex), public)


def sign_checkpoint(
    checkpoint: Checkpoint,
    private_key: Ed25519PrivateKey,
    key_name: str,
    verifier: VerifierKey | None = None,
) -> str:
    """The full signed note: the body, a blank line and one signature line by ``key_name``.

    ``verifier``, the key's own verifier key under ``key_name`` if the caller keeps it,
    spares deriving the public key at every signature.
    """
    _check_key_name(key_name, "checkpoint")
    _check_body_fields(checkpoint)
    body = checkpoint.body()
    if verifier is None:
        verifier = verifier_key_from_private(key_name, private_key)
    elif verifier.name != key_name:
        raise CheckpointError(f"the verifier key is {verifier.name}'s, not {key_name}'s")
    signature = private_key.sign(body.encode("utf-8"))
    return f"{body}\n{SIGNATURE_PREFIX}{key_name} {_b64(verifier.key_id + signature)}\n"


def cosign_checkpoint(checkpoint: Checkpoint, signers: list[tuple[Ed25519PrivateKey, str]]) -> str:
    """A note signed by every ``(private key, key name)`` in ``signers``, in that order.

    A key hand-over checkpoint is signed by the outgoing and the incoming key (R-KEY-1).
    """
    if not signers:
        raise CheckpointError("a checkpoint needs at least one signer")
    notes = [sign_checkpoint(checkpoint, key, name) for key, name in signers]
    body = checkpoint.body()
    lines = [note[len(body) + 1 :] for note in notes]
    return body + "\n" + "".join(lines)


def signature_count(note: str) -> int:
    """How many signature lines a note carries (unchecked): 2 or more marks a hand-over."""
    return note[note.rfind("\n\n") + 2 :].count(SIGNATURE_PREFIX)


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[Signature]]:
    """Parse a checkpoint note strictly, without checking any signature.

    The body is the origin, the size (decimal, no leading zeros), the base64 root (32
    bytes), then optional extension lines; the signature block holds one or more lines
    ``— <name> <base64(key id || signature)>``, nothing else.
    """
    body, signature_block = _split_note(note)
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("malformed checkpoint: the body needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if any(line == "" for line in lines):
        raise CheckpointError("malformed checkpoint: the body has an empty line")
    if not DECIMAL.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise CheckpointError(f"malformed checkpoint: size {size_text!r} is not a tree size")
    root = _b64decode(root_text, "malformed checkpoint: the root hash is not base64")
    if len(root) != 32:
        raise CheckpointError("malformed checkpoint: the root hash is not 32 bytes")
    checkpoint = Checkpoint(origin, int(size_text), root, tuple(extensions))
    signatures = [_parse_signature_line(line) for line in signature_block[:-1].split("\n")]
    if len(signatures) > MAX_SIGNATURES:
        raise CheckpointError("malformed checkpoint: too many signature lines")
    return checkpoint, signatures


def verify_checkpoint(note: str, verifier_key: VerifierKey) -> Checkpoint:
    """The checkpoint, if ``note`` carries a valid signature by ``verifier_key``.

    A signature counts only if its line names the key, carries its key id and verifies;
    lines by other keys are ignored. Raises CheckpointError otherwise.
    """
    checkpoint, signatures = parse_checkpoint(note)
    # Parsing is strict (one spelling per size and root), so the parsed checkpoint gives
    # back exactly the body bytes that were signed.
    body = checkpoint.body().encode("utf-8")
    public = _public_key(verifier_key.public_key)
    claimed = False
    for sig in signatures:
        if sig.key_name != verifier_key.name or sig.key_id != verifier_key.key_id:
            continue
        claimed = True
        try:
            public.verify(sig.signature, body)
        except InvalidSignature:
            continue
        return checkpoint
    reason = (
        "its signature by that key does not verify"
        if claimed
        else "no signature line carries that key's name and id"
    )
    raise CheckpointError(
        f"checkpoint is not signed by the trusted key {verifier_key.label()} ({reason})"
    )


# --- helpers -------------------------------------------------------------------------------------


def _split_note(note: str) -> tuple[str, str]:
    """Split a signed note into its body and signature block, each ending in a newline."""
    if not note.endswith("\n"):
        raise CheckpointError("malformed checkpoint: a note ends with a newline")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("malformed checkpoint: the note is not valid UTF-8") from None
    # Control characters other than newline are not allowed anywhere in a note; a stray
    # '\r' in particular would make the signed bytes differ from what a reader sees.
    if _CONTROL.search(note):
        raise CheckpointError("malformed checkpoint: control characters in the note")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed checkpoint: no blank line before the signatures")
    body, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise CheckpointError("malformed checkpoint: no signature lines")
    return body, block


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(f"malformed checkpoint: not a signature line: {line[:80]!r}")
    fields = line[len(SIGNATURE_PREFIX) :].split(" ")
    if len(fields) != 2:
        raise CheckpointError("malformed checkpoint: a signature line is '— <name> <base64>'")
    name, encoded = fields
    _check_key_name(name, "checkpoint")
    raw = _b64decode(encoded, "malformed checkpoint: a signature is not base64")
    if len(raw) < 5:
        raise CheckpointError("malformed checkpoint: a signature is too short")
    return Signature(name, raw[:4], raw[4:])


def _check_key_name(name: str, what: str) -> None:
    """C2SP key names: non-empty, no '+', no whitespace (Unicode spaces included)."""
    if not _is_key_name(name):
        raise CheckpointError(f"malformed {what}: key name {name!r} is empty or has '+' or spaces")


@functools.lru_cache(maxsize=256)
def _is_key_name(name: str) -> bool:
    # Cached: a log's notes all carry the same one or two names.
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


@functools.lru_cache(maxsize=16)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def _check_body_fields(checkpoint: Checkpoint) -> None:
    for line in (checkpoint.origin, *checkpoint.extensions):
        if not line or "\n" in line:
            raise CheckpointError("malformed checkpoint: origin and extensions are single lines")
    if not 0 <= checkpoint.size <= MAX_TREE_SIZE or len(checkpoint.root) != 32:
        raise CheckpointError("malformed checkpoint: bad size or a root that is not 32 bytes")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str, message: str) -> bytes:
    """Strict standard base64: the alphabet, padding, and the one canonical encoding."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise CheckpointError(message) from None
    if _b64(raw) != text:
        raise CheckpointError(message)
    return raw
