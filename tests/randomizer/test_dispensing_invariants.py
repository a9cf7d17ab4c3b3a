"""Dispensing's invariants, under random sequences, arm relabelling, concurrency and hostile
input (issue 11: R-DISP, R-KIT-2, R-LIFE, R-BLIND-1, R-BLIND-2, R-NF-1, R-NF-3).

* A hypothesis state machine drives screenings, randomisations, dispensings, damages,
  losses, returns, hand-overs, withdrawals and discontinuations through the real services,
  with a clock that moves into (and past) visit windows, on a site with scarce stock; after
  every step no kit is held by two participants, every allocated kit is of its
  participant's arm, every damaged or lost allocated kit has exactly one replacement, the
  kit counts by status are what the answers say, every refusal left exactly one refusal
  entry and nothing else, and the audit log verifies.
* Arm relabelling: one sequence of API calls, run on two databases made from one seed,
  the second with the two arms swapped in every slot and kit, gives every blinded role the
  same answers byte for byte (kit numbers, random by construction, mapped by order of
  first appearance; sealed values and hashes by their length).
* Several gunicorn workers dispensing at one site at once, on PostgreSQL, with scarce
  stock: 201 or 409 insufficient-supply only, no kit given twice.
* Wrong and hostile input: a 4xx problem detail each, nothing changed but exactly one
  refusal entry.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from audit.entry import parse_entry
from audit.verify import verify_log
from keys import SealedArm
from randomizer.db import Database
from randomizer.domain import kits_for_visit
from randomizer.domain.kits import (
    ALLOCATED,
    AVAILABLE,
    DAMAGED,
    IN_DEPOT,
    IN_TRANSIT,
    LOST,
    QUARANTINED,
)
from randomizer.domain.participants import (
    DispenseRequest,
    KitStatusRequest,
    RandomizationRequest,
    ReasonRequest,
    ScreeningRequest,
)
from randomizer.domain.supply import KitGeneration, ReceiptRequest, ShipmentRequest
from randomizer.errors import Problem
from randomizer.models import (
    AuditCheckpoint,
    AuditEntry,
    Kit,
    Participant,
    Shipment,
    Slot,
    Stratum,
    StratumCorrection,
)
from randomizer.roles import SYSTEM, Actor
from randomizer.services import dispensing, lifecycle, participants, shipments
from randomizer.services.context import load_trial_context
from randomizer.services.inputs import Submission
from tests.conftest import BACKENDS, ELIGIBLE, PG_URL, ApiClient, Clock, make_trial_database
from tests.randomizer.served import Server
from tests.randomizer.test_blinding import names_an_arm

SITE = "101"
COORDINATOR = Actor(name="coordinator-101", role="coordinator", site=SITE)
INVESTIGATOR = Actor(name="investigator-101", role="investigator", site=SITE)
PHARMACIST = Actor(name="pharmacist-101", role="pharmacist", site=SITE)
ADMIN = Actor(name="admin", role="admin")
SITE_ACTORS = (COORDINATOR, INVESTIGATOR, PHARMACIST)
TYPED_ELIGIBLE = {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in ELIGIBLE.items()}


# Reading the database ----------------------------------------------------------------------


@dataclass(frozen=True)
class KitRow:
    kit_number: str
    site: str | None
    status: str
    holder: str | None  # the screening number of the participant it is allocated to
    visit: str | None
    replaces: str | None  # the kit number it replaced
    expires_on: date
    arm: str
    shipment: int | None = None
    lot: str = ""


@dataclass(frozen=True)
class World:
    """Everything a dispensing or a kit change may touch, read at one instant."""

    kits: dict[str, KitRow]
    participants: dict[str, tuple[str, str | None]]  # number -> (status, arm)
    log: list[str]
    checkpoints: list[str]
    shipments: dict[int, str]  # id -> status

    def changeable(self) -> tuple[Any, Any, Any]:
        """What a refusal must leave as it was: kits, participants, shipments (not the log)."""
        return self.kits, self.participants, self.shipments


def read_world(db: Database, ctx: Any) -> World:
    with db.reading() as session:
        people = session.execute(
            select(Participant.id, Participant.screening_number, Participant.status)
            .add_columns(Participant.sealed_arm)
            .order_by(Participant.screening_number)
        ).all()
        number_of = {pid: number for pid, number, _, _ in people}
        participants_seen = {
            number: (
                status,
                None
                if sealed is None
                else ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "participant", number),
            )
            for _, number, status, sealed in people
        }
        rows = session.execute(
            select(
                Kit.id,
                Kit.kit_number,
                Kit.site_id,
                Kit.status,
                Kit.participant_id,
                Kit.visit,
                Kit.replaces_kit_id,
                Kit.expires_on,
                Kit.sealed_arm,
                Kit.shipment_id,
                Kit.lot,
            )
        ).all()
        number_of_kit = {row.id: row.kit_number for row in rows}
        kits = {
            row.kit_number: KitRow(
                kit_number=row.kit_number,
                site=row.site_id,
                status=row.status,
                holder=number_of.get(row.participant_id),
                visit=row.visit,
                replaces=number_of_kit.get(row.replaces_kit_id),
                expires_on=row.expires_on,
                arm=ctx.sealer.unseal_arm(
                    SealedArm.from_text(row.sealed_arm), "kit", row.kit_number
                ),
                shipment=row.shipment_id,
                lot=row.lot,
            )
            for row in rows
        }
        sent = dict(session.execute(select(Shipment.id, Shipment.status)).all())
        log = list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))
        checkpoints = list(
            session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size))
        )
    return World(kits, participants_seen, log, checkpoints, sent)


def audit_verifies(world: World, ctx: Any, since: int = 0) -> None:
    """The chain and the tree of every entry, against the stored checkpoints from ``since``
    on (all by default: stored checkpoints are append-only, checked once is enough)."""
    report = verify_log(
        [t.encode() for t in world.log], world.checkpoints[since:], ctx.audit.verifier_key
    )
    assert report.ok, report.problems
    assert report.latest is not None and report.latest.size == len(world.log)


def attempt(db: Database, work: Any) -> tuple[Any, Problem | None]:
    """Run ``work(session)`` in one transaction: (its result, None) or (None, its refusal)."""
    try:
        with db.transaction() as session:
            return work(session), None
    except Problem as refusal:
        return None, refusal


# a. The state machine ------------------------------------------------------------------------

#: Entries the service adds beside an operation's own: a resupply request after an
#: allocation, the kits it found past their expiry (issue 12).
SIDE_ENTRIES = ("shipment.requested", "kit.expired")
OPEN = ("requested", "in_transit")
SHIPMENT_REQUESTED = "requested"
SHIPMENT_IN_TRANSIT = "in_transit"
DEPOT_STATUSES = ("in_depot", "quarantined", "damaged", "lost", "expired")

#: Weights whose week-1 and 4-week kit counts are 2, 3, 4, 5 and 7 (ceil(weight / 20)).
WEIGHTS = (Decimal(30), Decimal("45.5"), Decimal(70), Decimal("100.000"), Decimal("130.5"))
#: Stock per arm at each site: enough for a few participants, then supply runs out.
SCARCE_KITS_PER_ARM = 24
#: Every visit of the bundled schedule: week1 (dispensed at randomisation), week25 (none).
VISITS = ("week1", "week5", "week9", "week13", "week17", "week21", "week25")


@pytest.fixture(scope="module", params=BACKENDS)
def scarce_trial(request, scratch, tmp_path_factory):
    """A demo database of its own whose sites hold few kits; each example rolls back."""
    trial = make_trial_database(
        scratch,
        request.param,
        tmp_path_factory.mktemp(f"scarce-{request.param}"),
        kits_per_arm=SCARCE_KITS_PER_ARM,
    )
    trial.engine = Database(trial.url).engine
    yield trial
    trial.engine.dispose()


class DispensingMachine(RuleBasedStateMachine):
    """Random lifecycles at site 101 through the services; the invariants after each step.

    ``trial`` is set on a subclass by the test. Each run works inside one outer transaction
    that is rolled back at its end (the savepoint pattern of ``tests/conftest.py``).
    """

    trial: Any = None
    #: What happened, over every run (the test checks the runs did reach these outcomes).
    outcomes: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.connection = self.trial.engine.connect()
        self.outer = self.connection.begin()
        self.db = Database(self.trial.url, bind=self.connection)
        self.clock = Clock()
        with self.db.reading() as session:
            ctx = load_trial_context(session, self.trial.settings.keys_dir, {}, clock=self.clock)
        self.ctx = replace(ctx, rng=random.Random(0))
        self.world = read_world(self.db, self.ctx)
        self.initial_total = len(self.world.kits)
        audit_verifies(self.world, self.ctx)
        self.checked = len(self.world.checkpoints)  # checkpoints verified so far
        #: What the answers said: the kit counts by status, who holds which kit.
        self.counts = Counter(kit.status for kit in self.world.kits.values())
        self.holder = {k.kit_number: k.holder for k in self.world.kits.values() if k.holder}
        self.site_kits = sorted(k for k, row in self.world.kits.items() if row.site == SITE)
        self.screened: list[str] = []
        #: Withdrawn or discontinued (kept to a third of the participants).
        self.ended: set[str] = set()
        self.randomized_on: dict[str, date] = {}
        #: Kits per (participant, visit) as dispensed: the count every visit must keep.
        self.given: dict[tuple[str, str], int] = {}
        self.last_refusal: Problem | None = None
        self.previous = self.world
        self.lots: list[str] = []

    def teardown(self) -> None:
        audit_verifies(self.world, self.ctx)  # every checkpoint, once more
        self.outer.rollback()
        self.connection.close()

    # Running one operation and checking what it left --------------------------------------

    def supply(self, world: World) -> int:
        """The fewest dispensable kits site 101 holds of any arm (R-BLIND-2's measure)."""
        cutoff = self.clock.today() + timedelta(days=self.ctx.definition.do_not_dispense_days)
        held = Counter(
            row.arm
            for row in world.kits.values()
            if row.site == SITE and row.status == AVAILABLE and row.expires_on > cutoff
        )
        return min(held[arm.id] for arm in self.ctx.definition.arms)

    def act(
        self,
        work: Any,
        success: str | None,
        refused: str | None,
        needed: int | None = None,
        short: Any = None,
    ) -> Any:
        """Run ``work``; exactly one entry: ``success``, or ``refused`` and nothing changed.

        ``needed``: the kits the operation allocates if it succeeds. It succeeds only if
        the site held that many of every arm, and it is refused for supply only if not.
        ``short(world)``: for a shipment, whether the depot lacked what it needs. Beside an
        allocation's own entry the service may add a resupply request and the kits it
        found expired (:meth:`side_entries`); ``success`` None: only such entries.
        """
        before = self.world
        if needed is not None:
            short = lambda world: self.supply(world) < needed  # noqa: E731
        result, refusal = attempt(self.db, work)
        after = read_world(self.db, self.ctx)
        new = [parse_entry(text.encode()) for text in after.log[len(before.log) :]]
        outcome = (success or "expiry") if refusal is None else f"{refused}: {refusal.type_name}"
        event(outcome)
        self.outcomes[outcome] += 1
        if refusal is None:
            own = [entry["action"] for entry in new if entry["action"] not in SIDE_ENTRIES]
            assert own == ([success] if success else []), own
            if short is not None:
                assert not short(before)
            self.side_entries(before, after, new, allocating=needed is not None)
        else:
            if refusal.type_name == "insufficient-supply":
                assert short is not None and short(before), refusal.detail
            assert refused is not None, f"{success} refused unexpectedly: {refusal.detail}"
            assert [entry["action"] for entry in new] == [refused], refusal.detail
            assert new[0]["data"]["reason"] == refusal.type_name
            assert new[0]["data"]["status"] == refusal.status
            assert after.changeable() == before.changeable(), "a refusal changed something"
        self.previous, self.world, self.last_refusal = before, after, refusal
        return result

    def side_entries(self, before: World, after: World, new: list[Any], allocating: bool) -> None:
        """Expired kits were past their expiry; a resupply request came exactly when an
        allocation left an arm below the trigger and no shipment was open (R-SHIP)."""
        for entry in new:
            if entry["action"] == "kit.expired":
                for kit in entry["data"]["kits"]:
                    row = before.kits[kit]
                    assert row.expires_on < self.clock.today() and row.status != ALLOCATED
                    self.counts[row.status] -= 1
                    self.counts["expired"] += 1
        requested = [entry for entry in new if entry["action"] == "shipment.requested"]
        self.outcomes["shipment.requested"] += len(requested)
        open_before = any(status in OPEN for status in before.shipments.values())
        trigger = self.ctx.definition.supply.levels(SITE).trigger
        due = allocating and not open_before and self.supply(after) < trigger
        assert len(requested) == int(due), (due, requested)

    def depot_supply(self, world: World, arm: str) -> int:
        """Kits of ``arm`` at the depot that would still be dispensable on arrival."""
        cutoff = self.clock.today() + timedelta(days=self.ctx.definition.do_not_dispense_days)
        return sum(
            1
            for row in world.kits.values()
            if row.site is None
            and row.status == IN_DEPOT
            and row.arm == arm
            and row.expires_on > cutoff
        )

    def sent(self, kits: list[str], wanted: dict[str, int], *, chosen: bool = True) -> None:
        """A shipment's kits: from the depot, ``wanted`` of each arm, and (unless a whole lot
        was asked for) the earliest expiry first."""
        before, cutoff = self.previous, self.cutoff()
        for kit in kits:
            row = before.kits[kit]
            assert row.site is None and row.status == IN_DEPOT and row.expires_on > cutoff
        assert Counter(before.kits[k].arm for k in kits) == +Counter(wanted)
        if chosen:
            self.earliest_first(
                before, kits, lambda row: row.site is None and row.status == IN_DEPOT
            )
        self.counts[IN_DEPOT] -= len(kits)
        self.counts[IN_TRANSIT] += len(kits)
        self.site_kits = sorted({*self.site_kits, *kits})

    def cutoff(self) -> date:
        return self.clock.today() + timedelta(days=self.ctx.definition.do_not_dispense_days)

    def earliest_first(self, before: World, kits: list[str], eligible: Any) -> None:
        """R-KIT-3: no eligible kit of the same arm expiring earlier was left behind."""
        cutoff = self.cutoff()
        for arm in {before.kits[k].arm for k in kits}:
            latest = max(before.kits[k].expires_on for k in kits if before.kits[k].arm == arm)
            left = [
                row.kit_number
                for row in before.kits.values()
                if row.arm == arm
                and eligible(row)
                and cutoff < row.expires_on < latest
                and row.kit_number not in kits
            ]
            assert not left, f"kits {left} expire earlier and were left behind"

    def allocated(self, kits: list[str], number: str) -> None:
        before, cutoff = self.previous, self.cutoff()
        for kit in kits:
            assert kit not in self.holder, f"kit {kit} given a second time"
            assert kit in self.site_kits
            # R-KIT-3: never expired, inside the window or quarantined (not available).
            row = before.kits[kit]
            assert row.status == AVAILABLE and row.expires_on > cutoff, row
            self.holder[kit] = number
        self.earliest_first(before, kits, lambda row: row.site == SITE and row.status == AVAILABLE)
        self.counts[AVAILABLE] -= len(kits)
        self.counts[ALLOCATED] += len(kits)

    def pick(self, items: list[str], index: int) -> str:
        return items[index % len(items)]

    # Rules --------------------------------------------------------------------------------

    @initialize(
        enrolment=st.lists(
            st.tuples(st.sampled_from(["yes", "no"]), st.sampled_from(WEIGHTS)),
            min_size=1,
            max_size=3,
        )
    )
    def enrol(self, enrolment: list[tuple[str, Decimal]]) -> None:
        """Start with a lot at the depot, a shipment of it received at site 101 (one kit
        damaged), and a few participants screened and randomised today."""
        self.generate(400, 110)
        self.ship(8, 0, False)
        self.receive(0, 0, DAMAGED)
        for prior_ig, weight in enrolment:
            self.screen(0, prior_ig, 0)
            self.randomize(len(self.screened) - 1, False, weight, COORDINATOR)

    @rule(
        wait=st.sampled_from([0, 0, 1, 2, 5, 9]),
        prior_ig=st.sampled_from(["yes", "no"]),
        days_ago=st.integers(0, 3),
    )
    def screen(self, wait: int, prior_ig: str, days_ago: int) -> None:
        """Let a few days pass, then screen a participant (screened today or a few days ago)."""
        self.clock.advance(days=wait)
        number = f"101-SM-{len(self.screened) + 1}"
        request = ScreeningRequest(
            number, SITE, self.clock.today() - timedelta(days=days_ago), {"prior_ig": prior_ig}
        )
        self.act(
            lambda s: participants.screen_participant(s, self.ctx, COORDINATOR, request),
            "participant.screened",
            None,
        )
        self.screened.append(number)

    @precondition(lambda self: self.screened)
    @rule(
        index=st.integers(0, 10**6),
        fresh=st.sampled_from([True, True, True, False]),
        weight=st.sampled_from(WEIGHTS),
        actor=st.sampled_from([COORDINATOR, INVESTIGATOR, COORDINATOR, PHARMACIST]),
    )
    def randomize(self, index: int, fresh: bool, weight: Decimal, actor: Actor) -> None:
        """Randomise a participant: mostly one screened and not yet randomised."""
        waiting = [n for n in self.screened if n not in self.randomized_on]
        number = self.pick(waiting if fresh and waiting else self.screened, index)
        submission = Submission.of(RandomizationRequest(weight, TYPED_ELIGIBLE))
        needed = kits_for_visit(self.ctx.definition, weight, self.ctx.definition.first_visit())
        result = self.act(
            lambda s: participants.randomize_participant(s, self.ctx, actor, number, submission),
            "participant.randomized",
            "participant.randomization_refused",
            needed,
        )
        if result is not None:
            assert len(result.kits) == needed
            self.allocated(result.kits, number)
            self.randomized_on[number] = result.randomized_at.date()
            self.given[(number, "week1")] = len(result.kits)

    @precondition(lambda self: self.randomized_on)
    @rule(
        index=st.integers(0, 10**6),
        later=st.sampled_from([0, 0, 0, 1]),
        offset=st.sampled_from([0, 0, 1, -2, 3, -3, 4, -4]),
        weight=st.sampled_from(WEIGHTS),
        actor=st.sampled_from([PHARMACIST, COORDINATOR, INVESTIGATOR]),
    )
    def visit_and_dispense(
        self, index: int, later: int, offset: int, weight: Decimal, actor: Actor
    ) -> None:
        """Move the clock (never back) to a day around one of a participant's coming
        dispensing visits (mostly the next; inside its window unless ``offset`` is 4 or -4),
        and dispense that visit (not dispensed yet)."""
        number = self.pick(sorted(self.randomized_on), index)
        randomized_on, definition = self.randomized_on[number], self.ctx.definition
        coming = [
            visit
            for visit in definition.visits[1:]
            if visit.dispenses
            and (number, visit.id) not in self.given
            and randomized_on + timedelta(days=visit.day() + 3) >= self.clock.today()
        ]
        if not coming:
            return
        visit = coming[min(later, len(coming) - 1)]
        target = randomized_on + timedelta(days=visit.day() + offset)
        if target > self.clock.today():
            self.clock.advance(days=(target - self.clock.today()).days)
        self.dispense(number, visit.id, weight, actor)

    @precondition(lambda self: self.randomized_on)
    @rule(
        index=st.integers(0, 10**6),
        visit=st.sampled_from(VISITS),
        weight=st.sampled_from(WEIGHTS),
        actor=st.sampled_from(SITE_ACTORS),
    )
    def dispense_today(self, index: int, visit: str, weight: Decimal, actor: Actor) -> None:
        self.dispense(self.pick(sorted(self.randomized_on), index), visit, weight, actor)

    def dispense(self, number: str, visit: str, weight: Decimal, actor: Actor) -> None:
        submission = Submission.of(DispenseRequest(visit, weight))
        needed = kits_for_visit(self.ctx.definition, weight, self.ctx.definition.visit(visit))
        result = self.act(
            lambda s: dispensing.dispense_kits(s, self.ctx, actor, number, submission),
            "participant.dispensed",
            "participant.dispense_refused",
            needed,
        )
        if number in self.ended:  # R-LIFE: withdrawal and discontinuation end dispensing
            assert self.last_refusal is not None and self.last_refusal.status == 409
        if result is not None:
            assert len(result.kits) == needed  # from weight and visit only
            assert result.visit == visit and result.dispensed_on == self.clock.today()
            self.allocated(result.kits, number)
            self.given[(number, visit)] = len(result.kits)

    @rule(
        index=st.integers(0, 10**6),
        held=st.sampled_from([True, True, True, False]),
        status=st.sampled_from(["dispensed", "damaged", "lost", "returned"]),
        actor=st.sampled_from([PHARMACIST, PHARMACIST, PHARMACIST, COORDINATOR]),
    )
    def change_kit(self, index: int, held: bool, status: str, actor: Actor) -> None:
        """A kit that was given (allocated, handed over, damaged...) or any of the site's."""
        pool = sorted(self.holder) if held and self.holder else self.site_kits
        kit = self.pick(pool, index)
        submission = Submission.of(KitStatusRequest(status, "as the pharmacist found it"))
        replaced = self.world.kits[kit].status == ALLOCATED and status in (DAMAGED, LOST)
        result = self.act(
            lambda s: dispensing.change_kit_status(s, self.ctx, actor, kit, submission),
            "kit.status_changed",
            "kit.status_change_refused",
            1 if replaced else None,
        )
        if result is not None:
            self.counts[result.previous] -= 1
            self.counts[result.status] += 1
            assert (result.replacement is not None) == replaced
            if result.replacement is not None:
                self.outcomes["kit replaced"] += 1
                self.allocated([result.replacement], self.holder[kit])

    @precondition(lambda self: self.screened and 3 * len(self.ended) < len(self.screened))
    @rule(
        index=st.integers(0, 10**6),
        fresh=st.sampled_from([True, True, True, False]),
        step=st.sampled_from([lifecycle.WITHDRAW, lifecycle.DISCONTINUE]),
        actor=st.sampled_from([COORDINATOR, INVESTIGATOR, COORDINATOR, PHARMACIST]),
    )
    def end(self, index: int, fresh: bool, step: Any, actor: Actor) -> None:
        """Withdraw or discontinue a participant: mostly one not withdrawn or discontinued."""
        going = [n for n in self.screened if n not in self.ended]
        number = self.pick(going if fresh and going else self.screened, index)
        submission = Submission.of(ReasonRequest("the participant's decision"))
        if self.act(
            lambda s: lifecycle.change_participant_status(
                s, self.ctx, actor, number, step, submission
            ),
            step.action,
            f"{step.action}_refused",
        ):
            self.ended.add(number)

    # The depot, shipments, quarantine and expiry (issue 12) -------------------------------

    @rule(days=st.sampled_from([2, 20, 400]), pairs=st.sampled_from([1, 4, 110]))
    def generate(self, days: int, pairs: int) -> None:
        """A lot for the depot, expiring soon after the do-not-dispense window or later."""
        lot = f"L-SM-{len(self.lots) + 1}"
        expiry = self.cutoff() + timedelta(days=days)
        order = KitGeneration(lot, 2 * pairs, expiry)
        made = self.act(
            lambda s: shipments.generate_kits(s, self.ctx, SYSTEM, order), "kits.generated", None
        )
        self.lots.append(lot)
        self.initial_total += len(made)
        self.counts[IN_DEPOT] += len(made)

    @rule(count=st.sampled_from([2, 8, 40, 3]), index=st.integers(0, 10**6), by_lot=st.booleans())
    def ship(self, count: int, index: int, by_lot: bool) -> None:
        """An admin sends kits to site 101: a count (balanced) or a whole lot."""
        lot = self.pick(self.lots, index) if by_lot and self.lots else None
        request = ShipmentRequest(SITE, lot=lot) if lot else ShipmentRequest(SITE, count=count)
        arms = [arm.id for arm in self.ctx.definition.arms]
        if lot is None:
            wanted = dict.fromkeys(arms, count // 2)
        else:
            in_lot = Counter(
                row.arm
                for row in self.world.kits.values()
                if row.lot == lot
                and row.site is None
                and row.status == IN_DEPOT
                and row.expires_on > self.cutoff()
            )
            wanted = {arm: in_lot[arm] for arm in arms}
        result = self.act(
            lambda s: shipments.create_shipment(s, self.ctx, ADMIN, Submission.of(request)),
            "shipment.created",
            "shipment.create_refused",
            short=lambda w: any(self.depot_supply(w, arm) < n for arm, n in wanted.items()),
        )
        if result is not None:
            self.sent(result.kits, wanted, chosen=lot is None)

    @precondition(lambda self: SHIPMENT_REQUESTED in self.world.shipments.values())
    @rule()
    def dispatch(self) -> None:
        """The depot sends the resupply the service requested: every arm back to target."""
        (number,) = [n for n, status in self.world.shipments.items() if status == "requested"]
        target = self.ctx.definition.supply.levels(SITE).target
        dispensable = self.by_arm(self.world, AVAILABLE, self.cutoff())
        travelling = self.by_arm(self.world, IN_TRANSIT, None)
        wanted = {
            arm.id: max(0, target - dispensable[arm.id] - travelling[arm.id])
            for arm in self.ctx.definition.arms
        }
        result = self.act(
            lambda s: shipments.dispatch_shipment(s, self.ctx, ADMIN, str(number)),
            "shipment.created" if any(wanted.values()) else "shipment.cancelled",
            "shipment.dispatch_refused",
            short=lambda w: any(self.depot_supply(w, arm) < n for arm, n in wanted.items()),
        )
        if result is not None and result.kits:
            self.sent(result.kits, wanted)

    def by_arm(self, world: World, status: str, cutoff: date | None) -> Counter[str]:
        return Counter(
            row.arm
            for row in world.kits.values()
            if row.site == SITE
            and row.status == status
            and (cutoff is None or row.expires_on > cutoff)
        )

    @precondition(lambda self: SHIPMENT_IN_TRANSIT in self.world.shipments.values())
    @rule(
        index=st.integers(0, 10**6),
        spoilt=st.sampled_from([None, None, 0, 1]),
        status=st.sampled_from([DAMAGED, LOST]),
    )
    def receive(self, index: int, spoilt: int | None, status: str) -> None:
        """The pharmacist receives a shipment, perhaps with a kit damaged or lost."""
        sent = sorted(n for n, st_ in self.world.shipments.items() if st_ == "in_transit")
        number = self.pick(sent, index)
        travelling = sorted(
            k
            for k, row in self.world.kits.items()
            if row.shipment == number and row.status == IN_TRANSIT
        )
        receipt = dict.fromkeys(travelling, AVAILABLE)
        if spoilt is not None and travelling:
            receipt[travelling[spoilt % len(travelling)]] = status
        result = self.act(
            lambda s: shipments.receive_shipment(
                s, self.ctx, PHARMACIST, str(number), Submission.of(ReceiptRequest(receipt))
            ),
            "shipment.received",
            "shipment.receive_refused",
        )
        if result is not None:
            for kit_status in receipt.values():
                self.counts[IN_TRANSIT] -= 1
                self.counts[kit_status] += 1

    @rule(index=st.integers(0, 10**6), release=st.booleans(), anything=st.booleans())
    def quarantine(self, index: int, release: bool, anything: bool) -> None:
        """An admin holds a kit in stock (or any kit, to be refused), or releases one."""
        wanted = (QUARANTINED,) if release else (AVAILABLE, IN_DEPOT)
        pool = sorted(
            k
            for k, row in self.world.kits.items()
            if (row.site in (SITE, None)) and (anything or row.status in wanted)
        )
        if not pool:
            return
        kit = self.pick(pool, index)
        submission = Submission.of(ReasonRequest("temperature excursion"))
        result = self.act(
            lambda s: shipments.set_quarantine(
                s, self.ctx, ADMIN, kit, submission, quarantine=not release
            ),
            "kit.status_changed",
            "kit.quarantine_refused",
        )
        if result is not None:
            assert result.status == (
                (AVAILABLE if result.site else IN_DEPOT) if release else QUARANTINED
            )
            self.counts[result.previous] -= 1
            self.counts[result.status] += 1

    @rule(wait=st.sampled_from([0, 3, 12]))
    def expire(self, wait: int) -> None:
        """Days pass; ``sealroom kits expire`` marks what expired (only that)."""
        self.clock.advance(days=wait)
        self.act(lambda s: shipments.expire_kits(s, self.ctx, SYSTEM), None, None)

    # Invariants ---------------------------------------------------------------------------

    @invariant()
    def a_kit_without_a_site_is_at_the_depot_and_a_travelling_one_in_a_sent_shipment(
        self,
    ) -> None:
        for row in self.world.kits.values():
            if row.site is None or row.status == IN_DEPOT:
                assert row.site is None and row.status in DEPOT_STATUSES, row
            if row.status == IN_TRANSIT:
                assert self.world.shipments[row.shipment] == "in_transit", row
        assert list(self.world.shipments.values()).count("requested") <= 1

    @invariant()
    def no_kit_is_held_twice_and_each_is_of_its_holders_arm(self) -> None:
        world = self.world
        holders = {k: row.holder for k, row in world.kits.items() if row.holder is not None}
        assert holders == self.holder  # one holder column: a second allocation would show
        for kit, number in holders.items():
            row = world.kits[kit]
            assert row.site == SITE and row.status != AVAILABLE
            arm = world.participants[number][1]
            assert row.arm == arm, f"kit {kit} is not of {number}'s arm"
        for row in world.kits.values():
            if row.status == AVAILABLE:
                assert row.holder is None and row.visit is None

    @invariant()
    def kit_counts_are_conserved(self) -> None:
        kits = self.world.kits.values()
        assert len(self.world.kits) == self.initial_total
        assert Counter(row.status for row in kits) == self.counts
        assert sum(self.counts.values()) == self.initial_total

    @invariant()
    def every_visit_keeps_its_count_and_every_damaged_kit_one_replacement(self) -> None:
        kits = self.world.kits.values()
        replaced = Counter(row.replaces for row in kits if row.replaces is not None)
        # A held kit becomes damaged or lost only with its replacement, or not at all.
        for row in kits:
            if row.holder is not None and row.status in (DAMAGED, LOST):
                assert replaced[row.kit_number] == 1, row
        in_use = Counter(
            (row.holder, row.visit)
            for row in kits
            if row.holder is not None and row.status not in (DAMAGED, LOST)
        )
        assert in_use == Counter(self.given)

    @invariant()
    def the_audit_log_verifies(self) -> None:
        """Every entry, and each checkpoint once (the last one again: it must still hold)."""
        audit_verifies(self.world, self.ctx, since=self.checked - 1)
        self.checked = len(self.world.checkpoints)


@pytest.mark.requirement("R-DISP")
@pytest.mark.requirement("R-KIT-2")
@pytest.mark.requirement("R-LIFE")
@pytest.mark.requirement("R-BLIND-2")
def test_random_lifecycles_keep_every_kit_invariant(scarce_trial):
    machine = type("Machine", (DispensingMachine,), {"trial": scarce_trial, "outcomes": Counter()})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=10,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # The runs reached what the invariants are about (not only refusals).
    reached = ("participant.dispensed", "kit replaced", "shipment.requested", "shipment.received")
    missing = [outcome for outcome in reached if not machine.outcomes[outcome]]
    assert not missing, (missing, machine.outcomes)


# b. Arm relabelling (R-BLIND-1) -----------------------------------------------------------

#: Stock per arm for the relabelling sequence: it runs out on the way, on purpose.
RELABEL_KITS_PER_ARM = 12
#: Site 101's region is north_america: prior_ig "yes" is stratum 1, whose first slots are
#: A P A P P (URS Appendix A).
STRATUM_1_START = ("igpro20", "placebo", "igpro20", "placebo", "placebo")
#: Blinded users who act or read in the sequence: every blinded role.
BLINDED_USERS = (
    "coordinator-101",
    "investigator-101",
    "pharmacist-101",
    "pharmacist-102",
    "medical-monitor",
    "sponsor",
    "auditor",
    "admin",
)
KIT_IN_TEXT = re.compile(r"K\d{4}-\d{4}")
#: Values random by construction in what an auditor or a receipt shows: hashes, nonces,
#: ciphertexts and the data key's id. Masked by their length (which must match).
RANDOM_KEYS = frozenset({"prev", "nonce", "ciphertext", "key_id"})


#: RECLAIIM's two arms.
ARMS = ("igpro20", "placebo")


def other_arm(arm: str) -> str:
    first, second = ARMS
    return second if arm == first else first


#: A lot at the depot of both databases, the same kit numbers in each (then swapped).
RELABEL_LOT = "L-RELABEL"


def stock_depot_alike(trial: Any, start: datetime) -> None:
    """Four kits of each arm at the depot, with the same numbers, order and expiry in every
    database (so that the swapped one is the plain one with its arms renamed); the expiry
    is the earliest of the site's, so these kits go first once received."""
    from randomizer.services.kits import KIT_SEAL_KIND

    arms = [arm for arm in ARMS for _ in range(4)]
    same = random.Random(5)
    same.shuffle(arms)
    database = trial.database()
    try:
        with database.transaction() as session:
            ctx = load_trial_context(session, trial.settings.keys_dir, {})
            for index, arm in enumerate(arms):
                number = f"K9000-{index + 1:04d}"
                session.add(
                    Kit(
                        # Row ids too: the order in which the shipment's update stamps the
                        # kits (by id) orders them in the site's view, whence the choice.
                        id=str(uuid.UUID(int=same.getrandbits(128), version=4)),
                        kit_number=number,
                        site_id=None,
                        status="in_depot",
                        lot=RELABEL_LOT,
                        expires_on=start.date() + timedelta(days=400),
                        sealed_arm=ctx.sealer.seal_arm(arm, KIT_SEAL_KIND, number).to_text(),
                    )
                )
    finally:
        database.dispose()


def swap_arms(trial: Any) -> None:
    """Re-seal every slot's and every kit's arm as the other arm, in place."""
    database = trial.database()
    try:
        with database.transaction() as session:
            ctx = load_trial_context(session, trial.settings.keys_dir, {})
            for kind, model, name in (
                ("slot", Slot, "randomization_number"),
                ("kit", Kit, "kit_number"),
            ):
                for row in session.scalars(select(model)):
                    object_id = getattr(row, name)
                    arm = ctx.sealer.unseal_arm(
                        SealedArm.from_text(row.sealed_arm), kind, object_id
                    )
                    row.sealed_arm = ctx.sealer.seal_arm(other_arm(arm), kind, object_id).to_text()
    finally:
        database.dispose()


class Masker:
    """Replaces what is random by construction, the same way in both runs.

    Kit numbers become ``k0001-0000``, ``k0002-0000``... in order of first appearance (same
    length). A list of kit numbers becomes its labels as a set and its order as a pattern
    (each item's rank by kit number): the order of random numbers is random, but a rule
    that orders kits (by number, say, or by arm) shows in the pattern. Hashes, nonces,
    ciphertexts and signatures become their length.
    """

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def kit(self, number: str) -> str:
        return self.labels.setdefault(number, f"k{len(self.labels) + 1:04d}-0000")

    def text(self, text: str) -> str:
        return KIT_IN_TEXT.sub(lambda match: self.kit(match.group()), text)

    def value(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            if key == "receipt":
                return self.receipt(value)
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            masked = [self.value(item) for item in value]
            if value and all(isinstance(v, str) and KIT_IN_TEXT.fullmatch(v) for v in value):
                ranks = sorted(value)
                return {"kits": sorted(masked), "order": [ranks.index(v) for v in value]}
            return masked
        if isinstance(value, str):
            if key in RANDOM_KEYS:
                return f"<{len(value)} random characters>"
            return self.text(value)
        return value

    def receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        return {
            "seq": receipt["seq"],
            "entry": self.entry(receipt["entry"]),
            "checkpoint": self.note(receipt["checkpoint"]),
            "inclusion_proof": [f"<{len(h)}>" for h in receipt["inclusion_proof"]],
        }

    def entry(self, canonical: str) -> str:
        return json.dumps(self.value(json.loads(canonical)))

    @staticmethod
    def note(note: str) -> str:
        """A signed note: origin and size kept; root hash and signatures by their length."""
        body, _, signatures = note.partition("\n\n")
        origin, size, root = body.rstrip("\n").split("\n")
        lines = [line.rsplit(" ", 1) for line in signatures.rstrip("\n").split("\n")]
        return "\n".join(
            [origin, size, f"<{len(root)}>", *(f"{name} <{len(sig)}>" for name, sig in lines)]
        )

    def body(self, mimetype: str, raw: bytes) -> str:
        text = raw.decode("utf-8")
        if mimetype in ("application/json", "application/problem+json"):
            return json.dumps(self.value(json.loads(text)))  # in the order it came
        if mimetype == "application/jsonl":
            return "\n".join(self.entry(line) for line in text.splitlines())
        return self.text(text)


#: What a step expects: a status, or a status and a problem type.
Expect = int | tuple[int, str]


@dataclass
class RelabelRun:
    """One run of the sequence: the answers as seen, masked, and what the test checked."""

    answers: list[tuple[Any, ...]]
    arms: dict[str, str]
    premises: list[str]


def run_relabel_sequence(trial: Any, start: datetime) -> RelabelRun:
    """The fixed sequence through the API, as blinded users; every answer, masked."""
    from randomizer import create_app

    clock = Clock()
    clock.now = start
    app = create_app({"settings": trial.settings, "clock": clock, "TESTING": True})
    state = app.extensions["sealroom"]
    # Kits are chosen with ctx.rng: the same seed in both runs picks the same positions.
    app.extensions["sealroom"] = replace(state, ctx=replace(state.ctx, rng=random.Random(2027)))
    api = ApiClient(app.test_client(), trial.tokens, clock)
    database = state.db
    masker = Masker()
    answers: list[tuple[Any, ...]] = []
    premises: list[str] = []
    kits: dict[str, list[str]] = {}  # the kit numbers each answer gave, by a name

    def record(user: str, method: str, path: str, response: Any, expect: Expect, name=None):
        """Keep the answer, masked; check it is the one the step expects (status, type)."""
        assert user in BLINDED_USERS
        status, problem = (expect, None) if isinstance(expect, int) else expect
        data = response.get_json(silent=True) or {}
        assert response.status_code == status, (user, method, path, data)
        if problem is not None:
            assert data["type"] == f"/problems/{problem}", (user, method, path, data)
        masked_path = masker.text(path)
        body = masker.body(response.mimetype, response.get_data())
        answers.append((user, method, masked_path, response.status_code, response.mimetype, body))
        # The raw length too (kit numbers and base64 have fixed lengths): nothing to measure.
        answers.append(("length", len(response.get_data())))
        if name is not None and status < 300:
            kits[name] = list(data.get("kits") or [data["replacement"]])
        return data

    def post(user: str, path: str, body: Any, expect: Expect, name=None, **kwargs: Any):
        return record(user, "POST", path, api.post(path, user, json=body, **kwargs), expect, name)

    def get(user: str, path: str, expect: Expect = 200) -> Any:
        return record(user, "GET", path, api.get(path, user), expect)

    def screen(number: str, user: str = "coordinator-101") -> None:
        body = {
            "screening_number": number,
            "site": SITE,
            "screened_on": clock.today().isoformat(),
            "strata": {"prior_ig": "yes"},
        }
        post(user, "/participants", body, 201)

    def randomize(number: str, weight: Any, expect: Expect = 201, user="coordinator-101"):
        body = {"weight_kg": weight, "eligibility": ELIGIBLE}
        post(user, f"/participants/{number}/randomize", body, expect, name=f"{number}/week1")

    def dispense(number, visit, weight, expect: Expect = 201, user="pharmacist-101", **kw):
        body = {"visit": visit, "weight_kg": weight}
        name = f"{number}/{visit}"
        post(user, f"/participants/{number}/dispense", body, expect, name=name, **kw)

    def kit_status(kit: str, status: str, expect: Expect = 200, name: str | None = None):
        body = {"status": status, "reason": f"marked {status} by the pharmacy"}
        post("pharmacist-101", f"/kits/{kit}/status", body, expect, name=name)

    def stock() -> dict[str, int]:
        with database.reading() as session:
            rows = session.execute(
                select(Kit.kit_number, Kit.sealed_arm).where(
                    Kit.site_id == SITE, Kit.status == AVAILABLE
                )
            ).all()
        return Counter(
            state.ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "kit", number)
            for number, sealed in rows
        )

    def arm_of(number: str) -> str:
        with database.reading() as session:
            row = session.scalars(
                select(Participant).where(Participant.screening_number == number)
            ).one()
            return participants.participant_arm(state.ctx, row)

    def next_slot_arm(stratum: int) -> str:
        with database.reading() as session:
            position = session.scalar(
                select(Stratum.next_position).where(Stratum.number == stratum)
            )
            number, sealed = session.execute(
                select(Slot.randomization_number, Slot.sealed_arm).where(
                    Slot.stratum_number == stratum, Slot.position == position
                )
            ).one()
        return state.ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "slot", number)

    def own_arm_had_enough(arm: str, needed: int, what: str) -> None:
        """R-BLIND-2's point: the refusal that follows is for the other arm's stock only."""
        available = stock()
        assert available[arm] >= needed > available[other_arm(arm)], (what, available)
        premises.append(what)

    with database.reading() as session:
        start_seq = session.scalar(select(func.count()).select_from(AuditEntry))

    # Day 0: three participants of stratum 1 screened and randomised (A, P, A).
    for number in ("101-R-1", "101-R-2", "101-R-3"):
        screen(number)
    randomize("101-R-1", 100)  # 5 kits: A 7, P 12 left
    randomize("101-R-2", 30, user="investigator-101")  # 2 kits: P 10
    randomize("101-R-3", 30.0)  # 2 kits: A 5
    get("pharmacist-101", "/sites/101/inventory")
    get("admin", "/sites/101/inventory")
    r1 = kits["101-R-1/week1"]
    get("pharmacist-101", f"/kits/{r1[0]}")
    # The pharmacy: a hand-over, a damaged and a lost kit (replaced: A 3), illegal changes.
    kit_status(r1[0], "dispensed")
    kit_status(r1[1], "damaged", name="101-R-1/replacement-1")
    kit_status(r1[2], "lost", name="101-R-1/replacement-2")
    kit_status(r1[3], "returned", (409, "conflict"))  # not from allocated
    kit_status(r1[0], "returned")
    kit_status(r1[0], "dispensed", (409, "conflict"))  # returned is final
    for user in ("pharmacist-101", "admin"):
        get(user, f"/kits/{kits['101-R-1/replacement-1'][0]}")
        get(user, f"/kits/{r1[2]}")
    get("pharmacist-102", f"/kits/{r1[0]}", 404)  # another site's kit
    for user in ("coordinator-101", "sponsor", "medical-monitor"):
        get(user, "/participants/101-R-1")
        get(user, "/participants/101-R-2")

    # Day 28: week5's window is open for R-1, R-2 and R-3.
    clock.advance(days=28)
    screen("101-R-4")
    screen("101-R-5", user="investigator-101")
    own_arm_had_enough(arm_of("101-R-2"), 5, "101-R-2's week5 at 100 kg")
    dispense("101-R-2", "week5", 100, (409, "insufficient-supply"))  # the other arm has 3
    dispense("101-R-2", "week5", 30, headers={"Idempotency-Key": "r2-week5"})  # P 8
    dispense("101-R-2", "week5", 30, headers={"Idempotency-Key": "r2-week5"})  # replayed
    dispense("101-R-3", "week5", 45.5, user="coordinator-101")  # 3 kits: A 0
    dispense("101-R-2", "week5", 30, (409, "conflict"), user="investigator-101")  # given already
    dispense("101-R-3", "week9", 30, (422, "visit-window"))
    dispense("101-R-3", "week25", 30, (422, "validation"))  # dispenses nothing
    dispense("101-R-4", "week5", 30, (409, "conflict"))  # not randomised
    kit_status(kits["101-R-3/week5"][0], "dispensed")
    own_arm_had_enough(arm_of("101-R-2"), 1, "101-R-2's replacement")
    kit_status(kits["101-R-2/week5"][0], "damaged", (409, "insufficient-supply"))  # none for A
    kit_status(kits["101-R-2/week5"][0], "dispensed")
    own_arm_had_enough(next_slot_arm(1), 2, "101-R-4's randomisation")
    randomize("101-R-4", 30, (409, "insufficient-supply"))
    randomize("101-R-1", 30, (409, "already-randomized"))
    dispense("101-R-1", "week5", 30, (409, "insufficient-supply"))  # its arm is short too
    get("pharmacist-101", "/sites/101/inventory")

    # Lifecycle and corrections.
    post("coordinator-101", "/participants/101-R-1/withdraw", {"reason": "consent withdrawn"}, 200)
    dispense("101-R-1", "week5", 30, (409, "conflict"))  # withdrawn
    post("coordinator-101", "/participants/101-R-1/withdraw", {"reason": "again"}, 409)
    post("investigator-101", "/participants/101-R-2/discontinue", {"reason": "adverse event"}, 200)
    clock.advance(days=28)
    dispense("101-R-2", "week9", 30, (409, "conflict"))  # discontinued
    dispense("101-R-3", "week9", 30, (409, "insufficient-supply"))
    post("admin", "/participants/101-R-3/flag-error", {"reason": "not eligible after all"}, 200)
    dispense("101-R-3", "week9", 30, (409, "conflict"))  # randomised in error
    correction = {"strata": {"prior_ig": "no"}, "reason": "no prior IVIG after all"}
    post("admin", "/participants/101-R-2/correct-stratum", correction, 200)
    post("admin", "/participants/101-R-2/correct-stratum", correction, 422)  # recorded already

    # The depot (issue 12): a lot shipped whole to 101, received with a kit damaged, kits of
    # it allocated (its expiry is the earliest), one quarantined and released.
    get("admin", "/shipments")
    shipped = post("admin", "/shipments", {"site": SITE, "lot": RELABEL_LOT}, 201, name="lot")
    get("pharmacist-101", "/shipments")
    get("pharmacist-101", f"/shipments/{shipped['id']}")
    get("pharmacist-102", f"/shipments/{shipped['id']}", 404)
    get("pharmacist-101", f"/kits/{kits['lot'][0]}")
    receipt = {"kits": dict.fromkeys(kits["lot"], "available") | {kits["lot"][0]: "damaged"}}
    post("pharmacist-101", f"/shipments/{shipped['id']}/receive", receipt, 200)
    post("pharmacist-101", f"/shipments/{shipped['id']}/receive", receipt, (409, "conflict"))
    get("pharmacist-101", "/sites/101/inventory")
    screen("101-R-6")
    randomize("101-R-6", 30)
    post("admin", f"/kits/{kits['lot'][1]}/quarantine", {"reason": "fridge at 11 C"}, 200)
    post("admin", f"/kits/{kits['lot'][1]}/release", {"reason": "within range"}, 200)
    post("admin", f"/kits/{kits['101-R-6/week1'][0]}/quarantine", {"reason": "x"}, 409)
    get("admin", f"/shipments/{shipped['id']}")

    # What every blinded reader sees at the end.
    for number in ("101-R-1", "101-R-2", "101-R-3", "101-R-4", "101-R-5", "101-R-6"):
        for user in ("coordinator-101", "investigator-101", "pharmacist-101"):
            get(user, f"/participants/{number}")
        for user in ("sponsor", "medical-monitor"):
            get(user, f"/participants/{number}")
    for user in ("pharmacist-101", "admin"):
        get(user, "/sites/101/inventory")
        for kit in sorted(masker.labels, key=masker.labels.__getitem__):
            get(user, f"/kits/{kit}")
    with database.reading() as session:
        size = session.scalar(select(func.count()).select_from(AuditEntry))
    get("auditor", f"/audit/entries?start={start_seq}&end={size}")

    arms = {number: arm_of(number) for number in ("101-R-1", "101-R-2", "101-R-3")}
    database.dispose()
    return RelabelRun(answers, arms, premises)


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.requirement("R-DISP")
@pytest.mark.requirement("R-KIT-2")
@pytest.mark.parametrize("backend", BACKENDS)
def test_swapping_the_arms_changes_no_answer_to_any_blinded_role(backend, scratch, tmp_path):
    start = datetime.now(UTC)
    plain = make_trial_database(
        scratch, backend, tmp_path / "plain", kits_per_arm=RELABEL_KITS_PER_ARM
    )
    swapped = make_trial_database(
        scratch, backend, tmp_path / "swapped", kits_per_arm=RELABEL_KITS_PER_ARM
    )
    for trial in (plain, swapped):
        stock_depot_alike(trial, start)
    swap_arms(swapped)

    first = run_relabel_sequence(plain, start)
    second = run_relabel_sequence(swapped, start)

    # The premises: the arms really are swapped, and the supply refusals came where the
    # participant's own arm had enough (so a check of one arm only would have differed).
    assert tuple(first.arms.values()) == STRATUM_1_START[:3]
    assert second.arms == {n: other_arm(arm) for n, arm in first.arms.items()}
    assert first.premises == second.premises and len(first.premises) == 3, first.premises
    assert len(first.answers) == len(second.answers)
    for index, (one, two) in enumerate(zip(first.answers, second.answers, strict=True)):
        assert one == two, f"answer {index // 2} differs once the arms are swapped"


# c. Several server processes dispensing at one site at once (R-NF-1) -------------------------

DISPENSING_PROCESSES = 4
DISPENSING_THREADS = 16
DISPENSING_PARTICIPANTS = 48
#: 30 kg: 2 kits a visit. 48 randomisations take about 48 kits of each arm; what is left
#: covers about half of the week5 dispensings, so the site runs out in the middle.
DISPENSING_KITS_PER_ARM = 70
DISPENSERS = ("pharmacist-101", "coordinator-101", "investigator-101")


@pytest.fixture(scope="module")
def randomised_28_days_ago(scratch, tmp_path_factory):
    """A PostgreSQL demo database with scarce stock whose site 101 randomised many
    participants 28 days ago (through the app in-process, with its clock set back)."""
    if not PG_URL:
        pytest.skip("PostgreSQL not configured (SEALROOM_TEST_DATABASE_URL)")
    from randomizer import create_app

    directory = tmp_path_factory.mktemp("pg-dispensing")
    trial = make_trial_database(
        scratch, "postgresql", directory, kits_per_arm=DISPENSING_KITS_PER_ARM
    )
    clock = Clock()
    clock.advance(days=-28)
    app = create_app({"settings": trial.settings, "clock": clock, "TESTING": True})
    api = ApiClient(app.test_client(), trial.tokens, clock)
    numbers = [f"101-D-{i:03d}" for i in range(DISPENSING_PARTICIPANTS)]
    for i, number in enumerate(numbers):
        response = api.screen_and_randomize(number, prior_ig=("yes", "no")[i % 2], weight_kg=30)
        assert response.status_code == 201, response.get_json()
    app.extensions["sealroom"].db.dispose()
    return trial, directory, numbers


def _dispense_all_at_once(client: Any, numbers: list[str]) -> list[tuple[int, dict[str, Any]]]:
    barrier = threading.Barrier(DISPENSING_THREADS)

    def dispense(item: tuple[int, str]) -> tuple[int, dict[str, Any]]:
        index, number = item
        if index < DISPENSING_THREADS:  # the first wave starts together
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=60)
        return client.post(
            f"/participants/{number}/dispense",
            DISPENSERS[index % len(DISPENSERS)],
            {"visit": "week5", "weight_kg": 30},
        )

    with ThreadPoolExecutor(max_workers=DISPENSING_THREADS) as pool:
        return list(pool.map(dispense, enumerate(numbers)))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.requirement("R-NF-1")
