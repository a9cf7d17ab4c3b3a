"""Reports and the allocation export (R-REP-1, R-REP-2, R-REP-5; URS §8).

* :func:`enrollment_report` (sponsor, admin, statistician) is blinded: it is built from
  participants' statuses, dates, sites, strata and audited refusals, and never opens a seal,
  so nothing in it can depend on an arm (tests relabel every arm and compare).
* :func:`balance_report` (statistician) counts randomised participants per stratum and arm.
* :func:`export_allocations` (statistician) is URS §8's ``GET /allocations``: every
  randomised participant with its arm id, plus its corrections and unblindings. It is an
  export: one ``export.created`` entry (who, what, how many rows); a refusal is one
  ``export.refused`` entry.

The rows the reports count come from one loader (:func:`participant_facts`), so that the
enrollment report, the balance report, the pictures and the CDISC export count the same
participants the same way.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.entry import format_time
from randomizer.domain.participants import DISCONTINUED, WITHDRAWN
from randomizer.models import AuditEntry, Kit, Participant, Site, StratumCorrection, Unblinding
from randomizer.models import Stratum as StratumRow
from randomizer.roles import READ_ALLOCATIONS, REPORT_BALANCE, REPORT_ENROLLMENT, Actor
from randomizer.services.context import TrialContext
from randomizer.services.participants import participant_arm
from randomizer.services.refusals import refusals_audited

#: The counts of every row of the enrollment report, in this order (also the CSV's columns).
COUNTS = ("screened", "screen_failed", "randomized", "withdrawn", "discontinued", "unblinded")
#: Refusal reasons that make a participant who was never randomised a screen failure.
SCREEN_FAILURE_REASONS = frozenset({"ineligible", "screening-window"})
#: The action a refused export is recorded as (as the list export's refusals).
EXPORT_REFUSED = "export.refused"
EXPORT_CREATED = "export.created"
_STATUS_ACTIONS = {"participant.withdrawn": WITHDRAWN, "participant.discontinued": DISCONTINUED}
_REFUSED = "participant.randomization_refused"


@dataclass
class ParticipantFacts:
    """What the reports know of one participant: never its arm (that is unsealed apart)."""

    participant: Participant
    site: str
    stratum_key: str  # of randomisation, or what its site and screening answers give
    screened_on: date
    randomized_at: datetime | None
    screen_failed_at: datetime | None = None
    failed_rules: tuple[str, ...] = ()
    outside_window: bool = False
    withdrawn_at: datetime | None = None
    discontinued_at: datetime | None = None
    unblinded_at: datetime | None = None
    corrected_stratum: str | None = None
    kits: list[str] = field(default_factory=list)
    unblindings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def randomized(self) -> bool:
        return self.randomized_at is not None


def _entry_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def participant_facts(session: Session, ctx: TrialContext) -> list[ParticipantFacts]:
    """Every participant with the events the reports count, by screening number.

    The same statements run whatever the arms: no seal is opened here.
    """
    definition = ctx.definition
    sites = {site.id: site for site in session.scalars(select(Site))}
    facts: dict[str, ParticipantFacts] = {}
    by_id: dict[str, ParticipantFacts] = {}
    for participant in session.scalars(select(Participant).order_by(Participant.screening_number)):
        if participant.stratum_number is not None:
            key = definition.stratum(participant.stratum_number).key
        else:
            levels = {**sites[participant.site_id].attributes, **participant.screening_strata}
            key = definition.stratum_for(levels).key
        fact = ParticipantFacts(
            participant=participant,
            site=participant.site_id,
            stratum_key=key,
            screened_on=participant.screened_on,
            randomized_at=participant.randomized_at,
        )
        facts[participant.screening_number] = fact
        by_id[participant.id] = fact
    entries = session.scalars(
        select(AuditEntry.canonical)
        .where(AuditEntry.action.in_([_REFUSED, *_STATUS_ACTIONS]))
        .order_by(AuditEntry.seq)
    )
    for canonical in entries:
        entry = json.loads(canonical)
        fact = facts.get(entry["subject"] or "")
        if fact is None:
            continue
        if entry["action"] in _STATUS_ACTIONS:
            status = _STATUS_ACTIONS[entry["action"]]
            attribute = "withdrawn_at" if status == WITHDRAWN else "discontinued_at"
            if getattr(fact, attribute) is None:
                setattr(fact, attribute, _entry_time(entry["time"]))
            continue
        reason = entry["data"].get("reason")
        if fact.randomized or reason not in SCREEN_FAILURE_REASONS:
            continue
        if fact.screen_failed_at is None:
            fact.screen_failed_at = _entry_time(entry["time"])
        # The latest refusal says why the participant failed screening.
        fact.failed_rules = tuple(entry["data"].get("failed_rules", ()))
        fact.outside_window = reason == "screening-window"
    for unblinding in session.scalars(select(Unblinding).order_by(Unblinding.audit_seq)):
        fact = by_id[unblinding.participant_id]
        if fact.unblinded_at is None:
            fact.unblinded_at = unblinding.unblinded_at
        fact.unblindings.append(
            {
                "by": unblinding.user_name,
                "role": unblinding.role,
                "at": unblinding.unblinded_at,
                "reason": unblinding.reason,
                "event_reference": unblinding.event_reference,
            }
        )
    for correction in session.scalars(
        select(StratumCorrection).order_by(StratumCorrection.corrected_at)
    ):
        by_id[correction.participant_id].corrected_stratum = definition.stratum(
            correction.stratum_number
        ).key
    for participant_id, kit_number in session.execute(
        select(Kit.participant_id, Kit.kit_number)
        .where(Kit.participant_id.is_not(None))
        .order_by(Kit.kit_number)
    ):
        by_id[participant_id].kits.append(kit_number)
    return list(facts.values())


# Enrollment (blinded) -------------------------------------------------------------------------


def _month(moment: date | datetime | None) -> str | None:
    return None if moment is None else f"{moment.year:04d}-{moment.month:02d}"


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


def _add(counts: dict[str, int], fact: ParticipantFacts) -> None:
    counts["screened"] += 1
    counts["screen_failed"] += fact.screen_failed_at is not None
    counts["randomized"] += fact.randomized
    counts["withdrawn"] += fact.withdrawn_at is not None
    counts["discontinued"] += fact.discontinued_at is not None
    counts["unblinded"] += fact.unblinded_at is not None


def enrollment_report(session: Session, ctx: TrialContext, actor: Actor) -> dict[str, Any]:
    """R-REP-1: screened, screen failures, randomised, withdrawn, discontinued and unblinded
    participants in total, per site, per stratum and per month; screen failures by rule.

    Blinded: it names the trial by id only (the title may name the product) and is built
    from nothing that depends on an arm. Every site and stratum has its row, counted or
    not, in a fixed order, so that neither the rows nor their order say anything.
    """
    REPORT_ENROLLMENT.check(actor)
    definition = ctx.definition
    facts = participant_facts(session, ctx)
    totals = _zero()
    sites = {site: _zero() for site in session.scalars(select(Site.id).order_by(Site.id))}
    strata = {stratum.key: _zero() for stratum in definition.strata()}
    months: dict[str, dict[str, int]] = {}
    rules = Counter({rule.id: 0 for rule in definition.eligibility_rules})
    outside_window = 0
    for fact in facts:
        _add(totals, fact)
        _add(sites[fact.site], fact)
        _add(strata[fact.stratum_key], fact)
        # Each event counts in the month it happened.
        for name, moment in (
            ("screened", fact.screened_on),
            ("screen_failed", fact.screen_failed_at),
            ("randomized", fact.randomized_at),
            ("withdrawn", fact.withdrawn_at),
            ("discontinued", fact.discontinued_at),
            ("unblinded", fact.unblinded_at),
        ):
            month = _month(moment)
            if month is not None:
                months.setdefault(month, _zero())[name] += 1
        if fact.screen_failed_at is not None:
            rules.update(fact.failed_rules)
            outside_window += fact.outside_window
    return {
        "trial": definition.id,
        "target": definition.target_participants,
        "totals": totals,
        "sites": [{"site": site, **counts} for site, counts in sites.items()],
        "strata": [{"stratum": key, **counts} for key, counts in strata.items()],
        "months": [{"month": month, **months[month]} for month in sorted(months)],
        "screen_failures": {
            "by_rule": [{"rule": rule, "participants": n} for rule, n in rules.items()],
            "outside_window": outside_window,
        },
    }


def randomisations_by_site(session: Session, ctx: TrialContext, actor: Actor) -> dict[str, Any]:
    """Blinded: each site's randomisation times in order, for the cumulative enrollment
    picture (R-REP-4), with the trial's target."""
    REPORT_ENROLLMENT.check(actor)
    facts = participant_facts(session, ctx)
    sites: dict[str, list[datetime]] = {
        site: [] for site in session.scalars(select(Site.id).order_by(Site.id))
    }
    for fact in facts:
        if fact.randomized_at is not None:
            sites[fact.site].append(fact.randomized_at)
    return {
        "trial": ctx.definition.id,
        "target": ctx.definition.target_participants,
        "sites": {site: sorted(times) for site, times in sites.items()},
    }


