"""Participants as the domain knows them: identifiers, statuses and validated requests.

Pure data shared by the request schemas (``randomizer.schemas``) and the services, so that
neither imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

#: ``\A``/``\Z``, not ``^``/``$``: ``$`` also matches before a trailing newline, which let
#: "S-1\n" (and 33-character numbers, a 500 on PostgreSQL's VARCHAR(32)) through.
SCREENING_NUMBER: Final = re.compile(r"\A[A-Za-z0-9-]{1,32}\Z")
#: The same rule in ECMA-262 syntax, for the OpenAPI document.
SCREENING_NUMBER_PATTERN: Final = "^[A-Za-z0-9-]{1,32}$"
#: A site id: 1 to 16 of A-Z a-z 0-9 -.
SITE_ID: Final = re.compile(r"\A[A-Za-z0-9-]{1,16}\Z")


def site_prefix(site: str) -> str:
    """What every screening number of ``site`` begins with: its id and a hyphen."""
    return f"{site}-"


def owning_site(screening_number: str, site_ids: Iterable[str]) -> str | None:
    """The site whose numbers ``screening_number`` is among: the longest id it begins with
    (followed by a hyphen), so that site ``10`` cannot take ``10-1-0001`` from site ``10-1``."""
    owners = [site for site in site_ids if screening_number.startswith(site_prefix(site))]
    return max(owners, key=len, default=None)


SCREENED: Final = "screened"
RANDOMIZED: Final = "randomized"
RANDOMIZED_IN_ERROR: Final = "randomized_in_error"
WITHDRAWN: Final = "withdrawn"
DISCONTINUED: Final = "discontinued"
#: Every status a participant may have (URS §8, R-LIFE); the database refuses any other.
PARTICIPANT_STATUSES: Final = (SCREENED, RANDOMIZED, RANDOMIZED_IN_ERROR, WITHDRAWN, DISCONTINUED)

#: Lifecycle (R-LIFE, R-FIX): from each status, the statuses a participant may move to.
#: Randomisation itself (screened -> randomized) is the randomisation service's. Withdrawal
#: ends the participant's part in the trial; discontinuation ends treatment only (follow-up
#: visits stay in the schedule); either ends dispensing. A participant randomised in error
#: is flagged by an admin; its slot stays consumed. Nothing moves back to ``randomized``.
PARTICIPANT_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    SCREENED: frozenset({RANDOMIZED, WITHDRAWN}),
    RANDOMIZED: frozenset({WITHDRAWN, DISCONTINUED, RANDOMIZED_IN_ERROR}),
    DISCONTINUED: frozenset({WITHDRAWN, RANDOMIZED_IN_ERROR}),
    WITHDRAWN: frozenset({RANDOMIZED_IN_ERROR}),
    RANDOMIZED_IN_ERROR: frozenset(),
}

SITE_OPEN: Final = "open"
SITE_CLOSED: Final = "closed"
#: A closed site screens and randomises no one; the database refuses any other status.
SITE_STATUSES: Final = (SITE_OPEN, SITE_CLOSED)


@dataclass(frozen=True)
class ScreeningRequest:
    """A validated screening request (``POST /participants``)."""

    #: None: the service assigns the site's next number (the trial's number pattern).
    screening_number: str | None
    site: str
    screened_on: date
    strata: Mapping[str, str]


@dataclass(frozen=True)
class RandomizationRequest:
    """A validated randomisation request: weight and every eligibility answer, typed."""

    weight_kg: Decimal
    eligibility: Mapping[str, int | Decimal | bool]


@dataclass(frozen=True)
class DispenseRequest:
    """A validated dispensing request: the visit and today's weight."""

    visit: str
    weight_kg: Decimal


@dataclass(frozen=True)
class KitStatusRequest:
    """A validated kit status change: the new status and why."""

    status: str
    reason: str


@dataclass(frozen=True)
class ReasonRequest:
    """A validated lifecycle change (withdraw, discontinue, flag as randomised in error)."""

    reason: str


@dataclass(frozen=True)
class StratumCorrectionRequest:
    """The right screening factors of a participant, and why the recorded ones were wrong."""

    strata: Mapping[str, str]
    reason: str


@dataclass(frozen=True)
class UnblindRequest:
    """A validated emergency unblinding request (URS §6)."""

    reason: str
    event_reference: str
    detail: str | None = None
