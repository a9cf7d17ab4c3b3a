"""Each server process's view of its sites' kits (issue 9): kept fresh by the site's change
counter, which every change to a kit bumps whoever makes it; unsealed once, not at every
randomisation; never polluted by work that was not committed (R-BLIND-1, R-BLIND-2, R-KIT)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from randomizer import create_app
from randomizer.db import Database
from randomizer.domain.kits import ALLOCATED, AVAILABLE, QUARANTINED
from randomizer.models import Kit, Participant, Site
from randomizer.roles import Actor
from randomizer.services import kits as kit_service
from randomizer.services.kit_stock import ChangedKit, SiteStock, distinct_indices
from tests.conftest import ApiClient, make_trial_database
from tests.randomizer.test_blinding import ARM_IDS, Undo, kit_arm, site_kits_by_arm

SITE = "101"
SYSTEM = Actor(name="system", role="admin", site=None)


def versions(session: Any, site: str = SITE) -> tuple[int, dict[str, int]]:
    """The site's kit_version, and each of its kits' site_version."""
    site_version = session.scalars(select(Site.kit_version).where(Site.id == site)).one()
    stamps = dict(
        session.execute(select(Kit.kit_number, Kit.site_version).where(Kit.site_id == site)).all()
    )
    return site_version, stamps


# The counter: bumped by the database, whoever writes -----------------------------------------


def test_every_change_to_a_sites_kits_bumps_its_counter_and_stamps_the_kit(db, ctx):
    with pytest.raises(Undo), db.transaction() as session:
        before, stamps = versions(session)
        other_site, _ = versions(session, "102")
        assert before >= 1 and set(stamps.values()) <= set(range(1, before + 1))
        first, second, third = sorted(stamps)[:3]

        # An ORM change of one kit (as a status change does).
        kit = session.scalars(select(Kit).where(Kit.kit_number == first)).one()
        kit.status = QUARANTINED
        session.flush()
        after_one, stamps = versions(session)
        assert after_one > before and stamps[first] == after_one

        # One statement over two kits (as an allocation does): both stamped above it.
        session.execute(
            update(Kit).where(Kit.kit_number.in_([second, third])).values(status=QUARANTINED)
        )
        after_two, stamps = versions(session)
        assert after_two > after_one
        assert after_one < stamps[second] <= after_two and after_one < stamps[third] <= after_two

        # A receipt: the new kits are stamped, the counter moves.
        site = session.get_one(Site, SITE)
        numbers = kit_service.stock_site(
            session, ctx, SYSTEM, site, 2, "LOT-2", date.today() + timedelta(days=400)
        )
        after_receipt, stamps = versions(session)
        assert after_receipt > after_two
        assert all(after_two < stamps[number] <= after_receipt for number in numbers)
        # Nothing else moved.
        assert versions(session, "102")[0] == other_site
        raise Undo


def test_a_kit_never_leaves_its_site_and_is_never_deleted(db):
    with db.transaction() as session:
        kit = session.scalars(select(Kit).where(Kit.site_id == SITE).limit(1)).one()
        with pytest.raises(IntegrityError, match="never leaves"), session.begin_nested():
            session.execute(update(Kit).where(Kit.id == kit.id).values(site_id="102"))
        with pytest.raises(IntegrityError, match="never deleted"), session.begin_nested():
            session.execute(delete(Kit).where(Kit.id == kit.id))
        assert session.get_one(Kit, kit.id).site_id == SITE


# The view: fresh across processes, unsealed once ---------------------------------------------


def second_process(db, trial_db, clock) -> ApiClient:
    """Another server process over the same database: its own app, its own view of kits."""
    app = create_app(
        {"settings": trial_db.settings, "database": db, "clock": clock, "TESTING": True}
    )
    return ApiClient(app.test_client(), trial_db.tokens, clock)


def set_status(db, numbers: list[str], status: str) -> None:
    """A change made behind the service's back (a person with a SQL prompt)."""
    with db.transaction() as session:
        session.execute(update(Kit).where(Kit.kit_number.in_(numbers)).values(status=status))


