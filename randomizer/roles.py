"""Roles and who may do what (URS §1 R-ROLE, with §8's table as the authority).

Pure data: the API's decorators and the services read these sets; nothing else decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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

#: Which roles may call what (URS §8).
SCREEN: Final = frozenset({COORDINATOR, INVESTIGATOR})
RANDOMIZE: Final = frozenset({COORDINATOR, INVESTIGATOR})
READ_PARTICIPANT: Final = frozenset(SITE_ROLES | {MEDICAL_MONITOR, SPONSOR})


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
