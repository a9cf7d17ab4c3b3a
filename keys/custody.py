"""Split knowledge of a master key: SLIP-39 mnemonic shares, one per custodian (R-KEY-2).

The master key is split with the ``shamir-mnemonic`` library (the SLIP-39 reference code), so
that any ``threshold`` of the ``shares`` custodians together rebuild it and fewer learn
nothing about it. A share is words with an RS1024 checksum: a mistyped or swapped word is
caught when the share is read, before any arithmetic on it.

A share file (mode 0600) is three lines a custodian can read aloud::

    sealroom master key share 2 of 5; any 3 rebuild the key
    key id: mk-0123456789abcdef
    share: academic acid ... (33 words)

The key id is not secret: it is what every wrapped data key names, and it lets ``combine``
write the key file under its own name. Only the ``share:`` line is secret.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shamir_mnemonic import MnemonicError, Share, combine_mnemonics, generate_mnemonics

from keys.masterkeys import (
    _MASTER_KEY_ID,
    KEY_BYTES,
    KeysError,
    _ensure_private_dir,
    _read_secret_file,
    _write_new_secret_file,
)

SHARE_FILE_SUFFIX = ".share"
#: SLIP-39 allows up to 16 shares in a group; a threshold of 1 would be no split at all.
MAX_SHARES = 16
_HEADER = re.compile(r"sealroom master key share (\d+) of (\d+); any (\d+) rebuild the key")
_MAX_SHARE_FILE_BYTES = 4096


class ShareError(KeysError):
    """A share that cannot be used: unreadable, mistyped, of another key, or too few shares.

    Messages name the file and what is wrong, never a word of the share.
    """


@dataclass(frozen=True)
class MasterKeyShare:
    """One custodian's share: which key it belongs to, its number and its mnemonic."""

    key_id: str
    number: int
    shares: int
    threshold: int
    mnemonic: str

    def __repr__(self) -> str:
        # The mnemonic is secret: a repr in a log must not carry it.
        return f"MasterKeyShare(key_id={self.key_id!r}, number={self.number}, of={self.shares})"

    def to_text(self) -> str:
        """The share file's text (see the module docstring)."""
        return (
            f"sealroom master key share {self.number} of {self.shares}; "
            f"any {self.threshold} rebuild the key\n"
            f"key id: {self.key_id}\n"
            f"share: {self.mnemonic}\n"
        )


def split_key(
    key_id: str, key: bytes, shares: int, threshold: int, passphrase: bytes = b""
) -> list[MasterKeyShare]:
    """Split ``key`` into ``shares`` SLIP-39 shares of which any ``threshold`` rebuild it.

    One group, so every share counts the same. With a passphrase the shares rebuild the key
    only together with it (SLIP-39's encryption of the master secret).
    """
    if not _MASTER_KEY_ID.fullmatch(key_id):
        raise ShareError(f"{key_id!r} is not a master key id (mk-<16 hex>)")
    if len(key) != KEY_BYTES:
        raise ShareError(f"a master key is {KEY_BYTES} bytes")
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise ShareError(
            f"need 2 <= threshold <= shares <= {MAX_SHARES} (got {threshold} of {shares}): "
            "a threshold of 1 would give each custodian the whole key"
        )
    try:
        (mnemonics,) = generate_mnemonics(1, [(threshold, shares)], key, passphrase)
    except ValueError as exc:
        # The only ValueError generate_mnemonics raises about its input is the passphrase's
        # alphabet; its message quotes no passphrase.
        raise ShareError(f"cannot split the key: {exc}") from None
    return [
        MasterKeyShare(key_id, number, shares, threshold, mnemonic)
        for number, mnemonic in enumerate(mnemonics, start=1)
    ]


def write_share_files(directory: Path, shares: Iterable[MasterKeyShare]) -> list[Path]:
    """Write one file per share into ``directory`` (mode 0700, created if missing), 0600 each.

    Refuses to overwrite an existing share file: a set of shares is never silently replaced.
    """
    _ensure_private_dir(directory)
    paths = []
    for share in shares:
        path = (
            directory / f"{share.key_id}-share-{share.number}-of-{share.shares}{SHARE_FILE_SUFFIX}"
        )
        _write_new_secret_file(path, share.to_text().encode("ascii"))
        paths.append(path)
    return paths


