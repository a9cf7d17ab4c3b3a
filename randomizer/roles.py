"""Roles and who may do what: URS §8's table, one named permission per row (R-ROLE).

This module is the only place that says which role may call which endpoint: the API's
decorators, the services and the web pages all check these permissions, and
``tests/randomizer/test_role_table.py`` calls every endpoint as every role against them.
Scopes narrower than a role (a site role sees only its own site) are checked by the
services, after the role, and refused with a different reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from randomizer.errors import Forbidden

COORDINATOR: Final = "coordinator"
INVESTIGATOR: Final = "investigator"
PHARMACIST: Final = "pharmacist"
MEDICAL_MONITOR: Final = "medical_monitor"
SPONSOR: Final = "sponsor"
STATISTICIAN: Final = "statistician"
AUDITOR: Final = "auditor"
ADMIN: Final = "admin"

ROLES: Final = (
    COORDINATOR,
    INVESTIGATOR,
    PHARMACIST,
    MEDICAL_MONITOR,
    SPONSOR,
    STATISTICIAN,
    AUDITOR,
    ADMIN,
)
#: Roles that belong to one site.
SITE_ROLES: Final = frozenset({COORDINATOR, INVESTIGATOR, PHARMACIST})
#: The only role that may ever see an arm outside an emergency unblinding.
UNBLINDED_ROLES: Final = frozenset({STATISTICIAN})
BLINDED_ROLES: Final = frozenset(ROLES) - UNBLINDED_ROLES


@dataclass(frozen=True)
class Permission:
    """One row of URS §8's table: what it allows and which roles may do it."""

    does: str
    roles: frozenset[str]

    def __contains__(self, role: object) -> bool:
        return role in self.roles

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.roles))

    def allows(self, actor: Actor) -> bool:
        """True if the actor's role may do this; the command line (``system``) may do all."""
        return actor.role in self.roles or actor == SYSTEM

    def check(self, actor: Actor) -> None:
        """Refuse (403) a role that may not do this; the detail names the role and the act."""
        if not self.allows(actor):
            raise Forbidden(role_refusal(actor.role, self.does))


def role_refusal(role: str, does: str) -> str:
    """The one wording of a refusal by role, distinct from every refusal by scope."""
    return f"The {role} role may not {does}."


def _permission(does: str, roles: Iterable[str]) -> Permission:
    return Permission(does, frozenset(roles))


_EVERY_ROLE = frozenset(ROLES)

#: URS §8, row by row (and the rows issues added since). ``GET /health`` and
#: ``GET /audit/verifier-key`` need no token at all.
READ_TRIAL: Final = _permission("read the trial definition", _EVERY_ROLE)
SCREEN: Final = _permission("screen participants", {COORDINATOR, INVESTIGATOR})
READ_PARTICIPANT: Final = _permission("read participants", SITE_ROLES | {MEDICAL_MONITOR, SPONSOR})
RANDOMIZE: Final = _permission("randomise participants", {COORDINATOR, INVESTIGATOR})
DISPENSE: Final = _permission("dispense kits", {COORDINATOR, INVESTIGATOR, PHARMACIST})
CHANGE_KIT_STATUS: Final = _permission("change a kit's status", {PHARMACIST})
READ_INVENTORY: Final = _permission("read a site's inventory", {PHARMACIST, ADMIN})
UNBLIND: Final = _permission("unblind participants", {INVESTIGATOR, MEDICAL_MONITOR})
READ_CHECKPOINT: Final = _permission("read audit checkpoints", _EVERY_ROLE)
READ_AUDIT_ENTRIES: Final = _permission("read audit entries", {AUDITOR})
PROVE_INCLUSION: Final = _permission("ask for inclusion proofs", SITE_ROLES | {AUDITOR})
PROVE_CONSISTENCY: Final = _permission("ask for consistency proofs", _EVERY_ROLE)
READ_KIT: Final = _permission("read kits", {PHARMACIST, ADMIN})
CHANGE_PARTICIPANT_STATUS: Final = _permission(
    "withdraw or discontinue participants", {COORDINATOR, INVESTIGATOR}
)
CORRECT_PARTICIPANT: Final = _permission("correct participants' records", {ADMIN})
READ_UNBLINDINGS: Final = _permission(
    "read the list of unblindings", {STATISTICIAN, SPONSOR, MEDICAL_MONITOR, AUDITOR}
)
READ_NOTIFICATIONS: Final = _permission("read the notifications", {ADMIN})
REPORT_ENROLLMENT: Final = _permission("read the enrollment report", {SPONSOR, ADMIN, STATISTICIAN})
REPORT_BALANCE: Final = _permission("read the balance report", {STATISTICIAN})
READ_ALLOCATIONS: Final = _permission("read allocations", {STATISTICIAN})
EXPORT_DM: Final = _permission("export the CDISC DM dataset", {STATISTICIAN})  # issue 14
#: Issue 12 (R-SHIP, R-KIT-3): the depot, shipments, quarantine and the supply report.
MANAGE_SHIPMENTS: Final = _permission("send shipments from the depot", {ADMIN})
READ_SHIPMENTS: Final = _permission("read shipments", {PHARMACIST, ADMIN})
RECEIVE_SHIPMENT: Final = _permission("receive shipments", {PHARMACIST})
QUARANTINE_KITS: Final = _permission("quarantine and release kits", {ADMIN})
REPORT_SUPPLY: Final = _permission("read the supply report", {STATISTICIAN})

#: Not rows of URS §8's table (no endpoint yet): the command line acts as ``system``.
MANAGE_SITES: Final = _permission("manage sites", {ADMIN})
MANAGE_USERS: Final = _permission("manage users", {ADMIN})
MANAGE_DEPOT: Final = _permission("add kits to the depot and expire kits", {ADMIN})

#: Scopes inside a permission: roles that see every site's data rather than their own.
PROVE_ANY_INCLUSION: Final = frozenset({AUDITOR})
UNBLIND_ANY_SITE: Final = frozenset({MEDICAL_MONITOR})


@dataclass(frozen=True)
class Actor:
    """Who is acting: a user, or ``system`` for the command line (URS §7 ``actor``/``role``)."""

    name: str
    role: str
    site: str | None = None
    user_id: int | None = None

    @property
    def blinded(self) -> bool:
        """True unless the role may see arms."""
        return self.role not in UNBLINDED_ROLES

    def may_see_site(self, site: str) -> bool:
        """Site roles see only their own site; sponsor-side roles see every site."""
        return self.role not in SITE_ROLES or self.site == site


SYSTEM: Final = Actor(name="system", role="system")
