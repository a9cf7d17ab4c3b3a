"""The blind: nothing a blinded person or a database reader sees depends on an arm.

URS §1 R-BLIND-1 (responses, their size, the queries run), R-BLIND-2 (supply refusals),
§3 R-LIST-3 and §5 R-SEAL (arms stored only sealed, bound to their row), §4 R-KIT (kit
numbers, row ids, creation order, lot and expiry; allocation of the right kits).
"""

from __future__ import annotations

import base64
import re
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import event, literal_column, select, update

from audit.entry import parse_entry
from keys import (
    SealedArm,
    UnsealError,
    WrappedDataKey,
    load_master_keys,
    load_signing_key,
    unwrap_data_key,
)
from randomizer.models import (
    AuditEntry,
    Base,
    DataKey,
    Kit,
    Participant,
    Slot,
    Stratum,
    Trial,
)
from randomizer.rendering import render_json
from randomizer.roles import Actor
from randomizer.services.inputs import Submission
from randomizer.services.participants import RandomizationRequest, randomize_participant
from tests.conftest import ELIGIBLE

ARM_IDS = ("igpro20", "placebo")
ARM_LABELS = ("IgPro20", "Placebo")
#: Site 101's strata (region north_america): prior_ig -> stratum number.
SITE_101_STRATA = {"yes": 1, "no": 2}
#: The one column allowed to name an arm: the trial definition the trial was set up from,
#: which declares the arms (URS §2). It says which arms exist, never who got which.
DEFINITION_COLUMN = ("trial", "definition_toml")
KIT_NUMBER = re.compile(r"^K\d{4}-\d{4}$")


def names_an_arm(text: str) -> bool:
    """True if ``text`` contains an arm id or label, in any case."""
    lowered = text.lower()
    return any(word.lower() in lowered for word in ARM_IDS + ARM_LABELS)


@pytest.mark.requirement("R-SEAL")
def test_the_arm_words_searched_for_are_the_trials_arms(ctx):
    assert tuple((arm.id, arm.label) for arm in ctx.definition.arms) == tuple(
        zip(ARM_IDS, ARM_LABELS, strict=True)
    )


# Helpers ------------------------------------------------------------------------------------

#: Twelve participants over the three demo sites and both screening strata:
#: (screening number, site, coordinator, prior_ig, weight).
ENROLMENT = [
    (f"{site}-BL-{prior_ig}-{n}", site, f"coordinator-{site}", prior_ig, weight)
    for site in ("101", "102", "201")
    for prior_ig in ("yes", "no")
    for n, weight in enumerate((45, 132.5))
]
#: Who may read a participant of each site (URS §8), all blinded.
READERS = {
    "101": ("coordinator-101", "investigator-101", "pharmacist-101"),
    "102": ("coordinator-102", "pharmacist-102"),
    "201": ("coordinator-201", "pharmacist-201"),
}
SPONSOR_SIDE_READERS = ("medical-monitor", "sponsor")


def enrol(api) -> dict[str, Any]:
    """Screen and randomise ENROLMENT through the API; the responses by screening number."""
    responses = {}
    for number, site, user, prior_ig, weight in ENROLMENT:
        response = api.screen_and_randomize(
            number, user=user, site=site, prior_ig=prior_ig, weight_kg=weight
        )
        assert response.status_code == 201, response.get_json()
        responses[number] = response
    return responses


def read(db, query) -> list[Any]:
    """The query's rows, loaded and detached (``reading()`` rolls back, which expires them)."""
    with db.reading() as session:
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows


def arm_of(db, ctx, screening_number: str) -> str:
    """The participant's arm, unsealed from its row (the test may know it; nobody blinded)."""
    with db.reading() as session:
        sealed = session.scalars(
            select(Participant.sealed_arm).where(Participant.screening_number == screening_number)
        ).one()
    return ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "participant", screening_number)


def kit_arm(ctx, kit: Kit) -> str:
    return ctx.sealer.unseal_arm(SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number)


def site_kits_by_arm(db, ctx, site: str) -> dict[str, list[Kit]]:
    kits = read(db, select(Kit).where(Kit.site_id == site).order_by(Kit.kit_number))
    by_arm: dict[str, list[Kit]] = {arm: [] for arm in ARM_IDS}
    for kit in kits:
        by_arm[kit_arm(ctx, kit)].append(kit)
    return by_arm