def read_share_file(path: Path) -> MasterKeyShare:
    """Parse a share file, checking the mnemonic's words and checksum."""
    try:
        data = _read_secret_file(path)
    except KeysError as exc:
        raise ShareError(str(exc).replace("key file", "share file")) from None
    if len(data) > _MAX_SHARE_FILE_BYTES:
        raise ShareError(f"share file {path} is too large to be a share file")
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ShareError(f"share file {path} is malformed: not ASCII text") from None
    if len(lines) != 3:
        raise ShareError(f"share file {path} is malformed: expected three lines")
    header, key_line, share_line = lines
    match = _HEADER.fullmatch(header)
    key_id = key_line.removeprefix("key id: ")
    if (
        match is None
        or not _MASTER_KEY_ID.fullmatch(key_id)
        or not share_line.startswith("share: ")
    ):
        raise ShareError(f"share file {path} is malformed: not a sealroom master key share")
    share = parse_share(key_id, share_line.removeprefix("share: "), f"share file {path}")
    number, count, threshold = (int(group) for group in match.groups())
    if (number, threshold) != (share.number, share.threshold):
        raise ShareError(f"share file {path} is malformed: its header does not match its share")
    return MasterKeyShare(key_id, number, count, threshold, share.mnemonic)


def parse_share(key_id: str, mnemonic: str, where: str) -> MasterKeyShare:
    """A share from its key id and mnemonic words; ShareError naming ``where`` if mistyped.

    SLIP-39 words carry the share's number and threshold but not how many shares were made:
    ``shares`` is 0 here (a share file's header says it).
    """
    if not _MASTER_KEY_ID.fullmatch(key_id):
        raise ShareError(f"{where}: {key_id!r} is not a master key id (mk-<16 hex>)")
    words = " ".join(mnemonic.lower().split())
    try:
        share = Share.from_mnemonic(words)
    except MnemonicError as exc:
        raise ShareError(f"{where} is not a valid share: {_mnemonic_reason(exc)}") from None
    if share.group_count != 1:
        raise ShareError(f"{where} is a share of a multi-group split, which sealroom never makes")
    return MasterKeyShare(key_id, share.index + 1, 0, share.member_threshold, words)


def _mnemonic_reason(exc: MnemonicError) -> str:
    """The library's reason, which names lengths, checksums or share fields, never a word."""
    text = str(exc)
    if "checksum" in text.lower():
        return "its checksum does not match: a word is mistyped or missing (check each word)"
    if "invalid mnemonic word" in text.lower():
        return "a word is not in the SLIP-39 word list: a word is mistyped"
    return text


def combine_shares(shares: Iterable[MasterKeyShare], passphrase: bytes = b"") -> tuple[str, bytes]:
    """Rebuild ``(key id, key)`` from shares of one split; ShareError if they cannot.

    SLIP-39 refuses fewer shares than the threshold, shares of different splits and a share
    given twice. A wrong passphrase is not detectable here (SLIP-39 gives another key): the
    caller checks the key against what it wrapped.
    """
    given = list(shares)
    if not given:
        raise ShareError("no shares given")
    key_ids = {share.key_id for share in given}
    if len(key_ids) != 1:
        raise ShareError(
            f"the shares belong to different master keys: {', '.join(sorted(key_ids))}"
        )
    numbers = [share.number for share in given]
    if len(set(numbers)) != len(numbers):
        raise ShareError("a share was given twice")
    threshold = given[0].threshold
    if len(given) < threshold:
        raise ShareError(
            f"{len(given)} share(s) given, but {threshold} are needed to rebuild the key"
        )
    try:
        key = combine_mnemonics([share.mnemonic for share in given], passphrase)
    except MnemonicError as exc:
        raise ShareError(f"the shares do not combine: {exc}") from None
    if len(key) != KEY_BYTES:
        raise ShareError(f"the shares rebuild a secret that is not a {KEY_BYTES}-byte master key")
    return key_ids.pop(), key


def master_key_file_text(key: bytes) -> bytes:
    """The bytes of a master key file (``keys.masterkeys`` layout): base64, then a newline."""
    return base64.b64encode(key) + b"\n"


def master_key_env_value(key_id: str, key: bytes) -> str:
    """The ``SEALROOM_MASTER_KEY`` value for ``key``: ``<key id>:<base64>``."""
    return f"{key_id}:{base64.b64encode(key).decode('ascii')}"


def write_master_key_file(path: Path, key: bytes) -> None:
    """Write a rebuilt key file (mode 0600); refuse to overwrite one."""
    _write_new_secret_file(Path(os.fspath(path)), master_key_file_text(key))