def enrollment_csv_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The enrollment report as one table: ``group,name`` then the counts; screen failures
    by rule as ``screen_failed_rule`` rows (their count in ``screen_failed``)."""
    rows: list[list[Any]] = [["total", report["trial"], *report["totals"].values()]]
    for group, key in (("site", "sites"), ("stratum", "strata"), ("month", "months")):
        for item in report[key]:
            rows.append([group, item[group], *(item[name] for name in COUNTS)])
    failures = report["screen_failures"]
    blank = [""] * (len(COUNTS) - 2)
    for item in failures["by_rule"]:
        rows.append(["screen_failed_rule", item["rule"], "", item["participants"], *blank])
    rows.append(["screen_failed_rule", "window", "", failures["outside_window"], *blank])
    return rows


def balance_csv_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The balance report as one table: a row per stratum, then ``overall``."""
    arms = [arm["id"] for arm in report["arms"]]
    header = ["stratum_number", "stratum", *arms, "imbalance", "slots_used", "slots_left"]
    header.append("warning")
    rows: list[list[Any]] = []
    for item in report["strata"]:
        slots = item["slots"]
        rows.append(
            [
                item["number"],
                item["stratum"],
                *(item["counts"][arm] for arm in arms),
                item["imbalance"],
                slots["used"],
                slots["left"],
                item["warning"] or "",
            ]
        )
    overall = report["overall"]
    rows.append(["", "overall", *(overall["counts"][arm] for arm in arms), overall["imbalance"]])
    rows[-1].extend(["", "", ""])
    return header, rows