def next_slot_arm(db, ctx, stratum_number: int) -> str:
    with db.reading() as session:
        position = session.scalar(
            select(Stratum.next_position).where(Stratum.number == stratum_number)
        )
        number, sealed = session.execute(
            select(Slot.randomization_number, Slot.sealed_arm).where(
                Slot.stratum_number == stratum_number, Slot.position == position
            )
        ).one()
    return ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "slot", number)


def set_kits(db, kits: list[Kit], **values: Any) -> None:
    with db.transaction() as session:
        session.execute(update(Kit).where(Kit.id.in_([kit.id for kit in kits])).values(**values))


# R-SEAL, R-LIST-3: no arm in clear anywhere -------------------------------------------------


@pytest.mark.requirement("R-SEAL")
@pytest.mark.requirement("R-LIST-3")
def test_no_stored_row_and_no_audit_entry_names_an_arm(api, db):
    enrol(api)

    hits, rows = [], Counter()
    with db.reading() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                rows[table.name] += 1
                for column, value in row.items():
                    if (table.name, column) != DEFINITION_COLUMN and names_an_arm(str(value)):
                        hits.append((table.name, column, str(value)[:80]))
        log = session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)).all()
        definition = session.scalars(select(Trial.definition_toml)).one()

    assert hits == []
    assert [entry for entry in log if names_an_arm(entry)] == []
    # The search covered what matters: every slot, kit and participant, and the trail of
    # this enrolment (12 screenings and 12 randomisations).
    assert rows["slot"] >= 1200 and rows["kit"] >= 1200 and rows["participant"] == 12
    actions = Counter(parse_entry(entry.encode())["action"] for entry in log)
    assert actions["participant.screened"] == actions["participant.randomized"] == 12
    # The one column left out does name the arms: the exclusion is needed, and the only one.
    assert names_an_arm(definition)


@pytest.mark.requirement("R-SEAL")
def test_every_sealed_arm_has_one_length_whatever_the_arm(api, db, ctx):
    enrol(api)
    lengths: dict[str, set[int]] = defaultdict(set)
    with db.reading() as session:
        for kit in session.scalars(select(Kit)):
            lengths[kit_arm(ctx, kit)].add(len(kit.sealed_arm))
        for slot in session.scalars(select(Slot)):
            arm = ctx.sealer.unseal_arm(
                SealedArm.from_text(slot.sealed_arm), "slot", slot.randomization_number
            )
            lengths[arm].add(len(slot.sealed_arm))

    assert set(lengths) == set(ARM_IDS)
    assert lengths["igpro20"] == lengths["placebo"] and len(lengths["igpro20"]) == 1


