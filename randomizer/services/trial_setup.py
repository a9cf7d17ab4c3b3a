"""Initialising a trial: schema, keys, data key, strata, sealed lists; sites (URS §3, §5, §9).

``sealroom init`` is :func:`prepare_database` then :func:`create_trial_with_lists` in one
transaction; ``sealroom init-demo`` adds the demo's sites, stock and users to that same
transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from keys import (
    WrappedDataKey,
    create_keys_dir,
    create_session_secret,
    create_signing_key,
    load_signing_key,
    new_data_key,
    session_secret_path,
    signing_key_path,
)
from keys.providers import FILE, MasterKeys, load_master_key_provider, provider_name
from randomizer.db import Database, refresh_statistics_after_commit
from randomizer.domain import (
    TrialDefinition,
    definition_commitment,
    generate_lists,
    randomization_number,
    seed_commitment,
)
from randomizer.domain.participants import SITE_CLOSED, SITE_ID, SITE_OPEN
from randomizer.errors import Conflict, NotFound, ValidationFailed
from randomizer.locks import lock_site
from randomizer.migrations import upgrade
from randomizer.models import DataKey, Site, Slot, Stratum, Trial
from randomizer.roles import MANAGE_SITES, Actor
from randomizer.services.context import TrialContext, build_context, utc_now

SLOT_SEAL_KIND = "slot"


@dataclass(frozen=True)
class TrialKeys:
    """The keys a new trial is created with: the master keys and the checkpoint signer."""

    ring: MasterKeys
    signing_key: Ed25519PrivateKey


def ensure_keys(keys_dir: Path) -> None:
    """Create the master and signing keys unless they exist (never overwrite a key).

    With the PKCS#11 provider the master key is the token's: none is created here.
    """
    if provider_name() == FILE and not (keys_dir / "master").exists():
        create_keys_dir(keys_dir)
    if not signing_key_path(keys_dir).exists():
        create_signing_key(keys_dir)
    if not session_secret_path(keys_dir).exists():
        create_session_secret(keys_dir)


def prepare_database(database: Database, keys_dir: Path) -> TrialKeys:
    """Migrate the schema to head, refuse a database that holds a trial, create the keys.

    The refusal comes before any key is created, so a refused run leaves no stray key set.
    """
    with database.schema_transaction() as connection:
        upgrade(connection)
        refuse_second_trial(connection)
    ensure_keys(keys_dir)
    return TrialKeys(load_master_key_provider(keys_dir), load_signing_key(keys_dir))


def create_trial_with_lists(
    session: Session,
    keys: TrialKeys,
    definition: TrialDefinition,
    definition_toml: str,
    seed: bytes,
    actor: Actor,
    clock: Callable[[], datetime] = utc_now,
) -> tuple[TrialContext, int]:
    """Create the trial, its data key and its sealed lists; return its context and slots."""
    _trial, wrapped = create_trial(session, definition, definition_toml, keys.ring)
    ctx = build_context(definition, keys.ring, wrapped, keys.signing_key, clock)
    return ctx, store_lists(session, ctx, actor, seed)


def refuse_second_trial(connection: Session | Connection) -> None:
    """Raise Conflict if the database already holds a trial: one deployment, one trial."""
    if connection.scalar(select(func.count()).select_from(Trial)):
        raise Conflict("This database already holds a trial; one deployment serves one trial.")


def create_trial(
    session: Session,
    definition: TrialDefinition,
    definition_toml: str,
    ring: MasterKeys,
) -> tuple[Trial, WrappedDataKey]:
    """Store the trial row and a fresh data key wrapped by the active master key.

    The seed commitment is filled in by :func:`store_lists`. Refuses a second trial: one
    deployment serves one trial.
    """
    refuse_second_trial(session)
    wrapped, _ = new_data_key(ring, definition.id)
    now = utc_now()
    session.add(
        DataKey(
            id=wrapped.key_id,
            master_key_id=wrapped.master_key_id,
            wrapped=wrapped.wrapped,
            created_at=now,
        )
    )
    trial = Trial(
        id=definition.id,
        definition_toml=definition_toml,
        definition_sha256=hashlib.sha256(definition_toml.encode("utf-8")).hexdigest(),
        seed_commitment="",
        data_key_id=wrapped.key_id,
        created_at=now,
    )
    session.add(trial)
    session.flush()
    return trial, wrapped


def store_lists(session: Session, ctx: TrialContext, actor: Actor, seed: bytes) -> int:
    """Generate every stratum's list from ``seed``, store its slots sealed, audit it.

    Only a commitment to the seed is stored (R-LIST-3). Returns the number of slots.
    """
    trial = session.get_one(Trial, ctx.definition.id)
    trial.seed_commitment = seed_commitment(seed)
    lists = generate_lists(seed, ctx.definition)
    total = 0
    for stratum in ctx.definition.strata():
        arms = lists[stratum.number]
        session.add(
            Stratum(number=stratum.number, key=stratum.key, next_position=1, size=len(arms))
        )
        session.flush()  # no ORM relationship orders the inserts: the stratum goes first
        for position, arm in enumerate(arms, start=1):
            number = randomization_number(stratum.number, position)
            session.add(
                Slot(
                    stratum_number=stratum.number,
                    position=position,
                    randomization_number=number,
                    sealed_arm=ctx.sealer.seal_arm(arm, SLOT_SEAL_KIND, number).to_text(),
                )
            )
        total += len(arms)
    session.flush()
    refresh_statistics_after_commit(session, "stratum", "slot")
    ctx.audit.append(
        session,
        actor,
        "trial.initialised",
        ctx.definition.id,
        {
            "trial": ctx.definition.id,
            "registry_id": ctx.definition.registry_id,
            # Neither the plain hash of the definition nor the number of slots: blinded
            # auditors read this entry, and either would confirm a guess of the block sizes.
            "definition_commitment": definition_commitment(seed, trial.definition_toml),
            "seed_commitment": trial.seed_commitment,
            "data_key_id": trial.data_key_id,
            "strata": len(ctx.definition.strata()),
        },
    )
    return total


def add_site(
    session: Session,
    ctx: TrialContext,
    actor: Actor,
    site_id: str,
    name: str,
    attributes: Mapping[str, str],
) -> Site:
    """Create an open site with the levels of every site-derived stratification factor."""
    MANAGE_SITES.check(actor)
    errors: dict[str, list[str]] = {}
    if not SITE_ID.fullmatch(site_id):
        errors["site"] = ["1 to 16 of A-Z a-z 0-9 -."]
    if not 1 <= len(name) <= 128 or not name.isprintable():
        errors["name"] = ["1 to 128 printable characters."]
    expected = {factor.id: factor for factor in ctx.definition.site_factors()}
    for key in set(attributes) - set(expected):
        errors[f"attributes.{key}"] = ["Not a site-derived stratification factor."]
    for factor_id, factor in expected.items():
        level = attributes.get(factor_id)
        if level not in factor.levels:
            errors[f"attributes.{factor_id}"] = [f"Must be one of: {', '.join(factor.levels)}."]
    if errors:
        raise ValidationFailed(errors)
    if session.get(Site, site_id) is not None:
        raise Conflict(f"Site {site_id} already exists.")
    site = Site(id=site_id, name=name, attributes=dict(attributes), status=SITE_OPEN)
    session.add(site)
    session.flush()
    ctx.audit.append(
        session,
        actor,
        "site.created",
        site_id,
        {"site": site_id, "name": name, "attributes": dict(attributes)},
        site=site_id,
    )
    return site


def close_site(session: Session, ctx: TrialContext, actor: Actor, site_id: str) -> Site:
    """Close a site: from now on it screens and randomises no one. Audited as site.closed.

    Its participants, kits and records stay as they are; a site is never reopened.
    """
    MANAGE_SITES.check(actor)
    if not SITE_ID.fullmatch(site_id) or session.get(Site, site_id) is None:
        raise NotFound(f"No site {site_id}.")
    if lock_site(session, site_id).status == SITE_CLOSED:
        raise Conflict(f"Site {site_id} is already closed.")
    site = session.get_one(Site, site_id, populate_existing=True)
    site.status = SITE_CLOSED
    site.closed_at = ctx.clock()
    session.flush()
    ctx.audit.append(session, actor, "site.closed", site_id, {"site": site_id}, site=site_id)
    return site
