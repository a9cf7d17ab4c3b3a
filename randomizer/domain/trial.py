"""The trial definition (URS §2, R-CFG): what a trial declares, and its validation at load.

Everything trial-specific lives in a TOML file; this module turns one into a frozen
``TrialDefinition`` or refuses it with a ``TrialDefinitionError`` that names the offending key.
Standard library only.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from randomizer.domain.participants import SCREENING_NUMBER, SITE_ID
from randomizer.domain.supply import SupplyLevels, SupplyPlan

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,31}")
RULE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A checkpoint's origin line is signed text: printable ASCII, no whitespace, so it can't be
# confused with the lines around it.
AUDIT_ORIGIN = re.compile(r"[\x21-\x7e]{1,255}")

FACTOR_SOURCES = ("site", "screening")
FIELD_TYPES = ("integer", "decimal", "boolean")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
BOOLEAN_OPERATORS = ("==", "!=")
COMBINATIONS = ("all", "any")

T = TypeVar("T")


#: The reasons of ``[unblinding]`` when a definition (one stored before it existed) has none.
DEFAULT_UNBLINDING_REASONS = ("serious_adverse_event", "pregnancy", "overdose", "other")
REASON_ID = re.compile(r"[a-z][a-z0-9_]{0,31}")


class TrialDefinitionError(ValueError):
    """A trial definition is not valid; ``str()`` is ``"<dotted key path>: <problem>"``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Arm:
    """A treatment arm; ``ratio`` is its share of every block."""

    id: str
    label: str
    ratio: int


@dataclass(frozen=True)
class Factor:
    """A stratification factor; ``source`` is ``site`` (site attribute) or ``screening``."""

    id: str
    levels: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Stratum:
    """One combination of factor levels, numbered from 1 in Cartesian order (URS §3)."""

    number: int
    key: str
    levels: tuple[tuple[str, str], ...]

    def level(self, factor_id: str) -> str:
        """The level of ``factor_id`` in this stratum; KeyError for an unknown factor."""
        for candidate, level in self.levels:
            if candidate == factor_id:
                return level
        raise KeyError(factor_id)


@dataclass(frozen=True)
class EligibilityField:
    """A value the site sends at randomisation; bounds are inclusive and only for numbers."""

    id: str
    type: str
    minimum: Decimal | None
    maximum: Decimal | None
    label: str


@dataclass(frozen=True)
class Condition:
    """``<answer for field> <op> <value>``; boolean values only with ``==`` and ``!=``."""

    field: str
    op: str
    value: int | Decimal | bool

    def describe(self) -> str:
        """The condition as the definition file states it: ``age_years >= 18``."""
        value = str(self.value).lower() if isinstance(self.value, bool) else str(self.value)
        return f"{self.field} {self.op} {value}"


@dataclass(frozen=True)
class EligibilityRule:
    """A protocol criterion, satisfied when all / any of its conditions hold.

    Conditions always say when the participant is eligible, also for exclusion criteria;
    ``text`` is the criterion in the protocol's words (for an exclusion: what excludes).
    """

    id: str
    text: str
    combine: str
    conditions: tuple[Condition, ...]

    def describe(self) -> str:
        """When the rule holds, in the file's terms (``mmt8 <= 142 or cdasi_activity >= 14``),
        for a reader checking it against the protocol's words."""
        joiner = {"all": " and ", "any": " or "}[self.combine]
        return joiner.join(condition.describe() for condition in self.conditions)


@dataclass(frozen=True)
class Visit:
    """A scheduled visit: in week ``week`` (week 1 is randomisation day)."""

    id: str
    week: int
    dispenses_weeks: int

    def day(self) -> int:
        """Days after the day of randomisation on which the visit falls."""
        return (self.week - 1) * 7

    @property
    def dispenses(self) -> bool:
        """Whether kits are handed out at this visit."""
        return self.dispenses_weeks > 0


@dataclass(frozen=True)
class KitType:
    """What a kit of one arm contains; kits of all arms look alike."""

    arm: str
    description: str
    grams_igg: Decimal


