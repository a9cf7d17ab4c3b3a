"""The bundled demo: ``sealroom init`` plus three sites, stock and one user per role (URS §9)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from randomizer.db import Database
from randomizer.domain import TrialDefinition, kits_for_visit
from randomizer.roles import SYSTEM
from randomizer.services import kits as kit_service
from randomizer.services import trial_setup, users
from randomizer.services.context import utc_now

#: Demo sites: (id, name, region).
DEMO_SITES = (
    ("101", "Demo site 101", "north_america"),
    ("102", "Demo site 102", "north_america"),
    ("201", "Demo site 201", "europe"),
)
#: Demo users: (name, role, site). Their e-mail addresses are in DEMO_EMAILS.
DEMO_USERS = (
    ("coordinator-101", "coordinator", "101"),
    ("investigator-101", "investigator", "101"),
    ("pharmacist-101", "pharmacist", "101"),
    ("coordinator-102", "coordinator", "102"),
    ("pharmacist-102", "pharmacist", "102"),
    ("coordinator-201", "coordinator", "201"),
    ("pharmacist-201", "pharmacist", "201"),
    ("medical-monitor", "medical_monitor", None),
    ("sponsor", "sponsor", None),
    ("statistician", "statistician", None),
    ("auditor", "auditor", None),
    ("admin", "admin", None),
)
#: Where the demo's notifications go (``.invalid``: no real address, RFC 2606).
DEMO_EMAILS = {
    "investigator-101": "investigator-101@sealroom-demo.invalid",
    "statistician": "statistician@sealroom-demo.invalid",
}
#: Each site is stocked for this many randomisations of this weight, in every arm.
DEMO_RANDOMISATIONS, DEMO_WEIGHT_KG = 40, Decimal(100)
DEMO_LOT = "DEMO-LOT-01"


@dataclass(frozen=True)
class DemoTrial:
    """What initialising the demo produced."""

    slots: int
    kits_per_arm: int
    #: One entry per user: user, role, site, token and (for the web pages) password.
    tokens: list[dict[str, str | None]]


def initialise_demo(
    database: Database,
    keys_dir: Path,
    definition: TrialDefinition,
    definition_toml: str,
    seed: bytes,
    *,
    kits_per_arm: int | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> DemoTrial:
    """``sealroom init`` plus the demo's sites, stock and users, all in one transaction.

    ``kits_per_arm`` defaults to enough for 40 randomisations of 100 kg participants.
    Refuses (Conflict) a database that already holds a trial before creating any key.
    """
    keys = trial_setup.prepare_database(database, keys_dir)
    if kits_per_arm is None:
        kits_per_arm = DEMO_RANDOMISATIONS * kits_for_visit(
            definition, DEMO_WEIGHT_KG, definition.first_visit()
        )
    #: One entry per user: user, role, site, token and (for the web pages) password.
    tokens: list[dict[str, str | None]] = []
    with database.transaction() as session:
        ctx, slots = trial_setup.create_trial_with_lists(
            session, keys, definition, definition_toml, seed, SYSTEM, clock
        )
        expiry = ctx.today() + timedelta(days=730)
        for site_id, name, region in DEMO_SITES:
            attributes = {
                factor.id: region if region in factor.levels else factor.levels[0]
                for factor in definition.site_factors()
            }
            site = trial_setup.add_site(session, ctx, SYSTEM, site_id, name, attributes)
            kit_service.stock_site(session, ctx, SYSTEM, site, kits_per_arm, DEMO_LOT, expiry)
        for name, role, site_id in DEMO_USERS:
            _user, token = users.add_user(
                session, ctx, SYSTEM, name, role, site_id, DEMO_EMAILS.get(name)
            )
            # The web pages' password, random like the token, written beside it (mode 0600).
            password = secrets.token_urlsafe(12)
            users.set_password(session, ctx, SYSTEM, name, password)
            tokens.append(
                {"user": name, "role": role, "site": site_id, "token": token, "password": password}
            )
    return DemoTrial(slots=slots, kits_per_arm=kits_per_arm, tokens=tokens)
