"""Initialising a trial: its data key, strata, sealed lists and sites (URS §3, §5, §9)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from keys import MasterKeyRing, WrappedDataKey, new_data_key
from randomizer.domain import (
    TrialDefinition,
    generate_lists,
    randomization_number,
    seed_commitment,
)
from randomizer.errors import Conflict, ValidationFailed
from randomizer.models import DataKey, Site, Slot, Stratum, Trial
from randomizer.roles import Actor
from randomizer.services.context import TrialContext, utc_now

SLOT_SEAL_KIND = "slot"
#: ``\A``/``\Z``, not ``^``/``$``: ``$`` also matches before a trailing newline.
SITE_ID = re.compile(r"\A[A-Za-z0-9-]{1,16}\Z")


def refuse_second_trial(connection: Session | Connection) -> None:
    """Raise Conflict if the database already holds a trial: one deployment, one trial."""
    if connection.scalar(select(func.count()).select_from(Trial)):
        raise Conflict("This database already holds a trial; one deployment serves one trial.")


def create_trial(
    session: Session,
    definition: TrialDefinition,
    definition_toml: str,
    ring: MasterKeyRing,
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
    ctx.audit.append(
        session,
        actor,
        "trial.initialised",
        ctx.definition.id,
        {
            "trial": ctx.definition.id,
            "registry_id": ctx.definition.registry_id,
            "definition_sha256": trial.definition_sha256,
            "seed_commitment": trial.seed_commitment,
            "data_key_id": trial.data_key_id,
            "strata": len(ctx.definition.strata()),
            "slots": total,
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
    """Create a site with the levels of every site-derived stratification factor."""
    errors: dict[str, list[str]] = {}
    if not SITE_ID.fullmatch(site_id):
        errors["site"] = ["1 to 16 of A-Z a-z 0-9 -."]
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
    site = Site(id=site_id, name=name, attributes=dict(attributes))
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