@dataclass(frozen=True)
class TrialDefinition:
    """A validated trial definition; build it with ``parse_trial`` or ``load_trial``."""

    id: str
    title: str
    registry_id: str
    sponsor_protocol: str | None
    arms: tuple[Arm, ...]
    factors: tuple[Factor, ...]
    block_sizes: tuple[int, ...]
    slots_per_stratum: int
    screening_window_days: int
    eligibility_fields: tuple[EligibilityField, ...]
    eligibility_rules: tuple[EligibilityRule, ...]
    kit_types: tuple[KitType, ...]
    grams_per_kit: Decimal
    do_not_dispense_days: int
    grams_per_kg_per_week: Decimal
    visits: tuple[Visit, ...]
    visit_window_days: int
    audit_origin: str
    source_sha256: str
    #: Reasons an emergency unblinding may give (URS §6), and those that need a detail.
    #: How the service numbers a site's participants, e.g. ``"{site}-{n:04d}"``; None: the
    #: site sends every number itself.
    screening_number_pattern: str | None = None
    unblinding_reasons: tuple[str, ...] = DEFAULT_UNBLINDING_REASONS
    unblinding_detail_required: tuple[str, ...] = ("other",)
    #: How many participants the trial means to randomise (``trial.target_participants``):
    #: the line the enrollment reports draw and project against; None: no target declared.
    target_participants: int | None = None
    #: Resupply levels (``[supply]``); without them no site is resupplied by itself.
    supply: SupplyPlan = field(default_factory=SupplyPlan)

    @cached_property
    def _strata(self) -> tuple[Stratum, ...]:
        # itertools.product varies its last argument fastest, which is the URS §3 numbering.
        combinations = itertools.product(*(factor.levels for factor in self.factors))
        factor_ids = tuple(factor.id for factor in self.factors)
        strata = []
        for number, levels in enumerate(combinations, start=1):
            pairs = tuple(zip(factor_ids, levels, strict=True))
            key = "|".join(f"{factor_id}={level}" for factor_id, level in pairs)
            strata.append(Stratum(number=number, key=key, levels=pairs))
        return tuple(strata)

    @cached_property
    def _strata_by_key(self) -> dict[str, Stratum]:
        return {stratum.key: stratum for stratum in self._strata}

    def strata(self) -> tuple[Stratum, ...]:
        """Every stratum, in number order (the Cartesian product of the factors' levels)."""
        return self._strata

    def stratum(self, number: int) -> Stratum:
        """The stratum with this number (from 1); KeyError if there is none."""
        if not 1 <= number <= len(self._strata):
            raise KeyError(number)
        return self._strata[number - 1]

    def stratum_for(self, levels: Mapping[str, str]) -> Stratum:
        """The stratum of these factor levels, which must name every factor exactly once.

        KeyError if a factor is missing; ValueError for an unknown factor or level.
        """
        unknown = sorted(set(levels) - {factor.id for factor in self.factors})
        if unknown:
            raise ValueError(f"unknown stratification factor {unknown[0]!r}")
        for factor in self.factors:
            if factor.id not in levels:
                raise KeyError(factor.id)
            if levels[factor.id] not in factor.levels:
                raise ValueError(f"{levels[factor.id]!r} is not a level of factor {factor.id!r}")
        key = "|".join(f"{factor.id}={levels[factor.id]}" for factor in self.factors)
        return self._strata_by_key[key]

    def arm(self, arm_id: str) -> Arm:
        """The arm with this id; KeyError if there is none."""
        return _find(self.arms, arm_id, lambda arm: arm.id)

    def kit_type(self, arm_id: str) -> KitType:
        """The kit type of this arm; KeyError if there is none."""
        return _find(self.kit_types, arm_id, lambda kit_type: kit_type.arm)

    def site_factors(self) -> tuple[Factor, ...]:
        """Factors taken from the site's attributes, never typed by a person."""
        return tuple(factor for factor in self.factors if factor.source == "site")

    def screening_factors(self) -> tuple[Factor, ...]:
        """Factors the site sends at screening."""
        return tuple(factor for factor in self.factors if factor.source == "screening")

    def eligibility_field(self, field_id: str) -> EligibilityField:
        """The eligibility field with this id; KeyError if there is none."""
        return _find(self.eligibility_fields, field_id, lambda field: field.id)

    def visit(self, visit_id: str) -> Visit:
        """The visit with this id; KeyError if there is none."""
        return _find(self.visits, visit_id, lambda visit: visit.id)

    def first_visit(self) -> Visit:
        """The baseline visit, at which the participant is randomised: the smallest week."""
        return min(self.visits, key=lambda visit: visit.week)


