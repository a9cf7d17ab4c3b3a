"""Audit entries: their exact shape, canonical bytes and chain hash (URS §7).

Standard library only, so that an inspector can read it beside the URS.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

ZERO_HASH = "0" * 64
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)
_HEX64 = re.compile(r"[0-9a-f]{64}")
ENTRY_KEYS = frozenset({"seq", "time", "actor", "role", "action", "subject", "data", "prev"})


class AuditFormatError(ValueError):
    """An entry does not have the exact shape URS §7 prescribes."""


def canonical_bytes(entry: Mapping[str, Any]) -> bytes:
    """The entry's canonical bytes: the normative expression of URS §7."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def entry_hash(canonical: bytes) -> str:
    """Hex SHA-256 of an entry's canonical bytes: the next entry's ``prev``."""
    return hashlib.sha256(canonical).hexdigest()


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``, e.g. ``2026-11-29T08:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise AuditFormatError("audit times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_entry(
    *,
    seq: int,
    time: datetime,
    actor: str,
    role: str,
    action: str,
    subject: str | None,
    data: Mapping[str, Any],
    prev: str,
) -> dict[str, Any]:
    """Build one entry and check it has the exact shape of URS §7."""
    entry = {
        "seq": seq,
        "time": format_time(time),
        "actor": actor,
        "role": role,
        "action": action,
        "subject": subject,
        "data": dict(data),
        "prev": prev,
    }
    check_entry(entry)
    return entry


def parse_entry(canonical: bytes) -> dict[str, Any]:
    """Parse one entry's canonical bytes, refusing anything that is not exactly canonical."""
    try:
        entry = json.loads(canonical.decode("utf-8"), parse_float=_refuse_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuditFormatError(f"not a JSON entry: {exc}") from exc
    if not isinstance(entry, dict):
        raise AuditFormatError("an entry is a JSON object")
    if _plainly_canonical(entry, canonical):
        return entry
    # Something is wrong (or unusual): the full checks say what, in the usual order.
    check_entry(entry)
    if canonical_bytes(entry) != canonical:
        raise AuditFormatError("bytes are not the entry's canonical form")
    return entry


def _plainly_canonical(entry: dict[str, Any], canonical: bytes) -> bool:
    """The common case, without walking ``data``: ASCII bytes that are the parsed entry's
    canonical form hold no float (JSON's NaN and Infinity aside, hence the look for them),
    no lone surrogate (its canonical form cannot be encoded) and no non-ASCII key (it
    would come back unescaped), so ``check_entry`` needs only its top-level checks."""
    if not canonical.isascii() or b"NaN" in canonical or b"Infinity" in canonical:
        return False
    try:
        _check_fields(entry)
        return canonical_bytes(entry) == canonical
    except (AuditFormatError, UnicodeEncodeError):
        return False


def check_entry(entry: Mapping[str, Any]) -> None:
    """Raise AuditFormatError unless ``entry`` has exactly the keys and types of URS §7."""
    _check_fields(entry)
    if not _plain_json(entry["data"]):
        _check_value(entry["data"], "data")  # says what is wrong, or allows it (a tuple)


def _check_fields(entry: Mapping[str, Any]) -> None:
    """``check_entry`` but for what ``data`` holds (that it is an object is checked)."""
    keys = set(entry)
    if keys != ENTRY_KEYS:
        missing, extra = sorted(ENTRY_KEYS - keys), sorted(keys - ENTRY_KEYS)
        raise AuditFormatError(f"entry keys differ: missing {missing}, unexpected {extra}")
    seq = entry["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise AuditFormatError("seq must be a non-negative integer")
    for key in ("time", "actor", "role", "action", "prev"):
        if not isinstance(entry[key], str):
            raise AuditFormatError(f"{key} must be a string")
    if entry["subject"] is not None and not isinstance(entry["subject"], str):
        raise AuditFormatError("subject must be a string or null")
    if not isinstance(entry["data"], dict):
        raise AuditFormatError("data must be an object")
    if not _HEX64.fullmatch(entry["prev"]):
        raise AuditFormatError("prev must be 64 lowercase hex digits")
    # The regex fixes the exact shape; fromisoformat (fast, in C) checks it is a real date.
    time = entry["time"]
    if not _TIME.fullmatch(time):
        raise AuditFormatError("time must be RFC 3339 UTC with six fractional digits and Z")
    try:
        datetime.fromisoformat(time[:-1])
    except ValueError as exc:
        raise AuditFormatError("time must be RFC 3339 UTC with microseconds and Z") from exc


def _plain_json(value: Any) -> bool:
    """Whether ``value`` holds only what ``_check_value`` allows, in the types JSON parsing
    gives; False means "ask ``_check_value``". A loop over exact types, without the paths
    ``_check_value`` builds for its messages: ``audit verify`` runs it on every entry."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif kind is dict:
            for key in item:
                if type(key) is not str or not key.isascii():
                    return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif not (kind is int or kind is bool or item is None):
            return False
    return True


def _check_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AuditFormatError(f"{path}: lone surrogate in string") from exc
        return
    if isinstance(value, float):
        raise AuditFormatError(f"{path}: floats are not allowed (write decimals as strings)")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise AuditFormatError(f"{path}: keys must be ASCII strings")
            _check_value(item, f"{path}.{key}")
        return
    raise AuditFormatError(f"{path}: {type(value).__name__} is not allowed")


def _refuse_float(text: str) -> float:
    raise AuditFormatError(f"floats are not allowed in entries: {text}")
