"""What every service needs besides a session: the trial, its sealer, its audit log, a clock.

Built once at start-up from the database and the keys directory, then passed explicitly:
services never reach for request globals.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from keys import (
    Sealer,
    WrappedDataKey,
    load_signing_key,
    unwrap_data_key,
)
from keys.providers import MasterKeys, load_master_key_provider
from keys.signing import load_signing_key_by_fingerprint
from randomizer.domain import TrialDefinition, parse_trial
from randomizer.models import AuditHead, DataKey, Trial
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
    ring = load_master_key_provider(keys_dir, environ)
    definition = parse_trial(trial.definition_toml)
    in_force = session.execute(select(AuditHead.signing_key)).scalar_one_or_none()
    signing_key = (
        load_signing_key(keys_dir)
        if in_force is None
        else load_signing_key_by_fingerprint(keys_dir, in_force)
    )
    rows = session.scalars(select(DataKey).order_by(DataKey.created_at, DataKey.id)).all()
    wrapped = {row.id: WrappedDataKey(row.id, row.master_key_id, row.wrapped) for row in rows}
    active = wrapped.pop(trial.data_key_id)
    return build_context(
        definition,
        ring,
        active,
        signing_key,
        clock,
        older=list(wrapped.values()),
        fetch_key=_data_key_fetcher(session.get_bind(), ring, definition.id),
        load_key=functools.partial(load_signing_key_by_fingerprint, keys_dir),
    )


def _data_key_fetcher(
    bind: Engine | Connection, ring: MasterKeys, trial_id: str
) -> Callable[[str], bytes | None]:
    """What a sealer asks for a data key it does not hold: read from the database, unwrapped.

    ``sealroom keys rotate-data-key`` may run while the service serves: a serving process
    then meets seals under a data key that did not exist when it started. It reads that key
    on its own short connection (the key row is committed, whatever the caller's transaction
    sees), never from a request's session.
    """

    def fetch(key_id: str) -> bytes | None:
        with Session(bind) as reader:
            row = reader.get(DataKey, key_id)
            if row is None:
                return None
            return unwrap_data_key(
                ring, WrappedDataKey(row.id, row.master_key_id, row.wrapped), trial_id
            )

    return fetch


def build_context(
    definition: TrialDefinition,
    ring: MasterKeys,
    wrapped: WrappedDataKey,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime] = utc_now,
    older: Sequence[WrappedDataKey] = (),
    fetch_key: Callable[[str], bytes | None] | None = None,
    load_key: Callable[[str], Ed25519PrivateKey] | None = None,
) -> TrialContext:
    """Assemble a context from the data keys and the checkpoint-signing key.

    ``wrapped`` seals new arms; ``older`` data keys (from earlier rotations) still open
    what they sealed.
    """
    keys = {old.key_id: unwrap_data_key(ring, old, definition.id) for old in older}
    keys[wrapped.key_id] = unwrap_data_key(ring, wrapped, definition.id)
    sealer = Sealer(definition.id, keys, wrapped.key_id, fetch_key)
    audit = AuditLog(definition.audit_origin, signing_key, clock, load_key)
    return TrialContext(definition=definition, sealer=sealer, audit=audit, clock=clock)