def _find(items: tuple[T, ...], wanted: str, key: Callable[[T], str]) -> T:
    for item in items:
        if key(item) == wanted:
            return item
    raise KeyError(wanted)


def bundled_trial_path(name: str = "reclaiim") -> Path:
    """Path of a trial definition shipped with the package (``randomizer/trials/<name>.toml``)."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a bundled trial name: {name!r}")
    return Path(__file__).resolve().parent.parent / "trials" / f"{name}.toml"


def load_trial(path: str | os.PathLike[str]) -> TrialDefinition:
    """Read and validate a trial definition file (UTF-8 TOML)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrialDefinitionError("(file)", f"not UTF-8: {exc}") from None
    return parse_trial(text)


def parse_trial(text: str) -> TrialDefinition:
    """Parse and validate a trial definition; a TrialDefinitionError names the offending key."""
    try:
        # TOML floats are parsed straight into Decimal, from their source text, so that 0.5
        # is exactly 0.5 and no binary rounding ever reaches a dose or a threshold.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise TrialDefinitionError("(file)", f"not valid TOML: {exc}") from None
    root = _table(document, "", _SECTION_KEYS)

    trial = _section(root, "trial")
    trial_id = _field(trial, "trial", "id", _matching(TRIAL_ID, "letters, digits, '_', '.', '-'"))
    title = _field(trial, "trial", "title", _text)
    registry_id = _field(trial, "trial", "registry_id", _text)
    sponsor_protocol = _field(trial, "trial", "sponsor_protocol", _text, default=None)
    target = _field(trial, "trial", "target_participants", _positive, default=None)
    arms = _parse_arms(root)
    factors = _parse_factors(root)
    randomisation = _section(root, "randomisation")
    block_sizes = _parse_block_sizes(randomisation, arms)
    slots_per_stratum = _field(randomisation, "randomisation", "slots_per_stratum", _positive)
    screening = _section(root, "screening")
    screening_window_days = _field(screening, "screening", "window_days", _non_negative)
    number_pattern = _field(screening, "screening", "number_pattern", _number_pattern, default=None)
    eligibility = _section(root, "eligibility")
    eligibility_fields = _parse_eligibility_fields(eligibility)
    eligibility_rules = _parse_eligibility_rules(eligibility, eligibility_fields)
    kits = _section(root, "kits")
    grams_per_kit = _field(kits, "kits", "grams_per_kit", _positive_decimal)
    do_not_dispense_days = _field(kits, "kits", "do_not_dispense_days", _non_negative)
    kit_types = _parse_kit_types(kits, arms)
    dosing = _section(root, "dosing")
    grams_per_kg_per_week = _field(dosing, "dosing", "grams_per_kg_per_week", _positive_decimal)
    visits = _section(root, "visits")
    visit_window_days = _field(visits, "visits", "window_days", _non_negative)
    schedule = _parse_visits(visits)
    audit = _section(root, "audit", optional=True)
    origin = _matching(AUDIT_ORIGIN, "printable ASCII without whitespace")
    audit_origin = _field(audit, "audit", "origin", origin, default=f"sealroom/{trial_id}")
    unblinding = _section(root, "unblinding", optional=True)
    reasons, detail_required = _parse_unblinding(unblinding)
    supply = _parse_supply(_section(root, "supply", optional=True))

    return TrialDefinition(
        id=trial_id,
        title=title,
        registry_id=registry_id,
        sponsor_protocol=sponsor_protocol,
        arms=arms,
        factors=factors,
        block_sizes=block_sizes,
        slots_per_stratum=slots_per_stratum,
        screening_window_days=screening_window_days,
        screening_number_pattern=number_pattern,
        eligibility_fields=eligibility_fields,
        eligibility_rules=eligibility_rules,
        kit_types=kit_types,
        grams_per_kit=grams_per_kit,
        do_not_dispense_days=do_not_dispense_days,
        grams_per_kg_per_week=grams_per_kg_per_week,
        visits=schedule,
        visit_window_days=visit_window_days,
        audit_origin=audit_origin,
        source_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        unblinding_reasons=reasons,
        unblinding_detail_required=detail_required,
        target_participants=target,
        supply=supply,
    )