@pytest.mark.requirement("R-DISP")
@pytest.mark.requirement("R-BLIND-2")
def test_server_processes_dispensing_at_one_site_never_give_a_kit_twice(randomised_28_days_ago):
    trial, directory, numbers = randomised_28_days_ago
    server = Server(trial, directory, DISPENSING_PROCESSES).start()
    try:
        first = _dispense_all_at_once(server.client, numbers)
        # Again, all at once: a visit is dispensed once, and a refusal stays one.
        second = _dispense_all_at_once(server.client, numbers)
    finally:
        server.stop()

    given = {
        n: body["kits"] for n, (status, body) in zip(numbers, first, strict=True) if status == 201
    }
    for status, body in first:
        assert (status, body.get("type")) in ((201, None), (409, "/problems/insufficient-supply"))
    assert 0 < len(given) < len(numbers), "the stock should run out in the middle"
    for number, (status, body) in zip(numbers, second, strict=True):
        assert status == 409, body
        if number in given:
            assert body["type"] == "/problems/conflict" and body["kits"] == given[number]
        else:
            assert body["type"] == "/problems/insufficient-supply"
    print(
        f"\n{len(numbers)} participants dispensed week5 at once through "
        f"{DISPENSING_PROCESSES} gunicorn workers: {len(given)} given, "
        f"{len(numbers) - len(given)} refused for supply"
    )

    database = Database(trial.url)
    try:
        with database.reading() as session:
            ctx = load_trial_context(session, trial.settings.keys_dir, {})
        world = read_world(database, ctx)
    finally:
        database.dispose()
    audit_verifies(world, ctx)
    entries = [parse_entry(text.encode()) for text in world.log]
    handed = [
        (entry["subject"], kit)
        for entry in entries
        if entry["action"] in ("participant.randomized", "participant.dispensed")
        for kit in entry["data"]["kits"]
    ]
    kit_numbers = [kit for _, kit in handed]
    assert len(kit_numbers) == len(set(kit_numbers)) == 2 * (len(numbers) + len(given))
    holders = {k: row.holder for k, row in world.kits.items() if row.holder is not None}
    assert holders == {kit: number for number, kit in handed}
    for kit, number in holders.items():
        assert world.kits[kit].arm == world.participants[number][1]
        assert world.kits[kit].status == ALLOCATED
    for number, kits in given.items():
        assert {
            k for k, row in world.kits.items() if row.holder == number and row.visit == "week5"
        } == set(kits)
    refused = [e for e in entries if e["action"] == "participant.dispense_refused"]
    assert len(refused) == 2 * len(numbers) - len(given)
    # Every refusal for supply was right: some arm is now short of a visit's kits.
    left = Counter(
        row.arm for row in world.kits.values() if row.site == SITE and row.status == AVAILABLE
    )
    assert min(left[arm] for arm in ARMS) < 2, left


