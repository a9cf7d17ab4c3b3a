"""An independent monitor of a Sealroom audit log, for a sponsor, a CRO or an ethics committee.

Run from cron with any user's token: it fetches the latest signed checkpoint, checks its
signature against the verifier key it was given out of band (never the one the server
offers), asks for a consistency proof from the last checkpoint it saw, and keeps the new one
in its state directory. A rollback (the log got shorter), a fork (the log no longer extends
what was seen) or a bad signature is an alarm: exit status 1 and a message saying which. The
alarm stands, run after run, until it is dealt with.

After the service was restored from a backup, the alarm is expected: the restored log ends at
the backup's checkpoint (then grows again). The monitor's operator, told of the restore out of
band and handed the backup's signed checkpoint, accepts it once (:func:`accept_restore`): the
monitor checks that the checkpoint is signed by the trusted key, that it extends every
checkpoint this monitor saw up to its size, and that the log now served extends it; it then
says how many entries it had seen signed that are gone, and watches the restored log from
there. Nothing else resets the alarm short of deleting the state directory.

A signing-key rotation (R-KEY-1) is followed only through its hand-over: when the latest
checkpoint is not signed by the key in force, the monitor fetches ``/audit/key-hand-overs``
and follows each one that the key in force signed, whose ``key.rotated`` entry (proved in
that checkpoint) hands over from it and that the incoming key signed too. The keys followed
are kept in the state directory (``keys``, first the one given on the command line); any
other change of key stays an alarm.

Standard library (urllib) and this package only: it shares no code with the server.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from audit.checkpoint import Checkpoint, CheckpointError, VerifierKey, verify_checkpoint
from audit.merkle import verify_consistency
from audit.rotation import HandOverError, follow_hand_over

STATE_FILE = "checkpoint"
KEYS_FILE = "keys"
HISTORY_FILE = "history.log"
#: The history line of an accepted restore: ``<time> restore-accepted <origin> <size> <root>``.
RESTORED_MARK = "restore-accepted"

Fetch = Callable[[str], bytes]


class MonitorAlarm(Exception):
    """The log was rolled back or forked, or a checkpoint is not signed by the trusted key."""


class MonitorError(Exception):
    """The log could not be checked (network, HTTP error, unreadable state)."""


@dataclass(frozen=True)
class MonitorResult:
    """A check that passed: the checkpoint now trusted and the one seen before, if any."""

    latest: Checkpoint
    previous: Checkpoint | None

    def message(self) -> str:
        """One line for the cron log."""
        was = "first check" if self.previous is None else f"was {self.previous.size}"
        return (
            f"OK: {self.latest.origin} has {self.latest.size} entries ({was}); signed by the "
            "trusted key and consistent with every checkpoint seen before"
        )


def http_fetcher(base_url: str, token: str, timeout: float = 30) -> Fetch:
    """A fetcher of ``/api/v1/audit/...`` paths on ``base_url`` with a bearer token."""
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise MonitorError(f"--url must be an http(s) URL, not {base_url!r}")
    base = base_url.rstrip("/")
    if not base.endswith("/api/v1"):
        base += "/api/v1"

    def fetch(path: str) -> bytes:
        # The scheme was checked above: only http(s), never file: or a custom one.
        request = urllib.request.Request(  # noqa: S310
            base + path, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return response.read()
        except urllib.error.HTTPError as error:
            raise MonitorError(f"GET {path}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise MonitorError(f"GET {path}: {error}") from None

    return fetch


def check_log(fetch: Fetch, verifier_key: VerifierKey, state_dir: Path) -> MonitorResult:
    """Check the log once; remember the new checkpoint only if everything holds."""
    chain = _key_chain(state_dir, verifier_key)
    previous = _load_previous(state_dir, chain)
    note = _text(fetch("/audit/checkpoint"))
    try:
        latest = verify_checkpoint(note, chain[-1])
    except CheckpointError as error:
        hand_overs = _follow_hand_overs(fetch, chain, previous)
        if not hand_overs:
            raise MonitorAlarm(
                f"bad signature: the latest checkpoint is refused, and no hand-over from the "
                f"key in force was published: {error}"
            ) from None
        try:
            latest = verify_checkpoint(note, chain[-1])
        except CheckpointError as again:
            raise MonitorAlarm(
                f"bad signature: the latest checkpoint is refused: {again}"
            ) from None
        for hand_over in hand_overs:
            _check_same_origin(hand_over, latest)
            _check_extends(fetch, hand_over, latest, "as the key hand-over")
        _save_keys(state_dir, chain)
    if previous is not None:
        _check_same_origin(previous, latest)
        _check_extends(fetch, previous, latest, "seen earlier")
    _save(state_dir, note, latest)
    return MonitorResult(latest=latest, previous=previous)


def _key_chain(state_dir: Path, verifier_key: VerifierKey) -> list[VerifierKey]:
    """The keys this monitor trusts, in order: the given one, then each one followed to."""
    from audit.checkpoint import parse_verifier_key

    path = state_dir / KEYS_FILE
    if not path.exists():
        return [verifier_key]
    try:
        chain = [parse_verifier_key(line) for line in path.read_text("utf-8").splitlines()]
    except (OSError, CheckpointError) as error:
        raise MonitorError(f"the followed keys {path} cannot be read: {error}") from None
    if not chain or verifier_key.line() not in [key.line() for key in chain]:
        raise MonitorError(
            f"{path} follows keys from {chain[0].label() if chain else 'nothing'}, not from "
            f"the key given ({verifier_key.label()}): use another state directory"
        )
    return chain


def _save_keys(state_dir: Path, chain: list[VerifierKey]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / f".{KEYS_FILE}.tmp"
    temporary.write_text("".join(key.line() + "\n" for key in chain), encoding="utf-8")
    os.replace(temporary, state_dir / KEYS_FILE)


def _follow_hand_overs(
    fetch: Fetch, chain: list[VerifierKey], previous: Checkpoint | None
) -> list[Checkpoint]:
    """Follow the published hand-overs from the key in force; extends ``chain`` in place.

    Each followed hand-over must extend what this monitor saw before it.
    """
    try:
        published = json.loads(fetch("/audit/key-hand-overs"))
    except (ValueError, MonitorError):
        return []
    followed: list[Checkpoint] = []
    earlier = previous
    for item in published if isinstance(published, list) else []:
        try:
            seq, entry, note = int(item["seq"]), str(item["entry"]), str(item["checkpoint"])
            proof = [base64.b64decode(h, validate=True) for h in item["inclusion_proof"]]
            incoming, hand_over = follow_hand_over(
                chain[-1], seq, entry.encode("utf-8"), note, proof
            )
        except HandOverError:
            continue  # signed by an earlier key (already followed) or not from ours at all
        except (KeyError, TypeError, ValueError) as error:
            raise MonitorAlarm(f"the published key hand-overs cannot be read: {error}") from None
        if earlier is not None:
            _check_same_origin(earlier, hand_over)
            _check_extends(fetch, earlier, hand_over, "seen before the key hand-over")
        chain.append(incoming)
        followed.append(hand_over)
        earlier = hand_over
    return followed


@dataclass(frozen=True)
class RestoreAccepted:
    """A restore accepted: the checkpoint restored to, and what this monitor saw that is gone."""

    restored: Checkpoint
    latest: Checkpoint
    previous: Checkpoint | None

    @property
    def lost(self) -> int:
        """Entries this monitor had seen signed beyond the restored checkpoint."""
        if self.previous is None:
            return 0
        return max(0, self.previous.size - self.restored.size)

    def message(self) -> str:
        """One line for the cron log, saying what was lost."""
        seen = "nothing" if self.previous is None else f"{self.previous.size} entries"
        return (
            f"RESTORE ACCEPTED: {self.latest.origin} was restored to its signed checkpoint of "
            f"{self.restored.size} entries and now has {self.latest.size}; this monitor had "
            f"seen {seen}: {self.lost} entries it saw signed are no longer in the log. "
            "Watching the restored log from here."
        )


def accept_restore(
    fetch: Fetch, verifier_key: VerifierKey, state_dir: Path, restored_note: str
) -> RestoreAccepted:
    """Accept that the log was restored to the signed checkpoint ``restored_note``.

    Holds only if that checkpoint is signed by the trusted key, extends every checkpoint this
    monitor saw of at most its size (the restore rewrote nothing this monitor saw before the
    backup) and the log now served extends it. Then the served checkpoint is kept as the new
    state and the history records the restore.
    """
    try:
        restored = verify_checkpoint(restored_note, verifier_key)
    except CheckpointError as error:
        raise MonitorAlarm(f"bad signature: the restored checkpoint is refused: {error}") from None
    note, latest = _latest(fetch, verifier_key)
    _check_same_origin(restored, latest)
    _check_extends(fetch, restored, latest, "announced as the one restored to")
    previous = _load_previous(state_dir, verifier_key)
    anchor = _last_seen_within(state_dir, restored.size, previous)
    if anchor is not None:
        _check_same_origin(anchor, latest)
        _check_extends(fetch, anchor, latest, "seen before the backup")
    _save(state_dir, note, latest, restored_from=restored)
    return RestoreAccepted(restored=restored, latest=latest, previous=previous)


def _latest(fetch: Fetch, verifier_key: VerifierKey) -> tuple[str, Checkpoint]:
    note = _text(fetch("/audit/checkpoint"))
    try:
        return note, verify_checkpoint(note, verifier_key)
    except CheckpointError as error:
        raise MonitorAlarm(f"bad signature: the latest checkpoint is refused: {error}") from None


def _check_same_origin(earlier: Checkpoint, latest: Checkpoint) -> None:
    if latest.origin != earlier.origin:
        raise MonitorAlarm(f"the log's origin changed from {earlier.origin!r} to {latest.origin!r}")


def _check_extends(fetch: Fetch, earlier: Checkpoint, latest: Checkpoint, what: str) -> None:
    """Alarm unless the log of ``latest`` extends ``earlier``: a rollback or a fork."""
    if latest.size < earlier.size:
        raise MonitorAlarm(
            f"rollback: the log now has {latest.size} entries, but a checkpoint of "
            f"{earlier.size} entries was signed and {what}"
        )
    if latest.size == earlier.size:
        if latest.root != earlier.root:
            raise MonitorAlarm(f"fork: two different signed roots for the same size {latest.size}")
        return
    proof = _consistency_proof(fetch, earlier.size, latest.size)
    if not verify_consistency(earlier.size, latest.size, earlier.root, latest.root, proof):
        raise MonitorAlarm(
            f"fork: the log of {latest.size} entries does not extend the checkpoint "
            f"of {earlier.size} entries signed and {what}: its history was rewritten"
        )


def _last_seen_within(state_dir: Path, size: int, previous: Checkpoint | None) -> Checkpoint | None:
    """The largest checkpoint this monitor saw (since the last restore it accepted) of at most
    ``size`` entries, from its history and its saved checkpoint."""
    seen: list[Checkpoint] = []
    history = state_dir / HISTORY_FILE
    try:
        lines = history.read_text(encoding="utf-8").splitlines() if history.exists() else []
    except OSError as error:
        raise MonitorError(f"the history {history} cannot be read: {error}") from None
    for number, line in enumerate(lines, 1):
        # <time> [restore-accepted] <origin> <size> <root>; the origin may hold spaces.
        _stamp, _, rest = line.partition(" ")
        restore, _, marked = rest.partition(" ")
        try:
            origin, size_text, root = (marked if restore == RESTORED_MARK else rest).rsplit(" ", 2)
            checkpoint = Checkpoint(origin, int(size_text), base64.b64decode(root, validate=True))
        except ValueError:
            raise MonitorError(f"{history}, line {number}, is not a history line") from None
        # What was seen before an accepted restore is superseded by its checkpoint.
        seen = [checkpoint] if restore == RESTORED_MARK else [*seen, checkpoint]
    if previous is not None:
        seen.append(previous)
    within = [checkpoint for checkpoint in seen if checkpoint.size <= size]
    return max(within, key=lambda checkpoint: checkpoint.size, default=None)


def _consistency_proof(fetch: Fetch, first: int, second: int) -> list[bytes]:
    query = urllib.parse.urlencode({"first": first, "second": second})
    try:
        body = json.loads(fetch(f"/audit/proof/consistency?{query}"))
        if body.get("first") != first or body.get("second") != second:
            raise ValueError("the proof is for other sizes")
        return [base64.b64decode(h, validate=True) for h in body["hashes"]]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise MonitorAlarm(f"fork: the server gave no valid consistency proof ({error})") from None


def _load_previous(state_dir: Path, keys: VerifierKey | list[VerifierKey]) -> Checkpoint | None:
    """The saved checkpoint, signed by one of the trusted keys (the one in force when saved)."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    chain = keys if isinstance(keys, list) else [keys]
    try:
        note = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MonitorError(f"the saved checkpoint {path} cannot be trusted: {error}") from None
    failure: CheckpointError | None = None
    for key in reversed(chain):
        try:
            return verify_checkpoint(note, key)
        except CheckpointError as error:
            failure = failure or error
    raise MonitorError(f"the saved checkpoint {path} cannot be trusted: {failure}")


def _save(
    state_dir: Path, note: str, checkpoint: Checkpoint, restored_from: Checkpoint | None = None
) -> None:
    """Replace the saved checkpoint atomically and append to the history (first the restore
    accepted, if one was)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / f".{STATE_FILE}.tmp"
    temporary.write_text(note, encoding="utf-8")
    os.replace(temporary, state_dir / STATE_FILE)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = []
    if restored_from is not None:
        lines.append(f"{stamp} {RESTORED_MARK} {_history_fields(restored_from)}\n")
    lines.append(f"{stamp} {_history_fields(checkpoint)}\n")
    with (state_dir / HISTORY_FILE).open("a", encoding="utf-8") as history:
        history.writelines(lines)


def _history_fields(checkpoint: Checkpoint) -> str:
    root = base64.b64encode(checkpoint.root).decode("ascii")
    return f"{checkpoint.origin} {checkpoint.size} {root}"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MonitorAlarm("bad signature: the checkpoint is not UTF-8 text") from None