def _parse_levels(table: Mapping[str, Any], path: str, default: SupplyLevels) -> SupplyLevels:
    trigger = _field(table, path, "trigger", _non_negative, default=default.trigger)
    target = _field(table, path, "target", _non_negative, default=default.target)
    if target < trigger or (trigger > 0 and target == 0):
        raise TrialDefinitionError(
            _join(path, "target"), f"must be at least the trigger level ({trigger}) and above 0"
        )
    return SupplyLevels(trigger=trigger, target=target)


def _parse_supply(supply: Mapping[str, Any]) -> SupplyPlan:
    default = _parse_levels(supply, "supply", SupplyLevels())
    sites = _field(supply, "supply", "sites", _site_table, default={})
    return SupplyPlan(default=default, sites=_parse_site_levels(sites, default))


def _site_table(value: object, path: str) -> dict:
    # Keyed by site id: any key, each checked by _parse_site_levels.
    if not isinstance(value, dict):
        raise TrialDefinitionError(path, f"expected a table, got {_toml_type(value)}")
    return value


def _parse_site_levels(
    sites: Mapping[str, Any], default: SupplyLevels
) -> tuple[tuple[str, SupplyLevels], ...]:
    levels = []
    for site_id, entry in sites.items():
        path = f"supply.sites.{site_id}"
        if not SITE_ID.fullmatch(site_id):
            raise TrialDefinitionError(path, "not a site id (letters, digits, '-', at most 16)")
        table = _table(entry, path, ("trigger", "target"))
        levels.append((site_id, _parse_levels(table, path, default)))
    return tuple(levels)


