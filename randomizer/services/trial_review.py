"""Checking a trial definition before go-live: findings a sponsor can act on (R-CFG).

``parse_trial`` refuses a definition the service cannot run (and names the key); this goes
further and asks whether the trial it describes can run as meant: strata against the target
enrolment, list length against enrolment, kit stock against dosing for the heaviest weight
a request may state (the stock a site starts with, and the ``[supply]`` resupply levels),
eligibility rules over undeclared fields, overlapping visit windows.

It reads a file and nothing stored, and changes nothing: no session, no actor, no audit
entry. Nothing it prints is secret, but it does name block sizes and list lengths, so it is
for the sponsor's set-up team and the statistician, not for blinded site staff.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from randomizer.domain import (
    WEIGHT_KG_MAX,
    TrialDefinition,
    TrialDefinitionError,
    kits_for_visit,
    parse_trial,
)

ERROR, WARNING = "error", "warning"
#: Below this many expected participants per stratum for each place in the largest block,
#: incomplete blocks at the end of enrolment weigh on the balance (two blocks' worth).
BLOCKS_PER_STRATUM = 2


@dataclass(frozen=True)
class Finding:
    """One thing to fix (``error``: the trial cannot run as meant) or to review (``warning``)."""

    severity: str
    key: str
    message: str


@dataclass(frozen=True)
class TrialReview:
    """The findings on one definition, errors first; ``definition`` is None if it did not load."""

    definition: TrialDefinition | None
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == WARNING)


def review_trial_definition(text: str, *, kits_per_arm: int | None = None) -> TrialReview:
    """Every finding on the definition ``text``, the ones that stop go-live first.

    ``kits_per_arm`` is the stock a site holds of every arm before it is resupplied (default:
    what ``sealroom init-demo`` stocks, 40 randomisations of a 100 kg participant).
    """
    findings = list(_undeclared_eligibility_fields(text))
    try:
        definition = parse_trial(text)
    except TrialDefinitionError as exc:
        # The undeclared fields are already named, each of them; parse_trial stops at the first.
        if not any(f.key == exc.path for f in findings):
            findings.append(Finding(ERROR, exc.path, exc.problem))
        return TrialReview(None, _ordered(findings))
    if kits_per_arm is None:
        from randomizer.services.demo import DEMO_RANDOMISATIONS, DEMO_WEIGHT_KG

        kits_per_arm = DEMO_RANDOMISATIONS * kits_for_visit(
            definition, DEMO_WEIGHT_KG, definition.first_visit()
        )
    findings += _enrolment(definition)
    findings += _stock(definition, kits_per_arm)
    findings += _visit_windows(definition)
    return TrialReview(definition, _ordered(findings))


def _ordered(findings: list[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(findings, key=lambda f: f.severity != ERROR))


def _undeclared_eligibility_fields(text: str) -> Iterator[Finding]:
    """Every eligibility condition over a field that ``eligibility.fields`` does not declare."""
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError:
        return  # parse_trial names the TOML error
    eligibility = document.get("eligibility")
    if not isinstance(eligibility, Mapping):
        return
    declared = {
        field.get("id") for field in _list(eligibility.get("fields")) if isinstance(field, Mapping)
    }
    for index, rule in enumerate(_list(eligibility.get("rules"))):
        if not isinstance(rule, Mapping):
            continue
        path = f"eligibility.rules[{index}]"
        conditions: list[tuple[str, Any]] = [(path, rule)] if "field" in rule else []
        for combine in ("all", "any"):
            conditions += [
                (f"{path}.{combine}[{i}]", c) for i, c in enumerate(_list(rule.get(combine)))
            ]
        for where, condition in conditions:
            if isinstance(condition, Mapping) and condition.get("field") not in declared:
                yield Finding(
                    ERROR,
                    f"{where}.field",
                    f"rule {rule.get('id', '?')!s} tests {condition.get('field')!r}, which "
                    "eligibility.fields does not declare: declare the field (id, type, bounds, "
                    "label) or correct the rule",
                )


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _enrolment(definition: TrialDefinition) -> list[Finding]:
    target = definition.target_participants
    if target is None:
        return [
            Finding(
                WARNING,
                "trial.target_participants",
                "no target enrolment declared: strata and list length cannot be checked "
                "against it; declare trial.target_participants",
            )
        ]
    findings = []
    strata = len(definition.strata())
    largest = max(definition.block_sizes)
    per_stratum = target / strata
    if target < strata:
        findings.append(
            Finding(
                WARNING,
                "stratification.factors",
                f"{strata} strata for a target of {target} participants: some strata will stay "
                "empty; use fewer factors or levels",
            )
        )
    elif per_stratum < BLOCKS_PER_STRATUM * largest:
        findings.append(
            Finding(
                WARNING,
                "stratification.factors",
                f"about {per_stratum:.1f} participants per stratum ({target} over {strata} "
                f"strata), fewer than {BLOCKS_PER_STRATUM} blocks of {largest}: incomplete "
                "blocks at the end of enrolment may unbalance the arms; use fewer factors or "
                "levels, or smaller blocks",
            )
        )
    total = definition.slots_per_stratum * strata
    if total < target:
        findings.append(
            Finding(
                ERROR,
                "randomisation.slots_per_stratum",
                f"{definition.slots_per_stratum} slots in each of {strata} strata ({total}) "
                f"cannot randomise the target of {target} participants",
            )
        )
    elif definition.slots_per_stratum < target:
        findings.append(
            Finding(
                WARNING,
                "randomisation.slots_per_stratum",
                f"a stratum holds {definition.slots_per_stratum} slots, fewer than the target of "
                f"{target}: if enrolment gathers in one stratum it runs out (stratum-exhausted) "
                f"before the target; {target} slots per stratum rule this out",
            )
        )
    return findings


def _stock(definition: TrialDefinition, kits_per_arm: int) -> list[Finding]:
    heaviest = Decimal(WEIGHT_KG_MAX)
    first = definition.first_visit()
    at_randomisation = kits_for_visit(definition, heaviest, first)
    per_visit = {v.id: kits_for_visit(definition, heaviest, v) for v in definition.visits}
    course = sum(per_visit.values())
    findings = []
    if kits_per_arm < at_randomisation:
        findings.append(
            Finding(
                ERROR,
                "kits",
                f"a participant of {heaviest} kg (the heaviest a request may state) needs "
                f"{at_randomisation} kits at randomisation ({first.id}), but a site holds "
                f"{kits_per_arm} of each arm: they can never be randomised (a site must hold "
                "enough kits of every arm, R-BLIND-2); stock more or raise grams_per_kit",
            )
        )
    short = [visit for visit, kits in per_visit.items() if kits > kits_per_arm]
    if short and kits_per_arm >= at_randomisation:
        findings.append(
            Finding(
                ERROR,
                "visits.schedule",
                f"a participant of {heaviest} kg needs more than the {kits_per_arm} kits of each "
                f"arm a site holds at visits {', '.join(short)}: those visits cannot be "
                "dispensed without a resupply in between",
            )
        )
    findings += _supply_levels(definition, at_randomisation, max(per_visit.values()))
    if not findings and kits_per_arm < course:
        findings.append(
            Finding(
                WARNING,
                "kits",
                f"a full course for a participant of {heaviest} kg takes {course} kits; a site "
                f"holding {kits_per_arm} of each arm covers {kits_per_arm // course} such "
                f"courses and {kits_per_arm // at_randomisation} randomisations before it needs "
                "a resupply: plan resupply to follow enrolment",
            )
        )
    return findings


def _supply_levels(
    definition: TrialDefinition, at_randomisation: int, largest_visit: int
) -> list[Finding]:
    """The resupply levels (``[supply]``, R-SHIP) against the heaviest participant's needs."""
    heaviest = WEIGHT_KG_MAX
    plan = definition.supply
    levels = [("supply", plan.default)] + [(f"supply.sites.{s}", lv) for s, lv in plan.sites]
    findings = []
    for path, level in levels:
        if level.trigger == 0:
            if path == "supply":
                findings.append(
                    Finding(
                        WARNING,
                        "supply.trigger",
                        "no resupply level: no site is resupplied by itself, every shipment "
                        "is created by hand; declare [supply] trigger and target",
                    )
                )
            continue
        if level.trigger < at_randomisation:
            findings.append(
                Finding(
                    ERROR,
                    f"{path}.trigger",
                    f"resupply is asked only below {level.trigger} kits of an arm, but a "
                    f"participant of {heaviest} kg needs {at_randomisation} at randomisation: a "
                    "site can refuse them for lack of supply (R-BLIND-2) with no resupply "
                    f"asked; raise the trigger to at least {at_randomisation}",
                )
            )
        if level.target - level.trigger < largest_visit:
            findings.append(
                Finding(
                    WARNING,
                    f"{path}.target",
                    f"a resupply to {level.target} leaves a site {level.target - level.trigger} "
                    f"kits of an arm above its trigger ({level.trigger}), less than one visit "
                    f"of a participant of {heaviest} kg ({largest_visit}): one allocation asks "
                    "for the next shipment; raise the target",
                )
            )
    return findings


def _visit_windows(definition: TrialDefinition) -> list[Finding]:
    window = definition.visit_window_days
    visits = sorted(definition.visits, key=lambda v: v.week)
    findings = []
    for earlier, later in itertools.pairwise(visits):
        if later.day() - window <= earlier.day() + window:
            findings.append(
                Finding(
                    ERROR,
                    "visits.window_days",
                    f"the windows of {earlier.id} (days {earlier.day() - window} to "
                    f"{earlier.day() + window}) and {later.id} (days {later.day() - window} to "
                    f"{later.day() + window}) overlap: one date would fit both visits; narrow "
                    f"the window below {math.ceil((later.day() - earlier.day()) / 2)} days or "
                    "space the visits",
                )
            )
    return findings