# Balance (unblinded) --------------------------------------------------------------------------


def imbalance(counts: dict[str, int], ratios: dict[str, int]) -> int | float:
    """The largest difference between two arms' counts, each divided by its ratio: for 1:1,
    ``|n_A - n_B|``. An integer when whole, else rounded to three decimals."""
    scaled = [Fraction(counts[arm], ratio) for arm, ratio in ratios.items()]
    spread = max(scaled) - min(scaled)
    return int(spread) if spread.denominator == 1 else round(float(spread), 3)


def balance_report(session: Session, ctx: TrialContext, actor: Actor) -> dict[str, Any]:
    """R-REP-2: randomised participants per stratum and arm (by the stratum of
    randomisation, which never changes), the imbalance, and each list's slots used and left.

    A stratum gets a warning when, at the current rate (its share of the randomisations so
    far, applied to those the target still needs), its list will run out before the target
    is reached, or when it has run out already.
    """
    REPORT_BALANCE.check(actor)
    definition = ctx.definition
    ratios = {arm.id: arm.ratio for arm in definition.arms}
    stored = {row.number: row for row in session.scalars(select(StratumRow))}
    per_stratum = {stratum.key: dict.fromkeys(ratios, 0) for stratum in definition.strata()}
    overall = dict.fromkeys(ratios, 0)
    for fact in participant_facts(session, ctx):
        if fact.participant.sealed_arm is None:
            continue
        arm = participant_arm(ctx, fact.participant)
        per_stratum[fact.stratum_key][arm] += 1
        overall[arm] += 1
    randomised = sum(overall.values())
    still_needed = max(0, (definition.target_participants or 0) - randomised)
    strata = []
    for stratum in definition.strata():
        row = stored[stratum.number]
        used, size = row.next_position - 1, row.size
        left = size - used
        warning = None
        if left == 0:
            warning = "The list is used up: randomisation in this stratum is refused."
        elif randomised and used and used * still_needed / randomised > left:
            expected = used * still_needed / randomised
            warning = (
                f"At the current rate this stratum needs about {expected:.0f} more slots "
                f"before the target of {definition.target_participants} is reached; "
                f"{left} are left."
            )
        counts = per_stratum[stratum.key]
        strata.append(
            {
                "number": stratum.number,
                "stratum": stratum.key,
                "counts": counts,
                "randomized": sum(counts.values()),
                "imbalance": imbalance(counts, ratios),
                "slots": {"size": size, "used": used, "left": left},
                "warning": warning,
            }
        )
    return {
        "trial": definition.id,
        "target": definition.target_participants,
        "arms": [{"id": arm.id, "label": arm.label, "ratio": arm.ratio} for arm in definition.arms],
        "overall": {
            "counts": overall,
            "randomized": randomised,
            "imbalance": imbalance(overall, ratios),
        },
        "strata": strata,
    }


# The allocation export (unblinded, audited) ---------------------------------------------------


def audited_export(
    session: Session, ctx: TrialContext, actor: Actor, kind: str, rows: Sequence[Any], **data: Any
) -> None:
    """Record one export: who (the entry's actor), what (``kind``, ``data``), how many rows."""
    ctx.audit.append(
        session, actor, EXPORT_CREATED, ctx.definition.id, {"kind": kind, "rows": len(rows), **data}
    )