def _parse_unblinding(unblinding: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    reason = _matching(REASON_ID, "lower-case letters, digits and '_', at most 32")
    listed = _field(unblinding, "unblinding", "reasons", _array, default=None)
    if listed is None:
        listed = list(DEFAULT_UNBLINDING_REASONS)
    if not listed:
        raise TrialDefinitionError("unblinding.reasons", "at least one reason is needed")
    reasons = tuple(
        reason(value, f"unblinding.reasons[{index}]") for index, value in enumerate(listed)
    )
    _require_unique("unblinding.reasons", None, reasons, "reason")
    default = tuple(r for r in ("other",) if r in reasons)
    detail_required = tuple(
        _field(unblinding, "unblinding", "detail_required_for", _array, default=default)
    )
    for index, value in enumerate(detail_required):
        if value not in reasons:
            raise TrialDefinitionError(
                f"unblinding.detail_required_for[{index}]", f"{value!r} is not one of the reasons"
            )
    return reasons, detail_required


# Keys each table may hold; anything else is refused by name, so a typo cannot pass silently.
_ARM_KEYS = ("id", "label", "ratio")
_FACTOR_KEYS = ("id", "levels", "source")
_FIELD_KEYS = ("id", "type", "minimum", "maximum", "label")
_CONDITION_KEYS = ("field", "op", "value")
_RULE_KEYS = ("id", "text", *_CONDITION_KEYS, *COMBINATIONS)
_KIT_TYPE_KEYS = ("arm", "description", "grams_igg")
_VISIT_KEYS = ("id", "week", "dispenses_weeks")
_SECTION_KEYS = {
    "trial": ("id", "title", "registry_id", "sponsor_protocol", "target_participants"),
    "arms": _ARM_KEYS,  # an array of tables, each with these keys
    "stratification": ("factors",),
    "randomisation": ("block_sizes", "slots_per_stratum"),
    "screening": ("window_days", "number_pattern"),
    "eligibility": ("fields", "rules"),
    "kits": ("grams_per_kit", "do_not_dispense_days", "types"),
    "dosing": ("grams_per_kg_per_week",),
    "visits": ("window_days", "schedule"),
    "audit": ("origin",),
    "unblinding": ("reasons", "detail_required_for"),
    "supply": ("trigger", "target", "sites"),
}
_REQUIRED: Any = object()


def _parse_arms(root: Mapping[str, Any]) -> tuple[Arm, ...]:
    entries = _tables(root, "", "arms", _ARM_KEYS)
    if len(entries) < 2:
        raise TrialDefinitionError("arms", f"a trial needs at least 2 arms, got {len(entries)}")
    arms = tuple(
        Arm(
            id=_field(entry, path, "id", _identifier),
            label=_field(entry, path, "label", _text),
            ratio=_field(entry, path, "ratio", _positive),
        )
        for path, entry in entries
    )
    _require_unique("arms", "id", [arm.id for arm in arms], "arm id")
    return arms


def _parse_factors(root: Mapping[str, Any]) -> tuple[Factor, ...]:
    stratification = _section(root, "stratification")
    entries = _tables(stratification, "stratification", "factors", _FACTOR_KEYS)
    if not entries:
        raise TrialDefinitionError("stratification.factors", "declare at least one factor")
    factors = []
    for path, entry in entries:
        factor_id = _field(entry, path, "id", _identifier)
        levels = tuple(
            _identifier(level, f"{path}.levels[{index}]")
            for index, level in enumerate(_field(entry, path, "levels", _array))
        )
        if not levels:
            raise TrialDefinitionError(f"{path}.levels", "declare at least one level")
        _require_unique(f"{path}.levels", None, levels, "level")
        factors.append(
            Factor(
                id=factor_id,
                levels=levels,
                source=_field(entry, path, "source", _one_of(FACTOR_SOURCES)),
            )
        )
    _require_unique("stratification.factors", "id", [factor.id for factor in factors], "factor id")
    return tuple(factors)


def _parse_block_sizes(randomisation: Mapping[str, Any], arms: tuple[Arm, ...]) -> tuple[int, ...]:
    path = "randomisation.block_sizes"
    raw = _field(randomisation, "randomisation", "block_sizes", _array)
    if not raw:
        raise TrialDefinitionError(path, "declare at least one block size")
    sizes = tuple(_positive(size, f"{path}[{index}]") for index, size in enumerate(raw))
    ratio_sum = sum(arm.ratio for arm in arms)
    for index, size in enumerate(sizes):
        if size % ratio_sum:
            raise TrialDefinitionError(
                f"{path}[{index}]",
                f"{size} is not a multiple of the sum of the arms' ratios ({ratio_sum})",
            )
    # A repeated size would silently make that size more likely: say so by refusing it.
    _require_unique(path, None, sizes, "block size")
    return sizes


def _parse_eligibility_fields(eligibility: Mapping[str, Any]) -> tuple[EligibilityField, ...]:
    fields = []
    for path, entry in _tables(eligibility, "eligibility", "fields", _FIELD_KEYS, default=[]):
        field_id = _field(entry, path, "id", _identifier)
        field_type = _field(entry, path, "type", _one_of(FIELD_TYPES))
        bound = {"integer": _integer_bound, "decimal": _decimal, "boolean": _no_bound}[field_type]
        minimum = _field(entry, path, "minimum", bound, default=None)
        maximum = _field(entry, path, "maximum", bound, default=None)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise TrialDefinitionError(
                f"{path}.maximum", f"{maximum} is less than the minimum ({minimum})"
            )
        fields.append(
            EligibilityField(
                id=field_id,
                type=field_type,
                minimum=minimum,
                maximum=maximum,
                label=_field(entry, path, "label", _text),
            )
        )
    _require_unique("eligibility.fields", "id", [field.id for field in fields], "field id")
    return tuple(fields)


def _integer_bound(value: object, path: str) -> Decimal:
    return Decimal(_integer(value, path))


def _no_bound(value: object, path: str) -> Decimal:
    raise TrialDefinitionError(path, "bounds apply only to integer and decimal fields")


def _parse_eligibility_rules(
    eligibility: Mapping[str, Any], fields: tuple[EligibilityField, ...]
) -> tuple[EligibilityRule, ...]:
    field_types = {field.id: field.type for field in fields}
    rules = []
    for path, entry in _tables(eligibility, "eligibility", "rules", _RULE_KEYS, default=[]):
        rule_id = _field(entry, path, "id", _rule_id)
        text = _field(entry, path, "text", _text)
        forms = [key for key in ("field", *COMBINATIONS) if key in entry]
        if len(forms) != 1:
            raise TrialDefinitionError(
                path,
                "give either field/op/value (one condition) or one of all = [...], any = [...]",
            )
        if forms[0] == "field":
            combine = "all"
            conditions: tuple[Condition, ...] = (_parse_condition(entry, path, field_types),)
        else:
            combine = forms[0]
            for key in _CONDITION_KEYS:
                if key in entry:
                    raise TrialDefinitionError(f"{path}.{key}", f"not allowed beside {combine!r}")
            items = _field(entry, path, combine, _array)
            if not items:
                raise TrialDefinitionError(f"{path}.{combine}", "list at least one condition")
            conditions = tuple(
                _parse_condition(
                    _table(item, f"{path}.{combine}[{index}]", _CONDITION_KEYS),
                    f"{path}.{combine}[{index}]",
                    field_types,
                )
                for index, item in enumerate(items)
            )
        rules.append(
            EligibilityRule(
                id=rule_id,
                text=text,
                combine=combine,
                conditions=conditions,
            )
        )
    _require_unique("eligibility.rules", "id", [rule.id for rule in rules], "rule id")
    return tuple(rules)


def _parse_condition(
    entry: Mapping[str, Any], path: str, field_types: Mapping[str, str]
) -> Condition:
    field_id = _field(entry, path, "field", _text)
    if field_id not in field_types:
        raise TrialDefinitionError(
            f"{path}.field", f"{field_id!r} is not a declared eligibility field"
        )
    field_type = field_types[field_id]
    op = _field(entry, path, "op", _one_of(OPERATORS))
    value: int | Decimal | bool
    if field_type == "boolean":
        value = _field(entry, path, "value", _boolean)
        if op not in BOOLEAN_OPERATORS:
            raise TrialDefinitionError(
                f"{path}.op", f"{op!r} does not apply to boolean field {field_id!r}; use == or !="
            )
    elif field_type == "integer":
        value = _field(entry, path, "value", _integer)
    else:
        value = _field(entry, path, "value", _decimal)
    return Condition(field=field_id, op=op, value=value)


def _parse_kit_types(kits: Mapping[str, Any], arms: tuple[Arm, ...]) -> tuple[KitType, ...]:
    arm_ids = [arm.id for arm in arms]
    kit_types = []
    for path, entry in _tables(kits, "kits", "types", _KIT_TYPE_KEYS):
        arm_id = _field(entry, path, "arm", _text)
        if arm_id not in arm_ids:
            raise TrialDefinitionError(f"{path}.arm", f"{arm_id!r} is not a declared arm")
        kit_types.append(
            KitType(
                arm=arm_id,
                description=_field(entry, path, "description", _text),
                grams_igg=_field(entry, path, "grams_igg", _non_negative_decimal),
            )
        )
    _require_unique(
        "kits.types", "arm", [kit_type.arm for kit_type in kit_types], "kit type for arm"
    )
    for arm_id in arm_ids:
        if arm_id not in {kit_type.arm for kit_type in kit_types}:
            raise TrialDefinitionError("kits.types", f"no kit type for arm {arm_id!r}")
    return tuple(kit_types)


def _parse_visits(visits: Mapping[str, Any]) -> tuple[Visit, ...]:
    entries = _tables(visits, "visits", "schedule", _VISIT_KEYS)
    if not entries:
        raise TrialDefinitionError("visits.schedule", "declare at least one visit")
    schedule = tuple(
        Visit(
            id=_field(entry, path, "id", _identifier),
            week=_field(entry, path, "week", _positive),
            dispenses_weeks=_field(entry, path, "dispenses_weeks", _non_negative),
        )
        for path, entry in entries
    )
    _require_unique("visits.schedule", "id", [visit.id for visit in schedule], "visit id")
    _require_unique("visits.schedule", "week", [visit.week for visit in schedule], "week")
    return schedule


#: The longest site id (URS: 1 to 16 of A-Z a-z 0-9 -), for checking a pattern's length.
_LONGEST_SITE = "X" * 16


def screening_number_for(pattern: str, site: str, n: int) -> str:
    """The ``n``-th screening number (from 1) of ``site`` under a validated pattern."""
    return pattern.format(site=site, n=n)


def _number_pattern(value: object, path: str) -> str:
    """A screening-number pattern: ``{site}-`` first, then literal text and one ``{n...}``."""
    pattern = _text(value, path)
    if not pattern.startswith("{site}-"):
        raise TrialDefinitionError(
            path, f"{pattern!r} must begin with '{{site}}-', so that numbers begin with the site id"
        )
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise TrialDefinitionError(path, f"{pattern!r} is not a format string: {exc}") from None
    names = [name for _, name, _, _ in parts if name is not None]
    if sorted(names) != ["n", "site"]:
        raise TrialDefinitionError(
            path, f"{pattern!r} must use the fields {{site}} and {{n}} once each, and no other"
        )
    if any(conversion for _, name, _, conversion in parts if name is not None) or any(
        spec for _, name, spec, _ in parts if name == "site"
    ):
        raise TrialDefinitionError(path, f"{pattern!r}: write {{site}} plainly, {{n}} or {{n:...}}")
    try:
        first = screening_number_for(pattern, _LONGEST_SITE, 1)
        later = [screening_number_for(pattern, "1", n) for n in (9999, 10**6)]
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # e.g. {n:s}, {n:{width}}
        raise TrialDefinitionError(path, f"{pattern!r}: not a format for a number: {exc}") from None
    # A site with the longest id must get valid numbers, and the characters must stay valid
    # as n grows (a thousands separator would not).
    if not SCREENING_NUMBER.fullmatch(first):
        raise TrialDefinitionError(
            path,
            f"{pattern!r} gives {first!r} for a 16-character site id: screening numbers are "
            "1 to 32 of A-Z a-z 0-9 -",
        )
    for number in later:
        if not SCREENING_NUMBER.fullmatch(number):
            raise TrialDefinitionError(
                path, f"{pattern!r} gives {number!r}: screening numbers are of A-Z a-z 0-9 -"
            )
    return pattern


# Reading tables and values. Every reader takes the value and its dotted path, so each error
# can name the exact key.


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _section(root: Mapping[str, Any], key: str, *, optional: bool = False) -> Mapping[str, Any]:
    if optional and key not in root:
        return {}
    return _field(root, "", key, lambda value, path: _table(value, path, _SECTION_KEYS[key]))


def _table(value: object, path: str, allowed: Mapping[str, Any] | tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise TrialDefinitionError(path, f"expected a table, got {_toml_type(value)}")
    for key in value:
        if key not in allowed:
            expected = ", ".join(allowed)
            raise TrialDefinitionError(
                _join(path, key), f"unknown key (expected one of: {expected})"
            )
    return value


def _tables(
    table: Mapping[str, Any],
    path: str,
    key: str,
    allowed: tuple[str, ...],
    *,
    default: Any = _REQUIRED,
) -> list[tuple[str, dict]]:
    """An array of tables, each with its own path (``arms[0]``), checked for unknown keys."""
    items = _field(table, path, key, _array, default=default)
    array_path = _join(path, key)
    return [
        (f"{array_path}[{index}]", _table(item, f"{array_path}[{index}]", allowed))
        for index, item in enumerate(items)
    ]


def _field(
    table: Mapping[str, Any],
    path: str,
    key: str,
    read: Callable[[object, str], T],
    *,
    default: Any = _REQUIRED,
) -> T:
    key_path = _join(path, key)
    if key not in table:
        if default is _REQUIRED:
            raise TrialDefinitionError(key_path, "missing")
        return default
    return read(table[key], key_path)


def _require_unique(path: str, key: str | None, values: Sequence[object], what: str) -> None:
    seen: dict[object, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            where = f"{path}[{index}]" + (f".{key}" if key else "")
            raise TrialDefinitionError(
                where, f"duplicate {what} {value!r} (first at index {seen[value]})"
            )
        seen[value] = index


def _toml_type(value: object) -> str:
    names: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),  # before int: bool is a subclass of int
        (int, "an integer"),
        (Decimal, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    )
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"  # TOML dates and times


def _array(value: object, path: str) -> list:
    if not isinstance(value, list):
        raise TrialDefinitionError(path, f"expected an array, got {_toml_type(value)}")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise TrialDefinitionError(path, f"expected a string, got {_toml_type(value)}")
    if not value.strip():
        raise TrialDefinitionError(path, "must not be empty")
    return value


def _matching(pattern: re.Pattern[str], described: str) -> Callable[[object, str], str]:
    def read(value: object, path: str) -> str:
        text = _text(value, path)
        if not pattern.fullmatch(text):
            raise TrialDefinitionError(path, f"{text!r} is not valid ({described})")
        return text

    return read


_identifier = _matching(IDENTIFIER, "a lowercase letter, then up to 31 of a-z, 0-9, '_'")
_rule_id = _matching(RULE_ID, "a letter, then up to 31 letters, digits or '_'")


def _one_of(choices: tuple[str, ...]) -> Callable[[object, str], str]:
    def read(value: object, path: str) -> str:
        text = _text(value, path)
        if text not in choices:
            expected = ", ".join(repr(choice) for choice in choices)
            raise TrialDefinitionError(path, f"{text!r} is not one of {expected}")
        return text

    return read


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise TrialDefinitionError(path, f"expected a boolean, got {_toml_type(value)}")
    return value


def _integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrialDefinitionError(path, f"expected an integer, got {_toml_type(value)}")
    return value


def _positive(value: object, path: str) -> int:
    number = _integer(value, path)
    if number < 1:
        raise TrialDefinitionError(path, f"must be a positive integer, got {number}")
    return number


def _non_negative(value: object, path: str) -> int:
    number = _integer(value, path)
    if number < 0:
        raise TrialDefinitionError(path, f"must not be negative, got {number}")
    return number


def _decimal(value: object, path: str) -> Decimal:
    """A TOML float (already a Decimal: see parse_trial), integer or decimal string."""
    if isinstance(value, bool):
        raise TrialDefinitionError(path, "expected a number, got a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise TrialDefinitionError(path, f"{value!r} is not a decimal number")
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise TrialDefinitionError(path, f"expected a number, got {_toml_type(value)}")
    if not value.is_finite():
        raise TrialDefinitionError(path, f"must be a finite number, got {value}")
    return value


# Plain decimal notation only: Decimal() alone would also take "NaN", "1e3" and "  1 ".
_DECIMAL_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def _positive_decimal(value: object, path: str) -> Decimal:
    number = _decimal(value, path)
    if number <= 0:
        raise TrialDefinitionError(path, f"must be greater than 0, got {number}")
    return number


def _non_negative_decimal(value: object, path: str) -> Decimal:
    number = _decimal(value, path)
    if number < 0:
        raise TrialDefinitionError(path, f"must not be negative, got {number}")
    return number
