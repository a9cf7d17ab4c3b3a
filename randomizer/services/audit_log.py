"""Appending to the audit trail (URS §7, R-AUD), in the caller's transaction.

Locking the head row (:func:`randomizer.locks.lock_audit_head`, always the last lock a
transaction takes) serialises appends: the chain never forks.

Every transaction that appends entries also stores, just before it commits, a signed
checkpoint of the new size (registered with :func:`randomizer.db.before_commit`), so no
committed entry is ever outside a checkpoint. Storing it is what moves the head row (a
trigger, migration 0013): an append writes its entry and tree nodes, and the transaction's
head is kept in the session until its checkpoint records it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    Insert,
    Row,
    Select,
    and_,
    bindparam,
    event,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, SessionTransaction

from audit.checkpoint import (
    Checkpoint,
    VerifierKey,
    cosign_checkpoint,
    sign_checkpoint,
    verifier_key_from_private,
    verify_checkpoint,
)
from audit.entry import canonical_bytes, entry_hash, make_entry
from audit.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_coords,
    verify_consistency,
)
from keys.signing import signing_key_fingerprint
from randomizer.db import before_commit
from randomizer.locks import HEAD_ID, lock_audit_head
from randomizer.models import AuditCheckpoint, AuditEntry, AuditHead, AuditNode
from randomizer.roles import Actor

_CHECKPOINTED = "sealroom.audit.checkpointed"
_HEAD_CHECKED = "sealroom.audit.head_checked"
#: The head as this transaction's appends left it (a :class:`_Head`), under its lock.
_HEAD = "sealroom.audit.head"

# The append path's statements, built once: Core, not the ORM's unit of work, because an
# append runs under the audit head lock, which every appending transaction waits for, and
# building and flushing ORM objects there cost more than the statements themselves.
_ENTRIES = AuditEntry.__table__
_NODES = AuditNode.__table__
_CHECKPOINTS = AuditCheckpoint.__table__
_HEADS = AuditHead.__table__
_INSERT_ENTRY = insert(_ENTRIES)
_INSERT_CHECKPOINT = insert(_CHECKPOINTS)
_READ_HEAD = select(
    _HEADS.c.size, _HEADS.c.last_hash, _HEADS.c.frontier, _HEADS.c.signing_key
).where(_HEADS.c.id == HEAD_ID)
#: A signing-key hand-over names the incoming key as the one in force (R-KEY-1).
_SET_SIGNING_KEY = (
    update(_HEADS).where(_HEADS.c.id == HEAD_ID).values(signing_key=bindparam("signing_key"))
)
_READ_SIGNING_KEY = select(_HEADS.c.signing_key).where(_HEADS.c.id == HEAD_ID)
_LATEST_CHECKPOINT = select(_CHECKPOINTS.c.note).order_by(_CHECKPOINTS.c.size.desc()).limit(1)
_CHECKPOINT_AT = select(_CHECKPOINTS.c.note).where(_CHECKPOINTS.c.size == bindparam("size"))


#: The head and the signed checkpoint as each open savepoint found them (by savepoint).
_AT_SAVEPOINT = "sealroom.audit.at_savepoint"


@dataclass(frozen=True)
class _Head:
    """The audit head as this transaction has appended it (it holds the head's lock). The
    head row itself moves when the transaction stores its checkpoint."""

    size: int
    last_hash: str
    frontier: bytes


@event.listens_for(Session, "after_transaction_create")
def _note_head_at_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        state = (session.info.get(_HEAD), session.info.get(_CHECKPOINTED))
        session.info.setdefault(_AT_SAVEPOINT, {})[transaction] = state


@event.listens_for(Session, "after_soft_rollback")
def _undo_head(session: Session, previous: SessionTransaction) -> None:
    """A savepoint's rollback undoes its appends (and any checkpoint it stored): the head is
    again what the savepoint found, which only the session knows (the head row moves at
    the checkpoint). Any other rollback ends the transaction: the next append reads it."""
    found = session.info.get(_AT_SAVEPOINT, {}).pop(previous, None)
    if not previous.nested or found is None:
        session.info.pop(_HEAD, None)
        session.info.pop(_CHECKPOINTED, None)
        return
    for key, value in zip((_HEAD, _CHECKPOINTED), found, strict=True):
        if value is None:
            session.info.pop(key, None)
        else:
            session.info[key] = value


@event.listens_for(Session, "after_transaction_end")
def _forget_committed_head(session: Session, transaction: SessionTransaction) -> None:
    """The head lock ends with the transaction: the next transaction locks and reads it."""
    if transaction.parent is None:
        session.info.pop(_HEAD, None)
        session.info.pop(_HEAD_CHECKED, None)
        # (A savepoint's own entry is dropped at its rollback, which SQLAlchemy reports
        # after its end, or here with the transaction's.)
        session.info.pop(_AT_SAVEPOINT, None)


class AuditIntegrityError(RuntimeError):
    """The stored audit tree no longer matches what was signed: nothing more is signed."""


def _compact_range(size: int, frontier: bytes) -> CompactRange:
    """The compact range the head caches (its frontier's packed hashes)."""
    try:
        return CompactRange.from_bytes(size, frontier)
    except ValueError as exc:
        raise AuditIntegrityError(f"the stored audit head is malformed ({exc}): {_RUN}") from None


@dataclass(frozen=True)
class AppendedEntry:
    """An entry as appended: its seq and canonical bytes."""

    seq: int
    canonical: bytes
    #: Its RFC 9162 inclusion proof in the tree of ``seq + 1`` entries: the frontier of the
    #: tree before it, smallest subtree first (the last leaf's siblings are all left ones).
    proof: tuple[bytes, ...] = ()


class SessionNodeStore:
    """The Merkle tree's stored subtree hashes, read through a session (one query a batch)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_nodes(self, coords: Iterable[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        """Fetch the hashes of the given (level, index) perfect subtrees."""
        by_level: dict[int, list[int]] = {}
        for level, index in dict.fromkeys(coords):
            by_level.setdefault(level, []).append(index)
        if not by_level:
            return {}
        shape = tuple(len(indexes) for indexes in by_level.values())
        parameters: dict[str, int] = {}
        for i, (level, indexes) in enumerate(by_level.items()):
            parameters[f"l{i}"] = level
            parameters.update({f"i{i}_{j}": index for j, index in enumerate(indexes)})
        rows = self.session.connection().execute(_nodes_query(shape), parameters)
        return {(row[0], row[1]): bytes(row[2]) for row in rows}


@functools.lru_cache(maxsize=512)
def _nodes_query(shape: tuple[int, ...]) -> Select[Any]:
    """The query of ``shape[i]`` node indexes at each of ``len(shape)`` levels, built once
    (with bound parameters ``l<i>`` and ``i<i>_<j>``): building it cost more than running it.

    One index search per level: SQLite answers a row-value IN list by scanning the whole
    table, which made every append linear in the log's size.
    """
    return select(_NODES.c.level, _NODES.c.node_index, _NODES.c.hash).where(
        or_(
            *(
                and_(
                    _NODES.c.level == bindparam(f"l{i}"),
                    _NODES.c.node_index.in_([bindparam(f"i{i}_{j}") for j in range(count)]),
                )
                for i, count in enumerate(shape)
            )
        )
    )


@functools.lru_cache(maxsize=128)
def _head_check_columns(nodes: int) -> tuple[Any, Any]:
    """What the check of a head whose frontier has ``nodes`` subtrees reads: how many of the
    stored nodes match them (bound ``l<i>``, ``i<i>``, ``h<i>``; one index search each, one
    level each), and the newest signed checkpoint note (None for none). Two scalar
    subqueries, built once: :meth:`AuditLog.append` has the entry's ``INSERT`` return them,
    any other first use of the head in a transaction selects them."""
    matched = (
        select(func.count())
        .select_from(_NODES)
        .where(
            or_(
                false(),
                *(
                    and_(
                        _NODES.c.level == bindparam(f"l{i}"),
                        _NODES.c.node_index == bindparam(f"i{i}"),
                        _NODES.c.hash == bindparam(f"h{i}"),
                    )
                    for i in range(nodes)
                ),
            )
        )
        .scalar_subquery()
        .label("matched")
    )
    return matched, _LATEST_CHECKPOINT.scalar_subquery().label("latest")


@functools.lru_cache(maxsize=128)
def _head_check_query(nodes: int) -> Select[Any]:
    return select(*_head_check_columns(nodes))


@functools.lru_cache(maxsize=128)
def _insert_entry_checking_head(nodes: int) -> Insert:
    return _INSERT_ENTRY.returning(*_head_check_columns(nodes))


def _head_check_parameters(tree: CompactRange) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for i, ((level, index), digest) in enumerate(
        zip(root_coords(tree.size), tree.frontier, strict=True)
    ):
        parameters.update({f"l{i}": level, f"i{i}": index, f"h{i}": digest})
    return parameters


class AuditLog:
    """The trial's audit log: appends entries and signs checkpoints.

    ``clock`` gives aware UTC datetimes; ``signing_key`` signs checkpoints under ``origin``
    until the audit head names another key in force (a hand-over, R-KEY-1): ``load_key``
    then gives that key from its fingerprint.
    """

    def __init__(
        self,
        origin: str,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], datetime],
        load_key: Callable[[str], Ed25519PrivateKey] | None = None,
    ) -> None:
        self.origin = origin
        self._signing_key = signing_key
        self.clock = clock
        self.verifier_key = verifier_key_from_private(origin, signing_key)
        self._fingerprint = signing_key_fingerprint(signing_key)
        self._load_key = load_key
        # The latest checkpoint note this process signed or verified, and what it says: a
        # note whose signature was checked once need not be checked at every append.
        self._trusted: tuple[str, Checkpoint] | None = None

    def __repr__(self) -> str:
        return f"AuditLog(origin={self.origin!r})"

    def append(
        self,
        session: Session,
        actor: Actor,
        action: str,
        subject: str | None,
        data: Mapping[str, Any],
        *,
        site: str | None = None,
    ) -> AppendedEntry:
        """Append one entry in ``session``'s transaction and return it.

        ``site`` records which site the entry concerns, so that the site's own staff may
        later ask for its inclusion proof.
        """
        head = session.info.get(_HEAD)
        if head is None:
            row = lock_audit_head(session)
            # Once a transaction, under the lock: another process may have rotated the key.
            self._follow_key_in_force(row.signing_key)
            head = _Head(row.size, row.last_hash, bytes(row.frontier))
        tree = _compact_range(head.size, head.frontier)
        proof = tuple(reversed(tree.frontier))
        seq = head.size
        # The time is read after the head lock, so times never go backwards along seq.
        entry = make_entry(
            seq=seq,
            time=self.clock(),
            actor=actor.name,
            role=actor.role,
            action=action,
            subject=subject,
            data=data,
            prev=head.last_hash,
        )
        canonical = canonical_bytes(entry)
        connection = session.connection()
        # The head's check (once a transaction) is of the tree before this append.
        unchecked = None if session.info.get(_HEAD_CHECKED) else tree.copy()
        values = {
            "seq": seq,
            "canonical": canonical.decode("utf-8"),
            "action": action,
            "subject": subject,
            "site_id": site,
            # The nodes the leaf completes, level 0 up (index seq >> level): the insert's
            # trigger files them in audit_node (migration 0014), no statement of their own.
            "nodes": b"".join(digest for _, _, digest in tree.append(leaf_hash(canonical))),
        }
        if unchecked is None:
            connection.execute(_INSERT_ENTRY, values)
        else:
            # The check is read by the insert itself, under the head's lock: one statement
            # fewer. If it fails, the insert goes with the transaction, which the error
            # rolls back.
            checked = connection.execute(
                _insert_entry_checking_head(len(unchecked.frontier)),
                values | _head_check_parameters(unchecked),
            ).one()
            self._pass_head_check(session, unchecked, checked)
        # The head row is written once, by the checkpoint (its trigger), not at every append.
        session.info[_HEAD] = _Head(tree.size, entry_hash(canonical), tree.to_bytes())
        before_commit(session, "audit.checkpoint", self.checkpoint)
        return AppendedEntry(seq=seq, canonical=canonical, proof=proof)

    def checkpoint(self, session: Session) -> str:
        """The signed checkpoint of the log's current size, signed and stored if new.

        Runs before every commit that appended entries; a service that must hand out the
        checkpoint (a receipt) calls it itself, and the commit then finds it stored.
        """
        head = session.info.get(_HEAD)
        appended = head is not None
        if head is None:  # nothing appended in this transaction (or a rollback undid it)
            size, last_hash, frontier, in_force = session.connection().execute(_READ_HEAD).one()
            head = _Head(size, last_hash, bytes(frontier))
            self._follow_key_in_force(in_force)
        # Keyed by the size and the frontier: work a savepoint undid may have signed a
        # checkpoint of this very size over other entries (its row is gone with it).
        state = (head.size, head.frontier)
        stored = session.info.get(_CHECKPOINTED)
        if stored is not None and stored[0] == state:
            return stored[1]
        # After this transaction's own appends no stored checkpoint can have its size: every
        # committed one is of a smaller log, and one signed here is the one cached above.
        existing = None if appended else self.checkpoint_at(session, head.size)
        if existing is not None:
            session.info[_CHECKPOINTED] = (state, existing)
            return existing
        tree = self._tree(session, head.size, head.frontier)
        checkpoint = Checkpoint(self.origin, head.size, tree.root())
        note = sign_checkpoint(checkpoint, self._signing_key, self.origin, self.verifier_key)
        self._store_checkpoint(session, head, note)
        session.info[_CHECKPOINTED] = (state, note)
        self._trusted = (note, checkpoint)
        return note

    def _store_checkpoint(self, session: Session, head: _Head, note: str) -> None:
        """Store the signed ``note`` of ``head`` with the head it records: the insert moves
        the head row there (migration 0013's trigger)."""
        session.connection().execute(
            _INSERT_CHECKPOINT,
            {
                "size": head.size,
                "note": note,
                "created_at": self.clock(),
                "last_hash": head.last_hash,
                "frontier": head.frontier,
            },
        )

    def _follow_key_in_force(self, wanted: str | None) -> None:
        """Sign with the key the head names (``wanted``, its fingerprint): one comparison a
        transaction; the key is loaded only when another process rotated it (R-KEY-1)."""
        if wanted is None or wanted == self._fingerprint:
            return
        if self._load_key is None:
            raise AuditIntegrityError(
                f"the audit log's signing key is now {wanted}, and this process cannot load"
                " it: restart it"
            )
        key = self._load_key(wanted)
        if signing_key_fingerprint(key) != wanted:
            raise AuditIntegrityError(f"the signing key loaded for {wanted} is another key")
        self._signing_key = key
        self.verifier_key = verifier_key_from_private(self.origin, key)
        self._fingerprint = wanted
        self._trusted = None

    def hand_over(self, session: Session, incoming: Ed25519PrivateKey) -> str:
        """Sign this transaction's checkpoint with the key in force *and* ``incoming``, and
        make ``incoming`` the key in force from the next checkpoint on (R-KEY-1).

        Call it right after appending the ``key.rotated`` entry, in the same transaction:
        the hand-over is the checkpoint of exactly that tree.
        """
        head = session.info.get(_HEAD)
        if head is None:
            raise AuditIntegrityError("a hand-over follows the key.rotated entry it signs")
        state = (head.size, head.frontier)
        if session.info.get(_CHECKPOINTED, (None,))[0] == state:
            raise AuditIntegrityError(f"a checkpoint of size {head.size} is already signed")
        tree = self._tree(session, head.size, head.frontier)
        checkpoint = Checkpoint(self.origin, head.size, tree.root())
        note = cosign_checkpoint(
            checkpoint, [(self._signing_key, self.origin), (incoming, self.origin)]
        )
        self._store_checkpoint(session, head, note)
        session.connection().execute(
            _SET_SIGNING_KEY, {"signing_key": signing_key_fingerprint(incoming)}
        )
        session.info[_CHECKPOINTED] = (state, note)
        return note

    def _tree(self, session: Session, size: int, frontier: bytes) -> CompactRange:
        """The compact range the head caches, checked once a transaction (under its lock).

        What this transaction appends is computed from it, so a tree that extends the last
        signed checkpoint at the first append still extends it at the commit.
        """
        tree = _compact_range(size, frontier)
        if not session.info.get(_HEAD_CHECKED):
            checked = (
                session.connection()
                .execute(_head_check_query(len(tree.frontier)), _head_check_parameters(tree))
                .one()
            )
            self._pass_head_check(session, tree, checked)
        return tree

    def _pass_head_check(self, session: Session, tree: CompactRange, checked: Row[Any]) -> None:
        """The head's check on what :func:`_head_check_columns` read (``checked``); passed,
        it holds for the rest of the transaction."""
        self._check_extends_previous(session, tree, checked.matched, checked.latest)
        session.info[_HEAD_CHECKED] = True

    def _check_extends_previous(
        self, session: Session, tree: CompactRange, matched: int, latest: str | None
    ) -> None:
        """Refuse to sign a tree that does not extend the last signed checkpoint.

        By construction it always does; this check is what stops the service from signing
        over a head or tree nodes someone rewrote behind the triggers' back. It costs no
        node scan: the head's compact range gives the root, and the nodes proofs are served
        from must hold that same frontier. ``matched`` (how many stored nodes hold the
        frontier's hashes) and ``latest`` (the newest signed note) are what
        :func:`_head_check_columns` read.
        """
        if matched != len(tree.frontier):
            raise AuditIntegrityError(
                f"the stored audit tree of size {tree.size} does not match the audit head:"
                f" refusing to sign; {_RUN}"
            )
        previous = self._signed(latest)
        if previous is None or previous.size == 0:
            return
        if previous.size == tree.size:
            extends = previous.root == tree.root()
        else:
            extends = previous.size < tree.size and verify_consistency(
                previous.size,
                tree.size,
                previous.root,
                tree.root(),
                consistency_proof(previous.size, tree.size, SessionNodeStore(session)),
            )
        if not extends:
            raise AuditIntegrityError(
                f"the audit tree of size {tree.size} does not extend the signed checkpoint of"
                f" size {previous.size}: refusing to sign; {_RUN}"
            )

    def _signed(self, note: str | None) -> Checkpoint | None:
        """The checkpoint of a stored ``note`` (the newest), its signature checked (once per
        process and note)."""
        if note is None:
            return None
        trusted = self._trusted
        if trusted is not None and trusted[0] == note:
            return trusted[1]
        checkpoint = verify_checkpoint(note, self.verifier_key)
        self._trusted = (note, checkpoint)
        return checkpoint

    def receipt(self, session: Session, entry: AppendedEntry) -> dict[str, Any]:
        """R-RCPT: the entry, the signed checkpoint that first includes it, its proof.

        Signs (and stores) the checkpoint now, inside the transaction, so the receipt holds
        the very checkpoint the commit stores.
        """
        checkpoint = self.checkpoint(session)
        return {
            "seq": entry.seq,
            "entry": entry.canonical.decode("utf-8"),
            "checkpoint": checkpoint,
            # Taken from the compact range at the append: no tree node is read.
            "inclusion_proof": _b64(entry.proof),
        }

    # Reading ----------------------------------------------------------------------------

    def current_verifier_key(self, session: Session) -> VerifierKey:
        """The verifier key of the signing key in force, as the committed head names it.

        A process that has not appended since another rotated the key learns of it here.
        """
        wanted = session.execute(_READ_SIGNING_KEY).scalar_one_or_none()
        if wanted is not None and wanted != self._fingerprint and self._load_key is not None:
            return verifier_key_from_private(self.origin, self._load_key(wanted))
        return self.verifier_key

    @staticmethod
    def size(session: Session) -> int:
        """The number of entries in the log as this session sees it: committed, and its own
        transaction's appends (which the head row records only at their checkpoint)."""
        head = session.info.get(_HEAD)
        if head is not None:
            return head.size
        return session.connection().execute(_READ_HEAD).one().size

    @staticmethod
    def latest_checkpoint(session: Session) -> str | None:
        """The newest signed checkpoint note, or None for an empty log."""
        return session.connection().execute(_LATEST_CHECKPOINT).scalar_one_or_none()

    @staticmethod
    def checkpoint_at(session: Session, size: int) -> str | None:
        """The signed checkpoint of exactly ``size`` entries, if one was issued."""
        return session.connection().execute(_CHECKPOINT_AT, {"size": size}).scalar_one_or_none()

    @staticmethod
    def inclusion_proof(session: Session, index: int, size: int) -> list[str]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``, base64."""
        return _b64(inclusion_proof(index, size, SessionNodeStore(session)))

    @staticmethod
    def consistency_proof(session: Session, first: int, second: int) -> list[str]:
        """RFC 9162 consistency proof between sizes ``first`` and ``second``, base64."""
        return _b64(consistency_proof(first, second, SessionNodeStore(session)))


_RUN = "run `sealroom audit verify`"


def _b64(hashes: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]
