"""What every service needs besides a session: the trial, its sealer, its audit log, a clock.

Built once at start-up from the database and the keys directory, then passed explicitly:
services never reach for request globals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from keys import (
    MasterKeyRing,
    Sealer,
    WrappedDataKey,
    load_master_keys,
    load_signing_key,
    unwrap_data_key,
)
from randomizer.domain import TrialDefinition, parse_trial
from randomizer.models import DataKey, Trial
from randomizer.services.audit_log import AuditLog
from randomizer.services.kit_stock import KitStock


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Notices:
    """Who hears of what (from the settings), and how delivery is woken after a commit."""

    #: The sponsor's blinded safety contacts, told of every unblinding (R-UNB-2).
    safety_contacts: tuple[str, ...] = ()
    #: Starts a delivery round; None where no mail server is configured (messages wait).
    wake: Callable[[], None] | None = None


class NotInitialised(RuntimeError):
    """The database holds no trial yet: run ``sealroom init`` (or ``init-demo``) first."""


@dataclass(frozen=True)
class TrialContext:
    """The trial being served and the means to seal arms and append to its audit log."""

    definition: TrialDefinition
    sealer: Sealer
    audit: AuditLog
    clock: Callable[[], datetime] = utc_now
    #: Source of the random choices among kits. SystemRandom: not predictable from outputs.
    rng: random.Random = field(default_factory=random.SystemRandom)
    notices: Notices = field(default_factory=Notices)
    #: How long a new API token is valid (SEALROOM_TOKEN_DAYS).
    token_lifetime: timedelta = timedelta(days=365)
    #: This process's unsealed view of each site's available kits (services/kit_stock.py).
    kit_stock: KitStock = field(default_factory=KitStock, repr=False, compare=False)

    def today(self) -> date:
        """Today's calendar date in UTC (URS §8: dates are UTC calendar dates)."""
        return self.clock().astimezone(UTC).date()

    def __repr__(self) -> str:
        return f"TrialContext(trial={self.definition.id!r})"


def load_trial_context(
    session: Session,
    keys_dir: str | Path,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> TrialContext:
    """Build the context of the trial stored in the database, unwrapping its data key."""
    trial = session.scalars(select(Trial)).one_or_none()
    if trial is None:
        raise NotInitialised(
            "the database holds no trial: run `sealroom init` (or `sealroom init-demo`), or "
            "point SEALROOM_DATABASE_URL at an initialised database"
        )
    ring = load_master_keys(keys_dir, environ)
    definition = parse_trial(trial.definition_toml)
    data_key = session.get_one(DataKey, trial.data_key_id)
    return build_context(
        definition,
        ring,
        WrappedDataKey(data_key.id, data_key.master_key_id, data_key.wrapped),
        load_signing_key(keys_dir),
        clock,
    )


def build_context(
    definition: TrialDefinition,
    ring: MasterKeyRing,
    wrapped: WrappedDataKey,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime] = utc_now,
) -> TrialContext:
    """Assemble a context from an unwrapped data key and the checkpoint-signing key."""
    key = unwrap_data_key(ring, wrapped, definition.id)
    sealer = Sealer(definition.id, {wrapped.key_id: key}, wrapped.key_id)
    audit = AuditLog(definition.audit_origin, signing_key, clock)
    return TrialContext(definition=definition, sealer=sealer, audit=audit, clock=clock)