@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.requirement("R-KIT")
def test_a_process_sees_every_change_other_processes_made_to_the_sites_kits(
    api, db, ctx, trial_db, clock
):
    other = second_process(db, trial_db, clock)
    given: Counter[str] = Counter()

    def randomise(client: ApiClient, number: str) -> Any:
        response = client.screen_and_randomize(number, weight_kg=70)
        if response.status_code == 201:
            given.update(response.get_json()["kits"])
        return response

    assert randomise(api, "101-0001").status_code == 201  # this process reads the site
    # The other process allocates kits; this one must not give them again.
    assert randomise(other, "101-0002").status_code == 201
    assert randomise(other, "101-0003").status_code == 201
    # Someone quarantines all but three available kits of one arm.
    available = {
        arm: [kit.kit_number for kit in kits if kit.status == AVAILABLE]
        for arm, kits in site_kits_by_arm(db, ctx, SITE).items()
    }
    withheld = available[ARM_IDS[0]][3:]
    set_status(db, withheld, QUARANTINED)

    short = randomise(api, "101-0004")
    assert short.status_code == 409, short.get_json()
    assert short.get_json()["type"] == "/problems/insufficient-supply"

    set_status(db, withheld, AVAILABLE)
    for n in range(5, 15):
        client = api if n % 3 else other
        assert randomise(client, f"101-{n:04d}").status_code == 201
    # No kit given twice, each to a participant of its arm, and all given are allocated.
    assert max(given.values()) == 1
    with db.reading() as session:
        allocated = session.scalars(
            select(Kit).where(Kit.site_id == SITE, Kit.status == ALLOCATED)
        ).all()
        assert {kit.kit_number for kit in allocated} == set(given)
        for kit in allocated:
            owner = session.get_one(Participant, kit.participant_id)
            from randomizer.services.participants import participant_arm

            assert kit_arm(ctx, kit) == participant_arm(ctx, owner)


def count_kit_unseals(monkeypatch, app: Any) -> Counter[str]:
    """Counts the seals the app's process opens, by kind."""
    sealer = app.extensions["sealroom"].ctx.sealer
    opened: Counter[str] = Counter()
    unseal = sealer.unseal_arm

    def counting(sealed: Any, kind: str, object_id: str) -> str:
        opened[kind] += 1
        return unseal(sealed, kind, object_id)

    monkeypatch.setattr(sealer, "unseal_arm", counting)
    return opened


def test_a_randomisation_unseals_only_the_kits_changed_since_its_process_last_looked(
    api, app, db, monkeypatch
):
    opened = count_kit_unseals(monkeypatch, app)
    with db.reading() as session:
        stock = session.scalar(
            select(Kit.id).where(Kit.site_id == SITE, Kit.status == AVAILABLE).limit(1)
        )
    assert stock

    assert api.screen_and_randomize("101-0001", weight_kg=70).status_code == 201
    first = opened["kit"]
    assert first >= 400  # the first look at the site opens every kit there
    for n in range(2, 5):
        assert api.screen_and_randomize(f"101-{n:04d}", weight_kg=70).status_code == 201
    # Later ones open no kit: those changed since (the last kits given) are known already.
    assert opened["kit"] == first
    assert opened["slot"] == 4


def test_a_transaction_that_wrote_kits_reads_them_without_touching_the_shared_view(db, ctx):
    with db.transaction() as session:
        before = kit_service.site_supply(session, ctx, SITE)
        counts = {arm: before.count(arm) for arm in ARM_IDS}
    shared = ctx.kit_stock.site(SITE, ARM_IDS)
    version = shared.version

    with pytest.raises(Undo), db.transaction() as session:
        for n, arm in enumerate(ARM_IDS * 5):
            number = f"K9999-{n:04d}"
            sealed = ctx.sealer.seal_arm(arm, kit_service.KIT_SEAL_KIND, number).to_text()
            expires = date.today() + timedelta(days=400)
            session.add(
                Kit(
                    kit_number=number,
                    site_id=SITE,
                    status=AVAILABLE,
                    lot="LOT-2",
                    expires_on=expires,
                    sealed_arm=sealed,
                )
            )
        supply = kit_service.site_supply(session, ctx, SITE)
        # It sees its own shipment...
        assert {arm: supply.count(arm) for arm in ARM_IDS} == {a: c + 5 for a, c in counts.items()}
        raise Undo
    # ...which was rolled back: the shared view never held it.
    assert ctx.kit_stock.site(SITE, ARM_IDS) is shared and shared.version == version
    with db.transaction() as session:
        after = kit_service.site_supply(session, ctx, SITE)
        assert {arm: after.count(arm) for arm in ARM_IDS} == counts