# d. Wrong and hostile input (R-NF-3) -------------------------------------------------------

HOSTILE_NUMBER = "101-HOSTILE-1"
DISPENSE_PATH = f"/participants/{HOSTILE_NUMBER}/dispense"
WEEK5 = {"visit": "week5", "weight_kg": 70}
REASON = "as the pharmacist found it"


@dataclass(frozen=True)
class Hostile:
    """One wrong request, the 4xx it must get, and the refusal entry it must leave."""

    name: str
    method: str
    path: str  # "{held}", "{available}" and "{elsewhere}" name kits of the scene
    user: str
    status: int
    refusal: str | None  # the refusal entry's action; None: a read, which audits nothing
    json: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.name


def _post(name: str, path: str, user: str, status: int, action: str, json: Any = None, **kw):
    return Hostile(name, "POST", path, user, status, action, json, **kw)


def _dispense(name: str, status: int, json: Any = None, **kw: Any) -> Hostile:
    user = kw.pop("user", "pharmacist-101")
    return _post(name, DISPENSE_PATH, user, status, "participant.dispense_refused", json, **kw)


def _kit(name: str, status: int, json: Any = None, kit: str = "{held}", **kw: Any) -> Hostile:
    path = f"/kits/{kit}/status"
    return _post(name, path, "pharmacist-101", status, "kit.status_change_refused", json, **kw)


