"""SQLAlchemy 2 tables.

No arm is ever stored in clear: slots, kits and participants carry ``sealed_arm``
(``keys.SealedArm.to_text()``), AES-256-GCM bound to the row it belongs to. Kits and
participants have random row ids so that insertion order and ids say nothing about arms.
The schema itself is created by the Alembic migrations in ``randomizer/migrations``; a test
checks that these models and the migrations agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from randomizer.domain.kits import KIT_STATUSES
from randomizer.domain.participants import PARTICIPANT_STATUSES, SITE_OPEN, SITE_STATUSES

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OUTBOX_PENDING = "pending"
OUTBOX_DELIVERED = "delivered"
OUTBOX_STATUSES = (OUTBOX_PENDING, OUTBOX_DELIVERED)

#: Length of ``keys.SealedArm.to_text()``, with room for longer key ids.
SEALED_ARM_LENGTH = 160


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps the zone; SQLite stores text and gives a naive datetime back. Refusing
    naive datetimes on the way in and marking them UTC on the way out gives every reader an
    aware UTC time, whatever the engine.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: store aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    """A CHECK constraint ``ck_<table>_<column>`` that the column holds one of ``values``.

    Tables that existed before these constraints enforce them on SQLite by triggers of the
    same name (migration 0003): SQLite cannot add a constraint to an existing table.
    """
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


def random_id() -> str:
    """A random row id: rows say nothing by their id or insertion order."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Trial(Base):
    """The one trial this deployment serves, with the definition it was initialised from."""

    __tablename__ = "trial"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition_toml: Mapped[str] = mapped_column(Text)
    definition_sha256: Mapped[str] = mapped_column(String(64))
    #: SHA-256 commitment to the list seed; the seed itself is never stored.
    seed_commitment: Mapped[str] = mapped_column(String(64))
    data_key_id: Mapped[str] = mapped_column(ForeignKey("data_key.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DataKey(Base):
    """A per-trial data key, wrapped by a master key that never enters the database."""

    __tablename__ = "data_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    master_key_id: Mapped[str] = mapped_column(String(32))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Site(Base):
    """A trial site. Its row is also the lock that serialises allocation of its kits."""

    __tablename__ = "site"
    __table_args__ = (one_of("status", SITE_STATUSES),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    #: Levels of the site-derived stratification factors, e.g. {"region": "europe"}.
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: ``open``, or ``closed``: a closed site screens and randomises no one.
    status: Mapped[str] = mapped_column(String(16), default=SITE_OPEN, server_default=SITE_OPEN)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: How many changes the site's kits have had: a trigger bumps it with every INSERT or
    #: UPDATE of one of them (migration 0008), so a server process that read the site's
    #: kits at one version reads only those changed since (``Kit.site_version``).
    kit_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Stratum(Base):
    """A stratum and its cursor: the row lock on it serialises randomisation (R-LIST-2)."""

    __tablename__ = "stratum"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    #: Position (from 1) of the next slot to give.
    next_position: Mapped[int] = mapped_column(Integer)
    #: Slots in the stratum's list (whole blocks, at least slots_per_stratum).
    size: Mapped[int] = mapped_column(Integer)


class Slot(Base):
    """One position of a stratum's randomisation list, its arm sealed (R-LIST-3)."""

    __tablename__ = "slot"
    __table_args__ = (UniqueConstraint("stratum_number", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stratum_number: Mapped[int] = mapped_column(ForeignKey("stratum.number"))
    position: Mapped[int] = mapped_column(Integer)
    randomization_number: Mapped[str] = mapped_column(String(16), unique=True)
    sealed_arm: Mapped[str] = mapped_column(String(SEALED_ARM_LENGTH))
    participant_id: Mapped[str | None] = mapped_column(
        ForeignKey("participant.id"), unique=True, default=None
    )
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class Participant(Base):
    """A screened (and later randomised) participant."""

    __tablename__ = "participant"
    __table_args__ = (one_of("status", PARTICIPANT_STATUSES),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=random_id)
    screening_number: Mapped[str] = mapped_column(String(32), unique=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("site.id"), index=True)
    status: Mapped[str] = mapped_column(String(24))
    screened_on: Mapped[date] = mapped_column(Date)
    #: Levels of the screening-sourced factors given at screening, e.g. {"prior_ig": "no"}.
    screening_strata: Mapped[dict[str, Any]] = mapped_column(JSON)
    stratum_number: Mapped[int | None] = mapped_column(ForeignKey("stratum.number"), default=None)
    randomization_number: Mapped[str | None] = mapped_column(String(16), unique=True, default=None)
    randomized_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: Weight at randomisation, as the exact decimal text that was given.
    weight_kg: Mapped[str | None] = mapped_column(String(16), default=None)
    sealed_arm: Mapped[str | None] = mapped_column(String(SEALED_ARM_LENGTH), default=None)
    unblinded: Mapped[bool] = mapped_column(Boolean, default=False)


class Kit(Base):
    """A kit of study drug. Its number, lot and expiry are the same whatever its arm."""

    __tablename__ = "kit"
    __table_args__ = (
        Index("ix_kit_site_status", "site_id", "status"),
        Index("ix_kit_site_version", "site_id", "site_version"),
        one_of("status", KIT_STATUSES),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=random_id)
    kit_number: Mapped[str] = mapped_column(String(16), unique=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("site.id"))
    status: Mapped[str] = mapped_column(String(16))
    #: Blinded lot number: shared by the lots of every arm packed together.
    lot: Mapped[str] = mapped_column(String(32))
    #: Blinded expiry: the earliest expiry of the lots packed together.
    expires_on: Mapped[date] = mapped_column(Date)
    sealed_arm: Mapped[str] = mapped_column(String(SEALED_ARM_LENGTH))
    participant_id: Mapped[str | None] = mapped_column(
        ForeignKey("participant.id"), index=True, default=None
    )
    visit: Mapped[str | None] = mapped_column(String(32), default=None)
    allocated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: The kit (damaged or lost while allocated) that this one replaced (R-KIT-2).
    replaces_kit_id: Mapped[str | None] = mapped_column(String(36), default=None)
    #: The site's ``kit_version`` at this kit's latest change; set by the trigger that bumps
    #: it (migration 0008), never by the code.
    site_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The shipment that took the kit from the depot to its site (None: stocked directly).
    shipment_id: Mapped[int | None] = mapped_column(Integer, index=True, default=None)


SHIPMENT_REQUESTED = "requested"
SHIPMENT_IN_TRANSIT = "in_transit"
SHIPMENT_RECEIVED = "received"
#: A resupply request that needed nothing any more when the depot came to dispatch it.
SHIPMENT_CANCELLED = "cancelled"
SHIPMENT_STATUSES = (SHIPMENT_REQUESTED, SHIPMENT_IN_TRANSIT, SHIPMENT_RECEIVED, SHIPMENT_CANCELLED)
SHIPMENT_OPEN = (SHIPMENT_REQUESTED, SHIPMENT_IN_TRANSIT)


class Shipment(Base):
    """Kits from the depot to one site (R-SHIP): requested, in transit, then received.

    A ``requested`` shipment is a resupply the service asked for after an allocation; its
    kits are chosen when the depot dispatches it. Which kits travel is on the kits
    (``Kit.shipment_id``); nothing here says anything by arm.
    """

    __tablename__ = "shipment"
    __table_args__ = (
        one_of("status", SHIPMENT_STATUSES),
        Index("ix_shipment_site_status", "site_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("site.id"))
    status: Mapped[str] = mapped_column(String(16))
    #: ``manual`` (an admin's order) or ``resupply`` (the service's, from the levels).
    origin: Mapped[str] = mapped_column(String(16))
    #: The lot shipped whole, if the shipment was ordered by lot.
    lot: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(64))
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    received_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    received_by: Mapped[str | None] = mapped_column(String(64), default=None)


class User(Base):
    """A person with exactly one role and, for site roles, one site (R-ROLE)."""

    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(24))
    site_id: Mapped[str | None] = mapped_column(ForeignKey("site.id"), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Where notifications reach the user (an investigator hears of unblindings at its site).
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deactivated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: Argon2id hash of the web pages' password (None: the user cannot sign in to them).
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    password_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: The web pages' language for this user (None: English).
    language: Mapped[str | None] = mapped_column(String(8), default=None)


class WebSession(Base):
    """A signed-in browser (issue 13): the cookie holds a random id, the row its SHA-256.

    Server-side, so that deactivating a user or signing out ends a session at once in every
    worker; refused from ``expires_at`` (absolute) or after the idle limit from
    ``last_seen_at``.
    """

    __tablename__ = "web_session"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256 (tokens are 256-bit random strings)."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Refused from then on (None, which only a failed upgrade could leave, is refused too).
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class AuthFailure(Base):
    """Failed authentications of one client in its current window (the throttle of
    :mod:`randomizer.services.throttling`): one row per client, reset when its window ends.

    Counted in the database, not in a worker's memory, so that every worker and server
    process sees the same count.
    """

    __tablename__ = "auth_failure"

    #: The client's key: its IPv4 address, or its IPv6 /64 network.
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    #: When the window began (its first failure); it ends ``SEALROOM_AUTH_WINDOW`` later.
    window_started_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class IdempotencyRecord(Base):
    """The first response to a state-changing POST sent with an ``Idempotency-Key``."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("user_id", "endpoint", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    endpoint: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Unblinding(Base):
    """One emergency unblinding (URS §6): who learned a participant's arm, when and why.

    The arm itself is not here: it is the participant's (sealed), and the audit entry of the
    unblinding holds it sealed too. Append-only in practice: nothing updates a row.
    """

    __tablename__ = "unblinding"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=random_id)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participant.id"), index=True)
    user_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(String(32))
    event_reference: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    unblinded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: The seq of its participant.unblinded audit entry.
    audit_seq: Mapped[int] = mapped_column(Integer, unique=True)


class StratumCorrection(Base):
    """A correction of a participant's screening factors, beside the original (R-FIX).

    The stratum used at randomisation (``participant.stratum_number``) never changes; this
    records what it should have been, who said so, when and why.
    """

    __tablename__ = "stratum_correction"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=random_id)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participant.id"), index=True)
    strata: Mapped[dict[str, Any]] = mapped_column(JSON)
    stratum_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    user_name: Mapped[str] = mapped_column(String(64))
    corrected_at: Mapped[datetime] = mapped_column(UtcDateTime())


class OutboxMessage(Base):
    """A message to deliver once the transaction that wrote it has committed.

    Written in the same transaction as the change it announces, so a committed change is
    never without its message and a rolled-back one never has one; delivered afterwards,
    retried until it is (``attempts``, ``last_error``).
    """

    __tablename__ = "outbox_message"
    __table_args__ = (
        one_of("status", OUTBOX_STATUSES),
        Index("ix_outbox_message_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: What the message is about, e.g. ``participant.unblinded``.
    topic: Mapped[str] = mapped_column(String(64))
    #: Whom or what it concerns (a screening number, a stratum), for the admin's list.
    about: Mapped[str | None] = mapped_column(String(64), default=None)
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=OUTBOX_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: Not tried again before this time (back-off after a failed attempt).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    #: A delivery round is sending it until then (a lease: no lock is held while sending).
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class AuditHead(Base):
    """The tip of the audit log (one row). Locking it serialises appends: no fork."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    #: The tree's compact range at ``size``: the frontier's perfect-subtree hashes,
    #: largest first, concatenated (32 bytes per 1 bit of ``size``). Appends and tree heads
    #: need no node reads; a cache checked against the last signed checkpoint, never evidence.
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    #: The fingerprint (``sk-<16 hex>``) of the checkpoint-signing key in force, set by a
    #: signing-key hand-over (migration 0011); None: never rotated, ``ed25519.key`` signs.
    signing_key: Mapped[str | None] = mapped_column(String(32), default=None)


class AuditEntry(Base):
    """One audit entry, stored as its canonical bytes (URS §7). Append-only (triggers)."""

    __tablename__ = "audit_entry"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    canonical: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(64), index=True)
    #: The site the entry concerns, if any: site staff may prove inclusion of these.
    site_id: Mapped[str | None] = mapped_column(String(16), default=None)
    #: The tree nodes its append completed, level 0 (its leaf hash) up, 32 bytes each; its
    #: insert files them in ``audit_node`` (a trigger, migration 0014). Null before that.
    nodes: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)


class AuditNode(Base):
    """Hash of a perfect subtree of the audit Merkle tree (RFC 9162): O(log n) proofs.

    Row (level, node_index) covers leaves [node_index * 2**level, (node_index + 1) * 2**level).
    Append-only, like the entries.
    """

    __tablename__ = "audit_node"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    node_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    """A signed checkpoint (C2SP signed note) of the log at one size. Append-only."""

    __tablename__ = "audit_checkpoint"

    size: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: The head it signs: the hash of its last entry and the tree's compact range at
    #: ``size`` (as ``AuditHead``). Storing the row moves the head there (a trigger,
    #: migration 0013); null on checkpoints stored before that migration.
    last_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    frontier: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