# The view's bookkeeping, against a plain recount ----------------------------------------------

EXPIRIES = [date(2030, 1, day) for day in (1, 2, 3)]
KITS = [f"K0000-{n:04d}" for n in range(12)]
change = st.tuples(
    st.sampled_from(KITS),
    st.sampled_from([AVAILABLE, AVAILABLE, ALLOCATED, QUARANTINED]),
    st.sampled_from(EXPIRIES),
)


@given(
    batches=st.lists(st.lists(change, max_size=6), max_size=8),
    cutoff=st.sampled_from([date(2029, 12, 31), *EXPIRIES]),
    seed=st.integers(0, 2**32),
)
def test_the_view_counts_and_chooses_as_a_recount_of_the_kits_would(batches, cutoff, seed):
    arms = {number: ARM_IDS[index % 2] for index, number in enumerate(KITS)}
    truth: dict[str, tuple[str, date]] = {}
    stock = SiteStock(ARM_IDS)
    unsealed: list[str] = []

    def arm_of(kit: ChangedKit) -> str:
        unsealed.append(kit.kit_number)
        return arms[kit.kit_number]

    for version, batch in enumerate(batches, start=1):
        latest = {number: (status, expires) for number, status, expires in batch}
        stock.apply(
            [ChangedKit(n, s, e, "sealed") for n, (s, e) in latest.items()], version, arm_of
        )
        truth.update(latest)
        assert stock.version == version
    rng = random.Random(seed)
    for arm in ARM_IDS:
        expected = {
            n
            for n, (status, expires) in truth.items()
            if status == AVAILABLE and expires > cutoff and arms[n] == arm
        }
        assert stock.count(arm, cutoff) == len(expected)
        chosen = stock.choose(arm, cutoff, len(expected), rng)
        assert len(chosen) == len(set(chosen)) and set(chosen) == expected
    # A kit's arm is unsealed when it comes into stock, not again while it stays there.
    assert len(unsealed) <= sum(len(batch) for batch in batches)


@given(population=st.integers(0, 10**6), data=st.data())
def test_distinct_indices_are_distinct_and_in_range(population, data):
    count = data.draw(st.integers(0, min(population, 50)))
    drawn = distinct_indices(random.Random(data.draw(st.integers())), population, count)
    assert len(drawn) == len(set(drawn)) == count
    assert all(0 <= index < population for index in drawn)


def test_distinct_indices_draw_every_subset_about_equally():
    rng = random.Random(7)
    seen = Counter(frozenset(distinct_indices(rng, 5, 2)) for _ in range(20000))
    # C(5, 2) = 10 subsets, 2,000 each expected (sd about 42).
    assert len(seen) == 10 and all(1800 < n < 2200 for n in seen.values())


def test_a_kit_written_without_the_site_lock_is_stamped_after_the_lock_holders(
    backend, scratch, tmp_path
):
    """PostgreSQL: a writer that skips locks.lock_site (a person at psql) still gets a
    version above that of a transaction that held the site's lock while it wrote."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    import threading

    from sqlalchemy import text

    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=4)
    engine = Database(trial.url).engine
    holder, intruder = engine.connect(), engine.connect()
    try:
        holder.begin()
        holder.execute(text("SELECT 1 FROM site WHERE id = '101' FOR UPDATE"))
        first, second = holder.scalars(
            text("SELECT kit_number FROM kit WHERE site_id = '101' ORDER BY id LIMIT 2")
        ).all()
        intruder.begin()

        def write() -> None:
            intruder.execute(text("UPDATE kit SET lot = 'X' WHERE kit_number = :n"), {"n": second})
            intruder.commit()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # it waits for the holder of the site's row
        holder.execute(text("UPDATE kit SET lot = 'Y' WHERE kit_number = :n"), {"n": first})
        holder.commit()
        thread.join(10)
        with engine.connect() as reader:
            site = reader.scalar(text("SELECT kit_version FROM site WHERE id = '101'"))
            stamps = dict(
                reader.execute(
                    text("SELECT kit_number, site_version FROM kit WHERE kit_number IN (:a, :b)"),
                    {"a": first, "b": second},
                ).all()
            )
        assert stamps[first] < stamps[second] == site
    finally:
        holder.close()
        intruder.close()
        engine.dispose()
