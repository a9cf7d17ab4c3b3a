"""Sealed arms: how every arm is stored, in the database and in the audit trail (URS §5 R-SEAL).

An arm id is padded to ``ARM_PLAINTEXT_LENGTH`` bytes and encrypted with AES-256-GCM under the
trial's data key. The associated data names the trial, the kind of object (slot, kit,
participant) and its id, so a ciphertext copied onto another row fails to open there instead
of silently giving that row another object's arm.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.masterkeys import KeysError

ARM_PLAINTEXT_LENGTH = 64
NONCE_LENGTH = 12
TAG_LENGTH = 16
CIPHERTEXT_LENGTH = ARM_PLAINTEXT_LENGTH + TAG_LENGTH
TEXT_VERSION = "v1"
DATA_KEY_LENGTH = 32

_ARM_ID = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Key ids appear in the "v1.<key id>.<nonce>.<ciphertext>" text form: no "." allowed.
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*")
_AAD_PREFIX = b"sealroom/arm/v1|"
_MAX_TEXT_LENGTH = 512


class UnsealError(KeysError):
    """A sealed arm cannot be opened or parsed. Messages never contain an arm or a key."""


def _is_key_id(value: object) -> bool:
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, length: int, what: str) -> bytes:
    if not _URLSAFE_B64.fullmatch(text):
        raise UnsealError(f"malformed sealed arm: {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise UnsealError(f"malformed sealed arm: {what} is not base64url") from None
    # Re-encoding must give the input back: one ciphertext, one text (no spare trailing bits).
    if len(data) != length or _b64url_encode(data) != text:
        raise UnsealError(f"malformed sealed arm: {what} has the wrong length or encoding")
    return data


def _b64_decode(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, str):
        raise UnsealError(f"malformed sealed arm: {what} must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UnsealError(f"malformed sealed arm: {what} is not base64") from None
    if len(data) != length or base64.b64encode(data).decode("ascii") != value:
        raise UnsealError(f"malformed sealed arm: {what} has the wrong length or encoding")
    return data


@dataclass(frozen=True)
class SealedArm:
    """One sealed arm: the data key id, the 96-bit nonce and the ciphertext (with its tag).

    Every sealed arm of one key id has the same size in every form, whatever the arm.
    """

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not _is_key_id(self.key_id):
            raise UnsealError("malformed sealed arm: bad key id")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_LENGTH:
            raise UnsealError(f"malformed sealed arm: the nonce must be {NONCE_LENGTH} bytes")
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) != CIPHERTEXT_LENGTH:
            raise UnsealError(
                f"malformed sealed arm: the ciphertext must be {CIPHERTEXT_LENGTH} bytes"
            )

    def to_text(self) -> str:
        """``v1.<key id>.<base64url nonce>.<base64url ciphertext>``, unpadded: one column."""
        return ".".join(
            (TEXT_VERSION, self.key_id, _b64url_encode(self.nonce), _b64url_encode(self.ciphertext))
        )

    @classmethod
    def from_text(cls, text: str) -> Self:
        """Parse ``to_text`` output; UnsealError if it is malformed."""
        if not isinstance(text, str) or len(text) > _MAX_TEXT_LENGTH:
            raise UnsealError("malformed sealed arm: not a sealed arm text")
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != TEXT_VERSION:
            raise UnsealError(f"malformed sealed arm: expected {TEXT_VERSION}.<key>.<nonce>.<ct>")
        _, key_id, nonce, ciphertext = parts
        return cls(
            key_id=key_id,
            nonce=_b64url_decode(nonce, NONCE_LENGTH, "nonce"),
            ciphertext=_b64url_decode(ciphertext, CIPHERTEXT_LENGTH, "ciphertext"),
        )

    def to_json(self) -> dict[str, str]:
        """``{"key_id", "nonce", "ciphertext"}`` with standard base64: the audit trail's form."""
        return {
            "key_id": self.key_id,
            "nonce": base64.b64encode(self.nonce).decode("ascii"),
            "ciphertext": base64.b64encode(self.ciphertext).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        """Parse ``to_json`` output (exactly those three keys); UnsealError if malformed."""
        if not isinstance(obj, Mapping) or set(obj) != {"key_id", "nonce", "ciphertext"}:
            raise UnsealError("malformed sealed arm: expected key_id, nonce and ciphertext")
        return cls(
            key_id=obj["key_id"],
            nonce=_b64_decode(obj["nonce"], NONCE_LENGTH, "nonce"),
            ciphertext=_b64_decode(obj["ciphertext"], CIPHERTEXT_LENGTH, "ciphertext"),
        )


def _field(value: object, name: str) -> bytes:
    """A component of the associated data, refused if it could make the encoding ambiguous."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if "|" in value:
        # "|" separates the fields: with it, ("a|b", "c") and ("a", "b|c") would authenticate
        # the same bytes, and a seal could be moved between the two rows.
        raise ValueError(f"{name} may not contain '|'")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode text") from None


class Sealer:
    """Seals and unseals the arms of one trial with its data keys.

    ``data_keys`` maps data key id to the clear 32-byte key (every key that may have sealed
    something still stored); ``active_key_id`` seals new arms. ``fetch_key``, when given, is
    asked for a data key id this sealer does not hold (one that a rotation elsewhere made
    after this sealer was built) and returns the clear key or None.
    """

    def __init__(
        self,
        trial_id: str,
        data_keys: Mapping[str, bytes],
        active_key_id: str,
        fetch_key: Callable[[str], bytes | None] | None = None,
    ) -> None:
        """Keep an AES-256-GCM cipher per data key; ValueError on a bad id or key."""
        self._trial = _field(trial_id, "trial id")
        self._trial_id = trial_id
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in data_keys.items():
            if not _is_key_id(key_id):
                raise ValueError("data key ids must be 1 to 64 of A-Z a-z 0-9 _ -")
            if not isinstance(key, bytes) or len(key) != DATA_KEY_LENGTH:
                raise ValueError(f"data key {key_id} must be {DATA_KEY_LENGTH} bytes (AES-256)")
            ciphers[key_id] = AESGCM(key)
        if active_key_id not in ciphers:
            raise ValueError(f"active data key {active_key_id!r} is not among the data keys")
        self._ciphers = ciphers
        self._active_key_id = active_key_id
        self._fetch_key = fetch_key

    @property
    def trial_id(self) -> str:
        """The trial whose arms this sealer seals."""
        return self._trial_id

    @property
    def active_key_id(self) -> str:
        """The data key id that seals new arms."""
        return self._active_key_id

    def __repr__(self) -> str:
        # Key ids only: the data keys must never reach a log line or a traceback.
        return (
            f"Sealer(trial_id={self._trial_id!r}, active_key_id={self._active_key_id!r}, "
            f"key_ids={sorted(self._ciphers)!r})"
        )

    def _associated_data(self, kind: str, object_id: str) -> bytes:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise ValueError("kind must be a short lower-case ASCII word such as 'slot'")
        return _AAD_PREFIX + b"|".join(
            (self._trial, kind.encode("ascii"), _field(object_id, "object id"))
        )

    def _learn_key(self, key_id: str) -> AESGCM | None:
        assert self._fetch_key is not None
        key = self._fetch_key(key_id)
        if key is None:
            return None
        if not isinstance(key, bytes) or len(key) != DATA_KEY_LENGTH:
            raise UnsealError(f"data key {key_id} must be {DATA_KEY_LENGTH} bytes (AES-256)")
        cipher = AESGCM(key)
        # A new dict, swapped in whole: threads reading the old one never see it half-built.
        self._ciphers = {**self._ciphers, key_id: cipher}
        return cipher

    def seal_arm(self, arm_id: str, kind: str, object_id: str) -> SealedArm:
        """Seal ``arm_id`` for the object ``(kind, object_id)`` of this trial.

        The plaintext is the arm id padded with NUL bytes to ``ARM_PLAINTEXT_LENGTH``, so every
        ciphertext has one length: an arm cannot be told from the size of its seal. The nonce is
        96 random bits from the OS, fresh for every seal: a trial seals at most some hundred
        thousand arms per data key, far below the 2**32 random-nonce invocations NIST SP
        800-38D allows per key, so a repeated nonce (which would break GCM) is not a practical
        risk.
        """
        # The message must not echo the arm id: it is the secret being sealed.
        if not isinstance(arm_id, str) or not _ARM_ID.fullmatch(arm_id):
            raise ValueError("arm id must match [a-z][a-z0-9_]{0,31}")
        plaintext = arm_id.encode("ascii").ljust(ARM_PLAINTEXT_LENGTH, b"\0")
        aad = self._associated_data(kind, object_id)
        nonce = os.urandom(NONCE_LENGTH)
        ciphertext = self._ciphers[self._active_key_id].encrypt(nonce, plaintext, aad)
        return SealedArm(key_id=self._active_key_id, nonce=nonce, ciphertext=ciphertext)

    def unseal_arm(self, sealed: SealedArm, kind: str, object_id: str) -> str:
        """Open a seal made for ``(kind, object_id)`` of this trial and return the arm id.

        UnsealError for an unknown data key id, a failed tag (another trial, kind or object, or
        an altered nonce or ciphertext) or a plaintext that is not a padded arm id.
        """
        aad = self._associated_data(kind, object_id)
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None and self._fetch_key is not None and _is_key_id(sealed.key_id):
            cipher = self._learn_key(sealed.key_id)
        if cipher is None:
            raise UnsealError(f"unknown data key {sealed.key_id!r} for trial {self._trial_id}")
        try:
            plaintext = cipher.decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise UnsealError(
                f"sealed arm does not open as {kind} {object_id!r} of trial {self._trial_id}: "
                "it belongs to another object or was altered"
            ) from None
        arm = plaintext.rstrip(b"\0")
        # Authentic but not a padded arm id means a bug in whatever sealed it; say so without
        # quoting the plaintext.
        if len(plaintext) != ARM_PLAINTEXT_LENGTH or not _ARM_ID.fullmatch(
            arm.decode("ascii", errors="replace")
        ):
            raise UnsealError("sealed arm has bad padding or is not an arm id")
        return arm.decode("ascii")
