"""An independent monitor of a Sealroom audit log, for a sponsor, a CRO or an ethics committee.

Run from cron with any user's token: it fetches the latest signed checkpoint, checks its
signature against the verifier key it was given out of band (never the one the server
offers), asks for a consistency proof from the last checkpoint it saw, and keeps the new one
in its state directory. A rollback (the log got shorter), a fork (the log no longer extends
what was seen) or a bad signature is an alarm: exit status 1 and a message saying which.

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

STATE_FILE = "checkpoint"
HISTORY_FILE = "history.log"

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
    note = _text(fetch("/audit/checkpoint"))
    try:
        latest = verify_checkpoint(note, verifier_key)
    except CheckpointError as error:
        raise MonitorAlarm(f"bad signature: the latest checkpoint is refused: {error}") from None

    previous = _load_previous(state_dir, verifier_key)
    if previous is not None:
        if latest.origin != previous.origin:
            raise MonitorAlarm(
                f"the log's origin changed from {previous.origin!r} to {latest.origin!r}"
            )
        if latest.size < previous.size:
            raise MonitorAlarm(
                f"rollback: the log now has {latest.size} entries, but a checkpoint of "
                f"{previous.size} entries was signed and seen earlier"
            )
        if latest.size == previous.size:
            if latest.root != previous.root:
                raise MonitorAlarm(
                    f"fork: two different signed roots for the same size {latest.size}"
                )
        else:
            proof = _consistency_proof(fetch, previous.size, latest.size)
            if not verify_consistency(
                previous.size, latest.size, previous.root, latest.root, proof
            ):
                raise MonitorAlarm(
                    f"fork: the log of {latest.size} entries does not extend the checkpoint "
                    f"of {previous.size} entries seen earlier: its history was rewritten"
                )
    _save(state_dir, note, latest)
    return MonitorResult(latest=latest, previous=previous)


def _consistency_proof(fetch: Fetch, first: int, second: int) -> list[bytes]:
    query = urllib.parse.urlencode({"first": first, "second": second})
    try:
        body = json.loads(fetch(f"/audit/proof/consistency?{query}"))
        if body.get("first") != first or body.get("second") != second:
            raise ValueError("the proof is for other sizes")
        return [base64.b64decode(h, validate=True) for h in body["hashes"]]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise MonitorAlarm(f"fork: the server gave no valid consistency proof ({error})") from None


def _load_previous(state_dir: Path, verifier_key: VerifierKey) -> Checkpoint | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return verify_checkpoint(path.read_text(encoding="utf-8"), verifier_key)
    except (OSError, CheckpointError) as error:
        raise MonitorError(f"the saved checkpoint {path} cannot be trusted: {error}") from None


def _save(state_dir: Path, note: str, checkpoint: Checkpoint) -> None:
    """Replace the saved checkpoint atomically and append a line to the history."""
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / f".{STATE_FILE}.tmp"
    temporary.write_text(note, encoding="utf-8")
    os.replace(temporary, state_dir / STATE_FILE)
    root = base64.b64encode(checkpoint.root).decode("ascii")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with (state_dir / HISTORY_FILE).open("a", encoding="utf-8") as history:
        history.write(f"{stamp} {checkpoint.origin} {checkpoint.size} {root}\n")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MonitorAlarm("bad signature: the checkpoint is not UTF-8 text") from None