def _life(name: str, path: str, user: str, action: str, json: Any = None, **kw: Any) -> Hostile:
    status = kw.pop("status", 422)
    path = f"/participants/{HOSTILE_NUMBER}/{path}"
    return _post(name, path, user, status, f"{action}_refused", json, **kw)


HOSTILE = [
    # Dispensing: weight outside 30 to 250 kg, or not a JSON number.
    *(
        _dispense(f"weight {weight!r}", 422, {"visit": "week5", "weight_kg": weight})
        for weight in (29.999, 250.001, 0, -70, "70", True, None, 70.0001, [70], {"kg": 70})
    ),
    _dispense("weight 1e400", 422, raw=b'{"visit": "week5", "weight_kg": 1e400}'),
    _dispense("weight NaN", 400, raw=b'{"visit": "week5", "weight_kg": NaN}'),
    # Unknown visits.
    *(
        _dispense(f"visit {visit!r}", 422, {"visit": visit, "weight_kg": 70})
        for visit in ("week2", "WEEK5", "", "week5\x00", "week5 ", 5, None, "w" * 10_000)
    ),
    _dispense("no visit", 422, {"weight_kg": 70}),
    _dispense("unknown field", 422, {**WEEK5, "arm": "placebo"}),
    _dispense("a list", 422, [WEEK5]),
    _dispense("malformed JSON", 400, raw=b'{"visit": "week5",'),
    _dispense("not UTF-8", 400, raw=b'{"visit": "\xff\xfe"}'),
    _dispense("not JSON", 415, raw=b"visit=week5", content_type="text/plain"),
    _dispense("too large", 413, raw=b'{"visit": "' + b"x" * 70_000 + b'"}'),
    _dispense("another site's participant", 404, WEEK5, user="pharmacist-102"),
    _dispense("Idempotency-Key with a space", 400, WEEK5, headers={"Idempotency-Key": "a b"}),
    _dispense("Idempotency-Key too long", 400, WEEK5, headers={"Idempotency-Key": "k" * 256}),
    *(
        _post(
            f"screening number {number!r}",
            f"/participants/{number}/dispense",
            "pharmacist-101",
            404,
            "participant.dispense_refused",
            WEEK5,
        )
        for number in ("101-NOBODY", "S%00X", "S" * 33, "%C5%9E-1", "101-1%0A")
    ),
    # Kit status changes.
    _kit("unknown kit", 404, {"status": "dispensed", "reason": REASON}, kit="K0000-0000"),
    _kit("another site's kit", 404, {"status": "dispensed", "reason": REASON}, "{elsewhere}"),
    *(
        _kit(f"kit number {kit!r}", 404, {"status": "dispensed", "reason": REASON}, kit)
        for kit in ("K12345", "k1234-5678", "K1234-5678%00", "K" * 300, "%E2%80%AE1234-5678")
    ),
    _kit("allocated to returned", 409, {"status": "returned", "reason": REASON}),
    _kit("available to returned", 409, {"status": "returned", "reason": REASON}, "{available}"),
    _kit("available to dispensed", 409, {"status": "dispensed", "reason": REASON}, "{available}"),
    *(
        _kit(f"status {status!r}", 422, {"status": status, "reason": REASON})
        for status in ("available", "expired", "quarantined", "DISPENSED", "", None, 1)
    ),
    *(
        _kit(f"reason {reason[:12]!r}", 422, {"status": "dispensed", "reason": reason})
        for reason in ("a\x00b", "x" * 501, "", "line\nbreak", "\ud800", "\x1b[31m", "y" * 7_000)
    ),
    _kit("reason a number", 422, {"status": "dispensed", "reason": 5}),
    _kit("no reason", 422, {"status": "dispensed"}),
    _kit("unknown field", 422, {"status": "dispensed", "reason": REASON, "participant": "101-1"}),
    _kit("malformed JSON", 400, raw=b'{"status": "dispensed", "reason": "x"'),
    _kit(
        "Idempotency-Key empty",
        400,
        {"status": "dispensed", "reason": REASON},
        headers={"Idempotency-Key": ""},
    ),
    # Withdrawal, discontinuation, flags and corrections.
    *(
        _life(f"{path} reason {reason[:12]!r}", path, user, action, {"reason": reason})
        for path, user, action in (
            ("withdraw", "coordinator-101", "participant.withdrawn"),
            ("discontinue", "investigator-101", "participant.discontinued"),
            ("flag-error", "admin", "participant.flagged_randomized_in_error"),
        )
        for reason in ("a\x00b", "x" * 501, "", "\ud800")
    ),
    _life(
        "withdraw unknown field",
        "withdraw",
        "coordinator-101",
        "participant.withdrawn",
        {"reason": "moved away", "status": "screened"},
    ),
    _life(
        "withdraw Idempotency-Key with a space",
        "withdraw",
        "coordinator-101",
        "participant.withdrawn",
        {"reason": "moved away"},
        status=400,
        headers={"Idempotency-Key": "a b"},
    ),
    _life(
        "discontinue malformed JSON",
        "discontinue",
        "investigator-101",
        "participant.discontinued",
        raw=b'{"reason": ',
        status=400,
    ),
    *(
        _life(
            f"correct-stratum {strata!r}",
            "correct-stratum",
            "admin",
            "participant.stratum_corrected",
            {"strata": strata, "reason": "records"},
        )
        for strata in (
            {"prior_ig": "maybe"},
            {"prior_ig": "yes", "region": "europe"},  # a site factor is never typed
            {},
            {"prior_ig": "no"},  # the stratum it is in already
            "prior_ig=yes",
        )
    ),
    _life(
        "correct-stratum NUL reason",
        "correct-stratum",
        "admin",
        "participant.stratum_corrected",
        {"strata": {"prior_ig": "yes"}, "reason": "\x00"},
    ),
    # Reads: refused alike, audited not at all.
    Hostile("read an unknown kit", "GET", "/kits/K0000-0000", "pharmacist-101", 404, None),
    Hostile("read another site's kit", "GET", "/kits/{elsewhere}", "pharmacist-101", 404, None),
    Hostile("read a kit number with NUL", "GET", "/kits/K%00", "admin", 404, None),
    Hostile("an unknown site's inventory", "GET", "/sites/999/inventory", "admin", 404, None),
    Hostile("another site's inventory", "GET", "/sites/102/inventory", "pharmacist-101", 404, None),
    Hostile("a site id with NUL", "GET", "/sites/1%0001/inventory", "admin", 404, None),
]