def export_refusals_audited(
    session: Session, ctx: TrialContext, actor: Actor, kind: str
) -> AbstractContextManager[None]:
    """The block that makes an export of ``kind``: a refusal from it (a blinded role, a bad
    format) is audited as ``export.refused`` on the trial."""
    return refusals_audited(
        session,
        ctx,
        actor,
        EXPORT_REFUSED,
        ctx.definition.id,
        site=actor.site,
        data={"kind": kind},
    )


def allocation_rows(session: Session, ctx: TrialContext) -> list[dict[str, Any]]:
    """Every randomised participant (URS §8's fields, then corrections and unblindings), in
    randomisation order; unaudited: callers that hand the rows out record the export."""
    rows = []
    facts = [fact for fact in participant_facts(session, ctx) if fact.randomized]
    facts.sort(key=lambda fact: (fact.randomized_at, fact.participant.randomization_number))
    for fact in facts:
        participant = fact.participant
        rows.append(
            {
                "screening_number": participant.screening_number,
                "site": fact.site,
                "stratum": fact.stratum_key,
                "randomization_number": participant.randomization_number,
                "arm": participant_arm(ctx, participant),
                "randomized_at": fact.randomized_at,
                "kits": list(fact.kits),
                "status": participant.status,
                "corrected_stratum": fact.corrected_stratum,
                "unblinded": participant.unblinded,
                "unblindings": fact.unblindings,
            }
        )
    return rows


def export_allocations(session: Session, ctx: TrialContext, actor: Actor) -> list[dict[str, Any]]:
    """URS §8 ``GET /allocations`` (R-REP-2, R-REP-5): audited; refused to every blinded role
    (that refusal audited too)."""
    with export_refusals_audited(session, ctx, actor, "allocations"):
        READ_ALLOCATIONS.check(actor)
        rows = allocation_rows(session, ctx)
        audited_export(session, ctx, actor, "allocations", rows)
        return rows


ALLOCATION_CSV_COLUMNS = (
    "screening_number",
    "site",
    "stratum",
    "randomization_number",
    "arm",
    "randomized_at",
    "kits",
    "status",
    "corrected_stratum",
    "unblinded",
    "unblinded_at",
)


def allocation_csv_rows(rows: Iterable[dict[str, Any]]) -> list[list[str]]:
    """The allocation rows flattened for CSV: kits space-separated, the first unblinding's
    time, booleans as ``true``/``false``, times as RFC 3339 UTC."""
    flat = []
    for row in rows:
        first = row["unblindings"][0]["at"] if row["unblindings"] else None
        flat.append(
            [
                row["screening_number"],
                row["site"],
                row["stratum"],
                row["randomization_number"],
                row["arm"],
                format_time(row["randomized_at"]),
                " ".join(row["kits"]),
                row["status"],
                row["corrected_stratum"] or "",
                "true" if row["unblinded"] else "false",
                format_time(first) if first else "",
            ]
        )
    return flat


# Report files (the API's non-JSON answers, ``sealroom report``) ------------------------------

#: Each report by name: the report its table and picture are drawn from. ``enrollment``'s
#: picture is the cumulative randomisations; its table the enrollment report's.
REPORTS = ("enrollment", "screen-failures", "balance")
FILE_FORMATS = ("json", "csv", "svg", "png")


def report_data(session: Session, ctx: TrialContext, actor: Actor, name: str) -> dict[str, Any]:
    """The report behind ``name`` (``screen-failures`` is part of the enrollment report)."""
    if name == "balance":
        return balance_report(session, ctx, actor)
    return enrollment_report(session, ctx, actor)


def report_file(
    session: Session, ctx: TrialContext, actor: Actor, name: str, file_format: str
) -> bytes:
    """The report ``name`` as a ``json``, ``csv``, ``svg`` or ``png`` file, checked against
    the actor's permission as the report itself is."""
    from randomizer import pictures, rendering

    if name not in REPORTS or file_format not in FILE_FORMATS:
        raise ValueError(f"unknown report {name!r} or format {file_format!r}")
    if file_format in pictures.FORMATS:
        if name == "enrollment":
            data = randomisations_by_site(session, ctx, actor)
        else:
            data = report_data(session, ctx, actor, name)
        return pictures.PICTURES[name](data, file_format)
    report = report_data(session, ctx, actor, name)
    if file_format == "json":
        return (rendering.render_json(report) + "\n").encode("utf-8")
    if name == "balance":
        header, rows = balance_csv_rows(report)
    else:
        header, rows = ["group", "name", *COUNTS], enrollment_csv_rows(report)
    return csv_bytes(header, rows)


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A CSV file (RFC 4180, UTF-8) of a header and rows."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")
