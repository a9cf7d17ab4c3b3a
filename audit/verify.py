"""Verify a whole audit log: entries, hash chain, Merkle tree and signed checkpoints (URS §7, §9).

Pure: it takes the stored bytes and notes and returns a report; ``sealroom audit verify``
and the monitor decide what to do with it. Entries are read once, in order, keeping only
O(log n) tree state plus whatever is wrong, so an export of millions of entries can be
streamed through ``verify_export_stream``.

How the first altered entry is named (URS §9: the edited entry itself, not its successor):

* A signed checkpoint of size ``s`` commits to entries ``0 .. s-1`` exactly. Let ``b`` be the
  smallest checkpoint size whose root differs from the recomputed tree and ``a`` the largest
  matching size below it: entries before ``a`` are authentic, and something in ``a .. b-1``
  was altered.
* Within that window the chain says which. Link ``j`` (entry ``j`` to ``j+1``) is broken when
  entry ``j+1``'s ``prev`` is not the hash of entry ``j``. Editing an entry's data breaks
  only its outgoing link; editing its ``prev`` breaks its incoming link (``prev`` no longer
  matches) and its outgoing one (its own hash changed). So in the first run of consecutive
  broken links, the altered entry is the *last* source of the run, never before ``a``
  (entry ``a-1`` is authentic) and never after ``b-1`` (the checkpoint of ``b`` does not
  cover entry ``b``).
* The last entry has no successor; its outgoing link is the ``head_hash`` storage claims
  (when storage's head claims the last entry, that is ``head_size`` is the log's size).
  If no link in the window is broken, the chain was recomputed after the edit: the window
  is all that can be said (exact when checkpoints are one transaction apart, as URS §7
  makes them).
* Without any mismatching checkpoint, the same chain rule runs over the entries after the
  last matching one.

Position problems (a missing, duplicated or reordered ``seq``) are named by position and
take precedence: chain and tree findings at or after the first of them are consequences.

Storage's head (``head_size``, ``head_hash``) is a lock and a cache, never evidence: the log
is what the entries and the signed checkpoints say. The caller passes every stored entry and
every stored checkpoint, however many the head claims; a head that disagrees with them (a
size other than the number of entries, a hash other than that of its last entry) is itself
reported.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

from audit.checkpoint import (
    DECIMAL,
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_checkpoint,
    signature_count,
    verify_checkpoint,
)
from audit.entry import ZERO_HASH, AuditFormatError, parse_entry
from audit.merkle import EMPTY_ROOT, CompactRange
from audit.rotation import (
    HandOverError,
    KeySchedule,
    SigningRotation,
    schedule_from,
    signing_rotation,
)

_MAX_LISTED = 20  # past this many position problems, summarise instead of listing them all
#: From this many stored checkpoints on, their signatures are checked by a pool of processes.
PARALLEL_FROM = 2000
_CHUNK = 5000  # notes sent to a process at a time


@dataclass
class VerifyReport:
    """The outcome of verifying a log.

    ``problems`` are human messages, most important first (the earliest entry named
    comes first); ``first_bad_seq`` is the seq of the first altered, missing or misplaced
    entry when one can be named; ``latest`` is the latest stored checkpoint accepted.
    """

    ok: bool
    size: int
    first_bad_seq: int | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    latest: Checkpoint | None = None


def verify_log(
    entries: Iterable[bytes],
    checkpoints: Sequence[str] = (),
    verifier_key: VerifierKey | None = None,
    trusted_checkpoints: Sequence[str] = (),
    head_hash: str | None = None,
    head_size: int | None = None,
    processes: int | None = None,
) -> VerifyReport:
    """Verify a log.

    ``entries`` (any iterable: it is read once, in order) are each stored entry's
    canonical bytes in storage order (position ``i``
    must hold seq ``i``): all of them, not only those up to what storage's head claims;
    ``checkpoints`` every stored signed note in storage order;
    ``trusted_checkpoints`` notes saved elsewhere (by an auditor or monitor) that the log
    must still extend; ``head_hash`` the hex hash storage claims for its last entry and
    ``head_size`` the number of entries it claims (``None``: not known, the head is taken
    to claim the entries given). ``processes`` is how many processes check checkpoint
    signatures beside the one reading the entries (``None``: one per core; a log of fewer
    than ``PARALLEL_FROM`` checkpoints is checked in this process).
    """
    return _verify(
        iter(entries),
        checkpoints,
        verifier_key,
        trusted_checkpoints,
        head_hash,
        head_size,
        processes,
    )


def verify_export_stream(
    lines: Iterable[bytes],
    checkpoints: Sequence[str] = (),
    verifier_key: VerifierKey | None = None,
    trusted_checkpoints: Sequence[str] = (),
    head_hash: str | None = None,
    head_size: int | None = None,
    processes: int | None = None,
) -> VerifyReport:
    """Like ``verify_log``, over the lines of a JSON Lines export read one at a time.

    Each line is one entry's canonical bytes followed by ``\\n`` (JSON escapes every
    newline inside strings, so a line is never split).
    """
    entries = (line[:-1] if line.endswith(b"\n") else line for line in lines)
    return _verify(
        entries, checkpoints, verifier_key, trusted_checkpoints, head_hash, head_size, processes
    )


# --- the pieces of evidence ----------------------------------------------------------------------


@dataclass
class _Head:
    """A checkpoint accepted as evidence (signed by the key, or any parsable one without key)."""

    checkpoint: Checkpoint
    trusted: bool  # from trusted_checkpoints rather than from the log's own storage

    @property
    def size(self) -> int:
        return self.checkpoint.size

    def name(self) -> str:
        kind = "trusted" if self.trusted else "signed"
        return f"{kind} checkpoint of size {self.size}"


@dataclass
class _Scan:
    """What one pass over the entries found; everything but the tree state is sparse."""

    size: int = 0
    max_seq: int = -1
    last_hash: str | None = None
    malformed: list[tuple[int, str]] = field(default_factory=list)
    misplaced: list[tuple[int, int]] = field(default_factory=list)  # (position, seq held)
    breaks: set[int] = field(default_factory=set)  # j: entry j+1's prev is not H(entry j)
    roots: dict[int, bytes] = field(default_factory=dict)
    hash_at_head: str | None = None  # hash of the entry just below storage's head size
    rotations: list[SigningRotation] = field(default_factory=list)  # signing hand-overs
    rotation_problems: list[tuple[int, str]] = field(default_factory=list)


class _Findings:
    """Problems keyed by the entry they name (those come first, by seq) or by nothing."""

    def __init__(self) -> None:
        self.by_seq: list[tuple[int, str]] = []
        self.general: list[str] = []
        self.general_seqs: list[int] = []

    def entry(self, seq: int, message: str) -> None:
        self.by_seq.append((seq, message))

    def other(self, message: str, seq: int | None = None) -> None:
        """A problem listed after those naming entries; ``seq`` still counts as first bad."""
        self.general.append(message)
        if seq is not None:
            self.general_seqs.append(seq)

    def first_seq(self) -> int | None:
        return min([seq for seq, _ in self.by_seq] + self.general_seqs, default=None)

    def messages(self) -> list[str]:
        ordered = sorted(self.by_seq, key=lambda item: item[0])  # stable: keeps insertion order
        return [message for _, message in ordered] + self.general


def _verify(
    entries: Iterable[bytes],
    checkpoints: Sequence[str],
    verifier_key: VerifierKey | None,
    trusted_checkpoints: Sequence[str],
    head_hash: str | None,
    head_size: int | None,
    processes: int | None,
) -> VerifyReport:
    findings = _Findings()
    warnings: list[str] = []
    sizes = {size for note in checkpoints if (size := _claimed_size(note)) is not None}
    sizes |= {size for note in trusted_checkpoints if (size := _claimed_size(note)) is not None}
    schedule = KeySchedule.single(verifier_key) if verifier_key is not None else None
    cosigned = (
        {_claimed_size(note) for note in checkpoints if signature_count(note) > 1}
        if schedule is not None
        else set()
    )
    if verifier_key is not None and cosigned:
        # A signing key was handed over (R-KEY-1): which key signs which size follows from
        # the key.rotated entries, so the entries are read before any signature is checked.
        scan = _scan_entries(entries, sizes, head_size)
        schedule = _schedule(verifier_key, scan, cosigned, findings)
        trusted_outcomes = _check_notes(trusted_checkpoints, schedule)
        with _SignatureChecks(checkpoints, schedule, processes) as signatures:
            stored_outcomes = signatures.outcomes()
    else:
        trusted_outcomes = _check_notes(trusted_checkpoints, schedule)
        with _SignatureChecks(checkpoints, schedule, processes) as signatures:
            # The stored notes' signatures are checked in other processes while this one
            # reads the entries, computing the root at every size a note claims: only the
            # notes the checks accept are evidence, and each of them claims its own size.
            scan = _scan_entries(entries, sizes, head_size)
            stored_outcomes = signatures.outcomes()
        if verifier_key is not None and (scan.rotations or scan.rotation_problems):
            # A key.rotated entry with no checkpoint signed by two keys: no hand-over.
            _schedule(verifier_key, scan, cosigned, findings)
    stored, unsigned = _accept_checkpoints(checkpoints, stored_outcomes, schedule, False, findings)
    trusted, _ = _accept_checkpoints(
        trusted_checkpoints, trusted_outcomes, schedule, True, findings
    )
    evidence = stored + trusted
    n = scan.size

    if verifier_key is None:
        warnings.append(
            "no verifier key was given: checkpoint signatures were not checked, so this proves"
            " nothing against whoever holds the log's signing key"
        )
    _check_storage_order(stored, findings, warnings)

    first_position_problem = _report_positions(scan, findings)
    extent = max(n, scan.max_seq + 1)
    truncated = _report_truncation(evidence, n, extent, findings)
    # The head's hash anchors the last entry's outgoing link only if the head claims it.
    head_claims_last = head_hash is not None and head_size in (None, n)
    head_broken = head_claims_last and n > 0 and head_hash != scan.last_hash
    if head_hash is not None and n == 0 and head_size is None:
        findings.entry(0, "entry 0 is missing: the log is empty but storage records a last entry")
    if head_size is not None:
        _report_head_size(scan, head_size, head_hash, extent, truncated, findings)
    _locate_alteration(
        scan,
        evidence,
        head_claims_last,
        head_broken and not truncated,
        first_position_problem,
        verifier_key is not None,
        findings,
    )
    _report_unsigned_tail(unsigned, evidence, scan, findings)

    if n and not stored:
        warnings.append(
            "no signed checkpoint covers the log: only the hash chain was checked, and a rewrite"
            " that recomputes the chain would go unnoticed"
        )
    elif stored and max(head.size for head in stored) < n:
        covered = max(head.size for head in stored)
        warnings.append(f"entries {covered} to {n - 1} are not covered by any checkpoint yet")

    latest = max(stored, key=lambda head: head.size).checkpoint if stored else None
    problems = findings.messages()
    return VerifyReport(
        ok=not problems,
        size=n,
        first_bad_seq=findings.first_seq(),
        problems=problems,
        warnings=warnings,
        latest=latest,
    )


def _schedule(
    verifier_key: VerifierKey, scan: _Scan, cosigned: set[int | None], findings: _Findings
) -> KeySchedule:
    """The key schedule the scanned hand-overs give (R-KEY-1), reporting a broken chain.

    Each key.rotated entry must be followed by a stored checkpoint of exactly its hand-over
    size (the rotation's own transaction); that it is signed by both keys is checked with
    every other signature, against the schedule.
    """
    for seq, problem in scan.rotation_problems:
        findings.entry(seq, f"entry {seq}: {problem}")
    try:
        schedule = schedule_from(verifier_key, scan.rotations)
    except HandOverError as exc:
        findings.other(str(exc), scan.rotations[0].seq if scan.rotations else None)
        return KeySchedule.single(verifier_key)
    for rotation in scan.rotations:
        if rotation.hand_over_size not in cosigned:
            findings.other(
                f"the signing key rotation at seq {rotation.seq} has no hand-over checkpoint"
                f" of size {rotation.hand_over_size} signed by {rotation.old.label()} and"
                f" {rotation.new.label()}: the change of key is not followed"
            )
    return schedule


def _accept_checkpoints(
    notes: Sequence[str],
    outcomes: Sequence[Checkpoint | CheckpointError],
    key: KeySchedule | None,
    trusted: bool,
    findings: _Findings,
) -> tuple[list[_Head], list[int]]:
    """The notes whose check (``_check_notes``) accepted them, and the refused sizes."""
    accepted: list[_Head] = []
    refused_sizes: list[int] = []
    what = "trusted checkpoint" if trusted else "checkpoint"
    for number, (note, outcome) in enumerate(zip(notes, outcomes, strict=True)):
        if isinstance(outcome, Checkpoint):
            accepted.append(_Head(outcome, trusted))
            continue
        try:
            size = parse_checkpoint(note)[0].size
        except CheckpointError:
            findings.other(f"{what} {number} cannot be read: {outcome}")
            continue
        refused_sizes.append(size)
        # One message per kind: a re-signed log would otherwise list every checkpoint.
        if len(refused_sizes) == 1 and key is not None:
            labels = " and ".join(k.label() for k in key.keys_for(size))
            findings.other(
                f"{what} {number} (size {size}) is not signed by the trusted key {labels}"
            )
        elif len(refused_sizes) == 2:
            findings.other(f"other {what}s are not signed by the trusted key either")
    return accepted, refused_sizes


def _check_notes(
    notes: Sequence[str], schedule: KeySchedule | None
) -> list[Checkpoint | CheckpointError]:
    """Each note's checkpoint if it verifies (given a key schedule) or parses (without), else
    why not. At a hand-over size every key the schedule names must sign."""
    outcomes: list[Checkpoint | CheckpointError] = []
    single = schedule.keys[0] if schedule is not None and len(schedule.keys) == 1 else None
    for note in notes:
        try:
            if schedule is None:
                outcomes.append(parse_checkpoint(note)[0])
            elif single is not None:
                # verify_checkpoint parses too: the usual path reads each note once.
                outcomes.append(verify_checkpoint(note, single))
            else:
                size = parse_checkpoint(note)[0].size
                checked = [verify_checkpoint(note, k) for k in schedule.keys_for(size)]
                outcomes.append(checked[0])
        except CheckpointError as exc:
            outcomes.append(exc)
    return outcomes


def _claimed_size(note: str) -> int | None:
    """The size a note's body claims, read as ``parse_checkpoint`` reads it; None if none.

    Unchecked: it only says at which sizes the tree root is worth computing.
    """
    lines = note[: note.rfind("\n\n") + 1].split("\n", 2)
    return int(lines[1]) if len(lines) > 2 and DECIMAL.fullmatch(lines[1]) else None


def _start_method() -> str:
    """Fork, which neither re-imports the caller's main module nor pays for imports, unless
    other threads run (a lock one of them holds would stay held in the child): then the
    forkserver, whose children re-import the main module (it needs a ``__main__`` guard)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class _SignatureChecks:
    """``_check_notes`` over the stored notes, in a pool of processes when they are many.

    Ed25519 verification is most of what verifying a log with one checkpoint per
    transaction costs: each core checks a share of the notes while the entries are read.
    """

    def __init__(
        self, notes: Sequence[str], key: KeySchedule | None, processes: int | None
    ) -> None:
        self._notes = notes
        self._key = key
        processes = (os.cpu_count() or 1) if processes is None else processes
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[Future[list[Checkpoint | CheckpointError]]] = []
        if processes > 1 and key is not None and len(notes) >= PARALLEL_FROM:
            context = multiprocessing.get_context(_start_method())
            self._pool = ProcessPoolExecutor(processes, mp_context=context)
            chunk = max(100, min(_CHUNK, -(-len(notes) // (4 * processes))))
            self._pending = [
                self._pool.submit(_check_notes, list(notes[start : start + chunk]), key)
                for start in range(0, len(notes), chunk)
            ]

    def __enter__(self) -> _SignatureChecks:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def outcomes(self) -> list[Checkpoint | CheckpointError]:
        """Every note's outcome, in order (waits for the pool)."""
        if self._pool is None:
            return _check_notes(self._notes, self._key)
        return [outcome for future in self._pending for outcome in future.result()]


def _scan_entries(entries: Iterable[bytes], sizes: set[int], head_size: int | None) -> _Scan:
    """One pass: canonical form, seq, chain links, the tree root at each wanted size, and
    the hash of entry ``head_size - 1``."""
    scan = _Scan()
    tree = CompactRange()
    if 0 in sizes:
        scan.roots[0] = EMPTY_ROOT
    expected_prev = ZERO_HASH
    sha256 = hashlib.sha256
    position = -1
    for position, raw in enumerate(entries):
        try:
            entry = parse_entry(raw)
        except AuditFormatError as exc:
            scan.malformed.append((position, str(exc)))
            scan.breaks.add(position - 1)  # its prev cannot be read: count the link as broken
        else:
            try:
                rotation = signing_rotation(raw)
            except HandOverError as exc:
                scan.rotation_problems.append((position, str(exc)))
            else:
                if rotation is not None:
                    scan.rotations.append(rotation)
            seq = entry["seq"]
            if seq != position:
                scan.misplaced.append((position, seq))
            scan.max_seq = max(scan.max_seq, seq)
            if entry["prev"] != expected_prev:
                scan.breaks.add(position - 1)  # -1: entry 0's prev must be 64 zeros
        # The stored bytes are hashed as they are: they were just checked to be canonical.
        expected_prev = sha256(raw).hexdigest()
        if position + 1 == head_size:
            scan.hash_at_head = expected_prev
        tree.append(sha256(b"\x00" + raw).digest())
        if tree.size in sizes:
            scan.roots[tree.size] = tree.root()
    scan.size = position + 1
    scan.last_hash = expected_prev if scan.size else None
    return scan


# --- the checks ----------------------------------------------------------------------------------


def _check_storage_order(stored: list[_Head], findings: _Findings, warnings: list[str]) -> None:
    """Stored checkpoints never shrink, and one log has one origin."""
    for before, after in pairwise(stored):
        if after.size < before.size:
            findings.other(
                f"checkpoints are out of order: one of size {after.size} was stored after one"
                f" of size {before.size} (rollback or tampering with the checkpoint table)"
            )
            break
    origins = {head.checkpoint.origin for head in stored}
    if len(origins) > 1:
        warnings.append(f"stored checkpoints name several origins: {', '.join(sorted(origins))}")


def _report_positions(scan: _Scan, findings: _Findings) -> int | None:
    """Name malformed, missing, duplicated and misplaced entries; return the first position."""
    for position, reason in scan.malformed:
        findings.entry(
            position, f"entry {position} is not a valid entry (altered or corrupted): {reason}"
        )
    n = scan.size
    unusual = {position for position, _ in scan.misplaced} | {p for p, _ in scan.malformed}
    held_elsewhere = Counter(seq for _, seq in scan.misplaced)

    def copies(seq: int) -> int:
        in_place = 1 if 0 <= seq < n and seq not in unusual else 0
        return in_place + held_elsewhere[seq]

    # Report the start of each run with one shift (seq - position): a deletion in the
    # middle shifts every later entry by the same amount, and is one problem, not many.
    starts = [
        (position, seq)
        for k, (position, seq) in enumerate(scan.misplaced)
        if k == 0 or scan.misplaced[k - 1] != (position - 1, seq - 1)
    ]
    for position, seq in starts[:_MAX_LISTED]:
        if copies(seq) > 1:
            message = (
                f"position {position} holds a second entry with seq {seq} (inserted or copied)"
            )
            findings.entry(position, message)
        elif seq > position and not (
            any(copies(s) for s in range(position, min(seq, n)))
            or any(position <= s < seq for s in held_elsewhere)
        ):
            if seq == position + 1:
                gap = f"entry {position} is"
            else:
                gap = f"entries {position} to {seq - 1} are"
            findings.entry(
                position, f"{gap} missing: position {position} holds the entry with seq {seq}"
            )
        else:
            findings.entry(
                position,
                f"entry {position} is out of place: position {position} holds the entry with"
                f" seq {seq}",
            )
    if len(starts) > _MAX_LISTED:
        findings.other(f"{len(starts) - _MAX_LISTED} more runs of misplaced entries not listed")
    return min(unusual, default=None)


def _report_head_size(
    scan: _Scan,
    head_size: int,
    head_hash: str | None,
    extent: int,
    truncated: bool,
    findings: _Findings,
) -> None:
    """Storage's head must claim exactly the entries stored: it is a cache, not evidence."""
    n = scan.size
    if head_size > extent and not truncated:
        missing = (
            f"entry {extent} is missing"
            if head_size == extent + 1
            else f"entries {extent} to {head_size - 1} are missing"
        )
        findings.entry(
            extent,
            f"{missing}: the stored head records {head_size} entries but the log holds {n}"
            " (truncation, or the head row was altered)",
        )
    elif head_size < n:
        wrong_hash = ""
        if head_hash is not None and head_size > 0 and head_hash != scan.hash_at_head:
            wrong_hash = f", and its hash is not that of entry {head_size - 1} either"
        findings.other(
            f"the stored head records {head_size} entries, but the log holds {n} entries"
            f"{wrong_hash}: the head row was altered (every stored entry and checkpoint was"
            " verified all the same)"
        )


def _report_truncation(evidence: list[_Head], n: int, extent: int, findings: _Findings) -> bool:
    """A checkpoint bigger than the log means entries were cut off the end."""
    beyond = [head for head in evidence if head.size > extent]
    if not beyond:
        return False
    head = max(beyond, key=lambda h: (h.size, not h.trusted))
    missing = (
        f"entry {extent} is missing"
        if head.size == extent + 1
        else f"entries {extent} to {head.size - 1} are missing"
    )
    held = f"the log has {n} entries" if extent == n else f"the log ends at seq {extent - 1}"
    signed = f"{'the trusted ' if head.trusted else ''}checkpoint of size {head.size}"
    findings.entry(extent, f"{missing}: {held} but {signed} was signed (truncation or rollback)")
    return True


def _locate_alteration(
    scan: _Scan,
    evidence: list[_Head],
    head_known: bool,
    head_broken: bool,
    first_position_problem: int | None,
    have_key: bool,
    findings: _Findings,
) -> None:
    """Name the first altered entry from the checkpoints and the chain (see the module doc)."""
    n = scan.size
    comparable = [head for head in evidence if head.size <= n]
    good = [head for head in comparable if scan.roots[head.size] == head.checkpoint.root]
    bad = [head for head in comparable if scan.roots[head.size] != head.checkpoint.root]
    # Past the first misplaced position every link is suspect anyway: a missing or swapped
    # entry breaks the link into it, and those are already reported by position.
    limit = n if first_position_problem is None else first_position_problem
    breaks = {j for j in scan.breaks if j + 1 < limit}
    if head_broken and limit == n:
        breaks.add(n - 1)  # the last entry's outgoing link is the head hash storage claims

    def first_run(lo: int, hi: int) -> int | None:
        """The last link of the first run of consecutive broken links starting in lo .. hi."""
        start = next((j for j in sorted(breaks) if lo <= j <= hi), None)
        if start is None:
            return None
        while start + 1 in breaks:
            start += 1
        return start

    for head in bad:
        if head.trusted:
            findings.other(
                f"the log does not extend the trusted checkpoint of size {head.size}: the"
                " history was rewritten (fork)"
            )
            break
    if any(head.size == 0 for head in bad):
        findings.other("a checkpoint of size 0 does not carry the empty tree's root")
        bad = [head for head in bad if head.size > 0]

    named: tuple[int, str] | None = None
    if bad:
        b = min(head.size for head in bad)
        worst = min((h for h in bad if h.size == b), key=lambda h: h.trusted)
        culprit = worst.name()
        # Without a key the log's own checkpoints are unproven claims: they may not vouch
        # for a prefix that a trusted checkpoint contradicts.
        credible = [h for h in good if have_key or h.trusted or not worst.trusted]
        a = max((head.size for head in credible if head.size < b), default=0)
        run_end = first_run(a - 1, b - 1)
        if run_end is not None:
            altered = min(max(run_end, a), b - 1)
            named = (
                altered,
                f"entry {altered} was altered: its hash no longer matches the {culprit}",
            )
        elif limit < b:
            pass  # the mismatch is explained by the misplaced entry already reported
        elif b - a == 1:
            named = (a, f"entry {a} was altered: its hash no longer matches the {culprit}")
        else:
            # The chain is intact across the window: it was recomputed after the edit, unless
            # the window ends the log and no head hash anchors its last link.
            hidden = " and the chain after it recomputed" if b < n or head_known else ""
            named = (
                a,
                f"one of entries {a} to {b - 1} was altered{hidden}: they no longer match the"
                f" {culprit}",
            )
        later_good = [head.size for head in good if head.size > b]
        if later_good and have_key:
            findings.other(
                f"the {culprit} contradicts the checkpoint of size {max(later_good)}, which the"
                " log matches: the signing key signed two histories (fork)"
            )
    else:
        a = max((head.size for head in good), default=0)
        if head_broken and a == n:
            # The last entry is itself covered by a matching checkpoint, so it is authentic:
            # the head record points past it.
            named = (
                n,
                f"the stored head hash is not the hash of entry {n - 1}, which a signed"
                " checkpoint covers: later entries are missing (truncation) or the head record"
                " was altered",
            )
        else:
            run_end = first_run(a - 1, n - 1)
            if run_end is not None:
                altered = min(max(run_end, a), n - 1)
                where = (
                    "its hash no longer matches the stored head hash"
                    if altered == n - 1 and n - 2 not in breaks
                    else "the hash chain breaks at it"
                )
                named = (altered, f"entry {altered} was altered: {where} (no checkpoint covers it)")
    if named is not None and (first_position_problem is None or named[0] < first_position_problem):
        findings.entry(*named)

    # A break inside a matching checkpoint means the signer signed a broken chain.
    inside = [j for j in sorted(breaks) if j + 1 < a]
    if inside:
        j = inside[0]
        findings.entry(
            j + 1,
            f"entry {j + 1}'s prev is not the hash of entry {j}, yet a checkpoint covers both",
        )


def _report_unsigned_tail(
    unsigned: list[int], evidence: list[_Head], scan: _Scan, findings: _Findings
) -> None:
    """Entries that only checkpoints with a bad signature vouch for are not vouched for."""
    if not unsigned:
        return
    covered = max(
        (
            h.size
            for h in evidence
            if h.size <= scan.size and scan.roots[h.size] == h.checkpoint.root
        ),
        default=0,
    )
    end = min(max(unsigned), scan.size)
    if end > covered:
        # Listed after the signature problem that explains it, but it does name the first
        # entry nothing trustworthy vouches for.
        findings.other(
            f"entries {covered} to {end - 1} are not covered by any checkpoint signed by the"
            " trusted key",
            seq=covered,
        )