@pytest.fixture
def hostile_scene(api, db):
    """101-HOSTILE-1 randomised at site 101 28 days ago (week5 is open: only the input is
    wrong); one of its kits, an available kit of site 101 and one of site 102."""
    response = api.screen_and_randomize(HOSTILE_NUMBER, prior_ig="no")
    assert response.status_code == 201, response.get_json()
    api.clock.advance(days=28)
    with db.reading() as session:
        available = {
            site: session.scalars(
                select(Kit.kit_number)
                .where(Kit.site_id == site, Kit.status == AVAILABLE)
                .order_by(Kit.kit_number)
                .limit(1)
            ).one()
            for site in ("101", "102")
        }
    return {
        "held": response.get_json()["kits"][0],
        "available": available["101"],
        "elsewhere": available["102"],
    }


def _snapshot(db) -> tuple[Any, ...]:
    with db.reading() as session:
        kits = session.execute(
            select(Kit.kit_number, Kit.status, Kit.participant_id, Kit.visit).order_by(Kit.id)
        ).all()
        people = session.execute(
            select(Participant.screening_number, Participant.status).order_by(Participant.id)
        ).all()
        corrections = session.scalar(select(func.count()).select_from(StratumCorrection))
        log = list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))
    return kits, people, corrections, log


@pytest.mark.requirement("R-NF-3")
@pytest.mark.requirement("R-DISP")
@pytest.mark.requirement("R-KIT-2")
@pytest.mark.requirement("R-LIFE")
def test_wrong_and_hostile_input_gets_a_4xx_and_changes_nothing_but_one_refusal(
    api, db, hostile_scene
):
    wrong, bodies = [], {}
    for case in HOSTILE:
        path = case.path.format(**hostile_scene)
        kits, people, corrections, log = _snapshot(db)
        if case.raw is not None:
            kwargs = {"data": case.raw, "content_type": case.content_type}
        elif case.method == "POST":
            kwargs = {"json": case.json}
        else:
            kwargs = {}
        response = api.request(case.method, path, case.user, headers=case.headers, **kwargs)
        after_kits, after_people, after_corrections, after_log = _snapshot(db)

        body = response.get_json(silent=True) or {}
        if response.status_code != case.status:
            wrong.append(f"{case}: {response.status_code} {body}")
            continue
        assert response.mimetype == "application/problem+json", case
        assert {"type", "title", "status", "detail"} <= set(body), case
        assert body["status"] == case.status, case
        assert not names_an_arm(response.get_data(as_text=True)), case
        bodies[case.name] = response.get_data()
        assert (after_kits, after_people, after_corrections) == (kits, people, corrections), case
        new = [parse_entry(text.encode()) for text in after_log[len(log) :]]
        assert after_log[: len(log)] == log
        if case.refusal is None:
            assert new == [], case
            continue
        assert [entry["action"] for entry in new] == [case.refusal], case
        data, subject = new[0]["data"], new[0]["subject"]
        assert (data["status"], f"/problems/{data['reason']}") == (case.status, body["type"])
        # Hostile text never becomes an entry's subject (a bad id is recorded printable).
        assert subject is None or re.fullmatch(r"[A-Za-z0-9-]{1,32}", subject), case
        assert "\x00" not in after_log[-1], case
    assert not wrong, "\n".join(wrong)
    # Another site's kit is refused exactly as a kit that does not exist.
    assert bodies["another site's kit"] == bodies["unknown kit"]
    assert bodies["read another site's kit"] == bodies["read an unknown kit"]
    assert bodies["another site's inventory"] == bodies["an unknown site's inventory"]

    world_log = _snapshot(db)[3]
    report = verify_log([t.encode() for t in world_log])
    assert report.ok, report.problems