def secret_forms(secret: bytes) -> list[bytes]:
    """A secret as raw bytes, hex and base64 (standard and URL-safe, unpadded)."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


@pytest.mark.requirement("R-SEAL")
def test_a_copy_of_the_database_holds_no_key_that_would_open_a_seal(db, trial_db):
    keys_dir = trial_db.settings.keys_dir
    ring = load_master_keys(keys_dir, {})
    with db.reading() as session:
        trial = session.scalars(select(Trial)).one()
        stored_key = session.get_one(DataKey, trial.data_key_id)
        data_key = unwrap_data_key(
            ring,
            WrappedDataKey(stored_key.id, stored_key.master_key_id, stored_key.wrapped),
            trial.id,
        )
        values = [
            value if isinstance(value, bytes) else str(value).encode()
            for table in Base.metadata.sorted_tables
            for row in session.execute(select(table))
            for value in row
        ]
    (master_file,) = (keys_dir / "master").glob("*.key")
    master_key = base64.b64decode(master_file.read_bytes())
    signing_key = load_signing_key(keys_dir).private_bytes_raw()
    assert len(data_key) == len(master_key) == len(signing_key) == 32

    for name, secret in (("data", data_key), ("master", master_key), ("signing", signing_key)):
        for form in secret_forms(secret):
            assert not any(form in value for value in values), name


SEALED_ROWS = {
    "slot": (Slot, Slot.randomization_number),
    "kit": (Kit, Kit.kit_number),
    "participant": (Participant, Participant.screening_number),
}


@pytest.mark.requirement("R-SEAL")
@pytest.mark.parametrize("kind", sorted(SEALED_ROWS))
def test_a_sealed_arm_copied_onto_another_row_does_not_open_there(api, db, ctx, kind):
    model, object_id = SEALED_ROWS[kind]
    for number in ("101-COPY-1", "101-COPY-2", "101-COPY-3"):
        assert api.screen_and_randomize(number).status_code == 201
    rows = read(
        db, select(model).where(model.sealed_arm.is_not(None)).order_by(object_id).limit(20)
    )
    arms = [
        ctx.sealer.unseal_arm(
            SealedArm.from_text(row.sealed_arm), kind, getattr(row, object_id.key)
        )
        for row in rows
    ]
    # Copy a seal onto a row of the OTHER arm: the copy that would move an allocation.
    source = rows[0]
    target = next(row for row, arm in zip(rows, arms, strict=True) if arm != arms[0])
    source_id, target_id = getattr(source, object_id.key), getattr(target, object_id.key)

    with db.transaction() as session:
        session.execute(
            update(model)
            .where(object_id == target_id)
            .values(sealed_arm=source.sealed_arm)
            .execution_options(synchronize_session=False)
        )
        copied = session.scalars(select(model.sealed_arm).where(object_id == target_id)).one()

    assert copied == source.sealed_arm
    with pytest.raises(UnsealError):
        ctx.sealer.unseal_arm(SealedArm.from_text(copied), kind, target_id)
    # The seal itself is intact: it still opens as what it was made for.
    assert ctx.sealer.unseal_arm(SealedArm.from_text(copied), kind, source_id) == arms[0]


@pytest.mark.requirement("R-SEAL")
def test_a_slots_seal_copied_onto_its_participant_does_not_open_as_the_participant(api, db, ctx):
    response = api.screen_and_randomize("101-COPY-4")
    number = response.get_json()["randomization_number"]
    with db.reading() as session:
        slot_seal = session.scalars(
            select(Slot.sealed_arm).where(Slot.randomization_number == number)
        ).one()
    sealed = SealedArm.from_text(slot_seal)

    with pytest.raises(UnsealError):
        ctx.sealer.unseal_arm(sealed, "participant", "101-COPY-4")
    # Bound to the kind too: the same object id under another kind does not open.
    with pytest.raises(UnsealError):
        ctx.sealer.unseal_arm(sealed, "participant", number)
    assert ctx.sealer.unseal_arm(sealed, "slot", number) == arm_of(db, ctx, "101-COPY-4")


# R-BLIND-1: what blinded roles are told -----------------------------------------------------


@pytest.mark.requirement("R-BLIND-1")
def test_no_response_to_a_blinded_role_contains_an_arm(api):
    randomisations = enrol(api)

    for number, site, user, _prior_ig, weight in ENROLMENT:
        assert not names_an_arm(randomisations[number].get_data(as_text=True))
        for reader in READERS[site] + SPONSOR_SIDE_READERS:
            shown = api.get(f"/participants/{number}", reader)
            assert shown.status_code == 200, (reader, shown.get_json())
            assert shown.get_json()["randomization_number"]
            assert not names_an_arm(shown.get_data(as_text=True)), (number, reader)
        again = api.randomize(number, user=user, weight_kg=weight)
        assert again.status_code == 409
        assert not names_an_arm(again.get_data(as_text=True))


def response_length_without_position(response) -> int:
    """The randomisation response's length less the parts that follow the log's position.

    The receipt's entry, checkpoint and inclusion proof depend on where in the log the
    entry landed (its seq, the tree's size and shape), which differs from one participant
    to the next whatever the arms; they are compared separately below. Kit numbers,
    randomisation numbers and times have fixed lengths and stay in.
    """
    receipt = response.get_json()["receipt"]
    positional = (receipt[key] for key in ("entry", "checkpoint", "inclusion_proof", "seq"))
    encoded = sum(len(render_json(value)) for value in positional)  # as the response encodes
    return len(response.get_data()) - encoded


@pytest.mark.requirement("R-BLIND-1")
def test_responses_have_the_same_shape_and_size_whatever_the_arm(api, db, ctx):
    by_arm: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for n in range(8):
        number = f"101-SIZE-{n}"
        response = api.screen_and_randomize(number, weight_kg=70)
        assert response.status_code == 201
        by_arm[arm_of(db, ctx, number)].append((number, response))
        if len(by_arm) == 2 and n >= 3:
            break
    assert set(by_arm) == set(ARM_IDS)

    def shape(number: str, response) -> dict[str, Any]:
        body = response.get_json()
        receipt = body["receipt"]
        entry = parse_entry(receipt["entry"].encode())
        checkpoint_size = receipt["checkpoint"].split("\n")[1]
        shown = api.get(f"/participants/{number}", "coordinator-101")
        return {
            "keys": tuple(sorted(body)),
            "receipt keys": tuple(sorted(receipt)),
            "kits": len(body["kits"]),
            "length": response_length_without_position(response),
            "entry length": len(receipt["entry"]) - len(str(entry["seq"])),
            "checkpoint length": len(receipt["checkpoint"]) - len(checkpoint_size),
            "sealed nonce": len(entry["data"]["sealed_arm"]["nonce"]),
            "sealed ciphertext": len(entry["data"]["sealed_arm"]["ciphertext"]),
            "participant view length": len(shown.get_data()),
        }

    shapes = {
        arm: {tuple(sorted(shape(*item).items(), key=str)) for item in items}
        for arm, items in by_arm.items()
    }
    # One shape for every participant of either arm.
    assert len(shapes["igpro20"]) == 1
    assert shapes["igpro20"] == shapes["placebo"]


class Undo(Exception):
    """Rolls a transaction back on purpose."""


def statements_of_one_randomisation(db, ctx, number: str) -> tuple[str, list[str]]:
    """Randomise ``number`` at site 101 and roll it back: its arm and the SQL it ran."""
    statements: list[str] = []

    def record(_connection, _cursor, statement, _parameters, _context, _many) -> None:
        # Savepoint names count up on the connection; they are not part of the work.
        statements.append(re.sub(r"sa_savepoint_\d+", "sa_savepoint_N", statement))

    actor = Actor(name="coordinator-101", role="coordinator", site="101")
    request = RandomizationRequest(
        Decimal(70),
        {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in ELIGIBLE.items()},
    )
    with pytest.raises(Undo), db.transaction() as session:
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            randomize_participant(session, ctx, actor, number, Submission.of(request))
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        sealed = session.scalars(
            select(Participant.sealed_arm).where(Participant.screening_number == number)
        ).one()
        arm = ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "participant", number)
        raise Undo
    return arm, statements


@pytest.mark.requirement("R-BLIND-1")
def test_a_randomisation_runs_the_same_statements_whatever_the_arm(api, db, ctx):
    """Both runs start from the same state (same stratum, slot, log size, weight, kits):
    between them, only the arm sealed in the next slot is changed."""
    assert api.screen("101-SQL-1").status_code == 201
    first_arm, first = statements_of_one_randomisation(db, ctx, "101-SQL-1")
    other_arm = next(arm for arm in ARM_IDS if arm != first_arm)
    with db.transaction() as session:
        stratum = session.get_one(Stratum, SITE_101_STRATA["no"])
        slot = session.scalars(
            select(Slot).where(
                Slot.stratum_number == stratum.number, Slot.position == stratum.next_position
            )
        ).one()
        slot.sealed_arm = ctx.sealer.seal_arm(
            other_arm, "slot", slot.randomization_number
        ).to_text()

    second_arm, second = statements_of_one_randomisation(db, ctx, "101-SQL-1")

    assert {first_arm, second_arm} == set(ARM_IDS)
    # The whole randomisation was seen: its kits, its slot and its audit entry.
    for write in ("UPDATE kit ", "UPDATE slot ", "INSERT INTO audit_entry "):
        assert any(statement.startswith(write) for statement in first), write
    assert first == second


# R-KIT: kits say nothing of their arm -------------------------------------------------------


def all_kits_by_arm(db, ctx) -> dict[str, list[Kit]]:
    kits = read(db, select(Kit))
    by_arm: dict[str, list[Kit]] = {arm: [] for arm in ARM_IDS}
    for kit in kits:
        by_arm[kit_arm(ctx, kit)].append(kit)
    return by_arm


@pytest.mark.requirement("R-KIT")
def test_kit_numbers_of_both_arms_share_one_format_and_neither_parity_nor_range_separates_them(
    db, ctx
):
    numbers = {
        arm: [kit.kit_number for kit in kits] for arm, kits in all_kits_by_arm(db, ctx).items()
    }
    assert all(len(numbers[arm]) == 600 for arm in ARM_IDS)

    for arm in ARM_IDS:
        assert all(KIT_NUMBER.match(number) for number in numbers[arm])
        digits = [number[1:].replace("-", "") for number in numbers[arm]]
        # Every last digit (so both parities), every first digit and every digit sum
        # modulo 10 (a check digit) occurs in each arm.
        assert {d[-1] for d in digits} == set("0123456789"), arm
        assert {d[0] for d in digits} == set("0123456789"), arm
        assert {sum(map(int, d)) % 10 for d in digits} == set(range(10)), arm
    values = {arm: sorted(int(n[1:].replace("-", "")) for n in numbers[arm]) for arm in ARM_IDS}
    active, placebo = values["igpro20"], values["placebo"]
    # The ranges overlap, and each arm's median lies inside the other's range.
    assert placebo[0] < active[len(active) // 2] < placebo[-1]
    assert active[0] < placebo[len(placebo) // 2] < active[-1]


@pytest.mark.requirement("R-KIT")
def test_kit_row_ids_are_random_uuids_for_both_arms(db, ctx):
    for arm, kits in all_kits_by_arm(db, ctx).items():
        assert all(uuid.UUID(kit.id).version == 4 for kit in kits), arm


def runs(arms: list[str]) -> int:
    """Number of maximal runs of one arm in a sequence (Wald-Wolfowitz)."""
    return 1 + sum(1 for a, b in pairwise(arms) if a != b)


@pytest.mark.requirement("R-KIT")
@pytest.mark.parametrize("order", ["insertion", "row id"])
@pytest.mark.parametrize("site", ["101", "102", "201"])
def test_kits_are_stored_in_an_order_that_does_not_follow_the_arm(db, ctx, backend, order, site):
    physical = literal_column("rowid" if backend == "sqlite" else "ctid")
    kits = read(
        db,
        select(Kit)
        .where(Kit.site_id == site)
        .order_by(physical if order == "insertion" else Kit.id),
    )
    arms = [kit_arm(ctx, kit) for kit in kits]

    assert Counter(arms) == {"igpro20": 200, "placebo": 200}
    assert len(set(arms[:20])) == 2
    # 400 kits in random order run in about 201 runs (sd 10); sorted by arm gives 2,
    # alternating gives 400. 120 to 280 is eight standard deviations either side.
    assert 120 <= runs(arms) <= 280


@pytest.mark.requirement("R-KIT")
@pytest.mark.parametrize("site", ["101", "102", "201"])
def test_lot_and_expiry_are_the_same_for_both_arms(db, ctx, site):
    kits = site_kits_by_arm(db, ctx, site)

    lots = {arm: {(kit.lot, kit.expires_on) for kit in kits[arm]} for arm in ARM_IDS}

    assert lots["igpro20"] == lots["placebo"]
    assert len(lots["igpro20"]) == 1


# R-BLIND-2: supply is checked for every arm, before the allocation ---------------------------


@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.requirement("R-BLIND-1")
def test_a_site_short_of_one_arm_refuses_every_randomisation_whatever_the_next_slot(api, db, ctx):
    next_arms = {prior: next_slot_arm(db, ctx, n) for prior, n in SITE_101_STRATA.items()}
    assert set(next_arms.values()) == set(ARM_IDS)  # one stratum's next slot is each arm
    for prior_ig in SITE_101_STRATA:
        assert api.screen(f"101-SHORT-{prior_ig}", prior_ig=prior_ig).status_code == 201
    kits = site_kits_by_arm(db, ctx, "101")
    refusals = []

    for short_arm in ARM_IDS:
        # Three kits of one arm left (a 70 kg participant needs 4), all 200 of the other.
        withheld = kits[short_arm][3:]
        set_kits(db, withheld, status="quarantined")
        for prior_ig in SITE_101_STRATA:
            response = api.randomize(f"101-SHORT-{prior_ig}", weight_kg=70)
            assert response.status_code == 409, response.get_json()
            assert response.get_json()["type"] == "/problems/insufficient-supply"
            assert not names_an_arm(response.get_data(as_text=True))
            refusals.append(response.get_data())
        set_kits(db, withheld, status="available")

    # Word for word the same refusal, whichever arm is short and whichever arm was next.
    assert len(set(refusals)) == 1
    # Nothing was consumed: with the stock back, both get their stratum's first slot.
    for prior_ig, stratum in SITE_101_STRATA.items():
        response = api.randomize(f"101-SHORT-{prior_ig}", weight_kg=70)
        assert response.status_code == 201
        assert response.get_json()["randomization_number"] == f"R{stratum:02d}-0001"


# R-KIT: the right kits are allocated --------------------------------------------------------


@pytest.mark.requirement("R-KIT")
def test_kits_allocated_are_of_the_participants_arm_and_at_its_site(api, db, ctx):
    responses = enrol(api)

    with db.reading() as session:
        for number, site, _user, _prior_ig, _weight in ENROLMENT:
            participant = session.scalars(
                select(Participant).where(Participant.screening_number == number)
            ).one()
            kits = session.scalars(select(Kit).where(Kit.participant_id == participant.id)).all()
            assert sorted(kit.kit_number for kit in kits) == sorted(
                responses[number].get_json()["kits"]
            )
            arm = arm_of(db, ctx, number)
            for kit in kits:
                assert (kit.site_id, kit.status, kit.visit) == (site, "allocated", "week1")
                assert kit_arm(ctx, kit) == arm


@pytest.mark.requirement("R-KIT")
def test_kits_are_chosen_at_random_not_by_number_row_id_or_insertion_order(api, db, ctx, backend):
    # Read the orders first: PostgreSQL moves an updated row, so ctid order is insertion
    # order only until the kits are allocated.
    physical = literal_column("rowid" if backend == "sqlite" else "ctid")
    orders = {
        name: read(db, select(Kit).where(Kit.site_id == "101").order_by(key))
        for name, key in (
            ("kit number", Kit.kit_number),
            ("row id", Kit.id),
            ("insertion", physical),
        )
    }

    response = api.screen_and_randomize("101-PICK-1", weight_kg=70)

    arm = arm_of(db, ctx, "101-PICK-1")
    given = set(response.get_json()["kits"])
    orders = {
        name: [kit.kit_number for kit in kits if kit_arm(ctx, kit) == arm]
        for name, kits in orders.items()
    }

    assert len(given) == 4
    for name, ordered in orders.items():
        # 4 kits drawn at random from 200 are the first or last 4 of an order with
        # probability 2 / C(200, 4), about 3e-8.
        assert given not in (set(ordered[:4]), set(ordered[-4:])), name


@pytest.mark.requirement("R-KIT")
def test_kits_within_the_do_not_dispense_window_are_never_allocated(api, db, ctx, clock):
    today = clock.today()
    window = ctx.definition.do_not_dispense_days
    assert window == 30
    kits = site_kits_by_arm(db, ctx, "101")
    dispensable = {arm: kits[arm][:4] for arm in ARM_IDS}
    for arm in ARM_IDS:
        set_kits(db, dispensable[arm], expires_on=today + timedelta(days=window + 1))
        # Fine expiry but not available: not candidates either.
        set_kits(
            db, kits[arm][4:6], expires_on=today + timedelta(days=window + 1), status="damaged"
        )
        # The rest expire on the window's last day or earlier: inside the window.
        for n, offset in enumerate((window, window - 1, 1, 0, -5)):
            set_kits(db, kits[arm][6 + n :: 5], expires_on=today + timedelta(days=offset))

    response = api.screen_and_randomize("101-EXP-1", weight_kg=70)

    assert response.status_code == 201, response.get_json()
    arm = arm_of(db, ctx, "101-EXP-1")
    assert set(response.get_json()["kits"]) == {kit.kit_number for kit in dispensable[arm]}
    # The participant's arm has no dispensable kit left at 101: the next one is refused,
    # whichever arm its slot holds.
    refused = api.screen_and_randomize("101-EXP-2", weight_kg=70)
    assert refused.status_code == 409
    assert refused.get_json()["type"] == "/problems/insufficient-supply"
