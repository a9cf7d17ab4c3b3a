"""Depot stock, shipments, receipts, resupply, expiry and quarantine (R-SHIP, R-KIT, R-KIT-3,
R-BLIND-1, R-BLIND-2), through the HTTP API and the services, on every backend."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from keys import SealedArm
from randomizer.domain.kits import AVAILABLE
from randomizer.domain.supply import KitGeneration
from randomizer.models import AuditEntry, Kit, OutboxMessage, Shipment, User
from randomizer.roles import SYSTEM
from randomizer.services import shipments
from tests.randomizer.test_blinding import names_an_arm

SITE = "101"


def arm_of_kit(ctx: Any, kit: Kit) -> str:
    return ctx.sealer.unseal_arm(SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number)


def kits_where(db: Any, *clauses: Any) -> list[Kit]:
    with db.reading() as session:
        kits = list(session.scalars(select(Kit).where(*clauses)))
        session.expunge_all()
        return kits


def generate(db: Any, ctx: Any, lot: str, count: int, expires_on: date) -> list[str]:
    with db.transaction() as session:
        return shipments.generate_kits(session, ctx, SYSTEM, KitGeneration(lot, count, expires_on))


def leave_per_arm(db: Any, ctx: Any, site: str, per_arm: int) -> None:
    """Take all but ``per_arm`` available kits of every arm at ``site`` out of stock (lost)."""
    kept: Counter[str] = Counter()
    lose = []
    for kit in sorted(kits_where(db, Kit.site_id == site, Kit.status == AVAILABLE), key=str):
        arm = arm_of_kit(ctx, kit)
        if kept[arm] < per_arm:
            kept[arm] += 1
        else:
            lose.append(kit.id)
    with db.transaction() as session:
        session.execute(update(Kit).where(Kit.id.in_(lose)).values(status="lost"))


def actions(db: Any) -> list[str]:
    with db.reading() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))


def entries(db: Any, action: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        )
        return [json.loads(row) for row in rows]


def snapshot(db: Any) -> tuple[Any, ...]:
    with db.reading() as session:
        kits = sorted(session.execute(select(Kit.kit_number, Kit.status, Kit.site_id)).all())
        ships = sorted(session.execute(select(Shipment.id, Shipment.status)).all())
        return tuple(kits), tuple(ships)


# Depot stock -------------------------------------------------------------------------------


@pytest.mark.requirement("R-KIT")
@pytest.mark.requirement("R-SHIP")
def test_a_generated_lot_is_depot_stock_balanced_across_arms_in_random_order(db, ctx):
    expiry = ctx.today() + timedelta(days=400)
    numbers = generate(db, ctx, "L-GEN-1", 40, expiry)
    kits = kits_where(db, Kit.lot == "L-GEN-1")
    assert sorted(k.kit_number for k in kits) == numbers and len(numbers) == 40
    assert {(k.status, k.site_id, k.expires_on) for k in kits} == {("in_depot", None, expiry)}
    assert Counter(arm_of_kit(ctx, k) for k in kits) == {"igpro20": 20, "placebo": 20}
    (entry,) = entries(db, "kits.generated")
    assert entry["data"]["kits"] == numbers and entry["data"]["count"] == 40
    assert not names_an_arm(json.dumps(entry))


@pytest.mark.parametrize(
    ("lot", "count", "days", "field"),
    [
        ("L-BAD", 41, 300, "count"),  # does not split 1:1
        ("L-BAD", 40, 0, "expiry"),  # today is not in the future
        ("L-BAD", 40, -3, "expiry"),  # an expiry in the past
        ("bad lot!", 40, 300, "lot"),
    ],
)
def test_a_lot_that_cannot_be_made_is_refused_and_nothing_is_made(db, ctx, lot, count, days, field):
    from randomizer.errors import ValidationFailed

    before = snapshot(db)
    with pytest.raises(ValidationFailed) as refused:
        generate(db, ctx, lot, count, ctx.today() + timedelta(days=days))
    assert field in refused.value.extra["errors"]
    assert snapshot(db) == before


def test_a_lot_keeps_its_one_expiry(db, ctx):
    from randomizer.errors import Conflict

    generate(db, ctx, "L-ONE", 2, ctx.today() + timedelta(days=300))
    with pytest.raises(Conflict):
        generate(db, ctx, "L-ONE", 2, ctx.today() + timedelta(days=301))


@pytest.mark.requirement("R-SHIP")
def test_a_kit_without_a_site_can_never_be_available(db, ctx):
    """The database itself (migration 0012): a kit at no site is at the depot."""
    (number, *_) = generate(db, ctx, "L-TRIG", 2, ctx.today() + timedelta(days=300))
    with pytest.raises(Exception, match="at the depot"), db.transaction() as session:
        session.execute(update(Kit).where(Kit.kit_number == number).values(status="available"))


# Shipments and receipts --------------------------------------------------------------------


@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-BLIND-1")
def test_a_site_is_stocked_by_a_shipment_and_receives_it_with_one_damaged_kit(api, db, ctx):
    expiry = ctx.today() + timedelta(days=500)
    generate(db, ctx, "L-SHIP-1", 40, expiry)
    created = api.post("/shipments", "admin", json={"site": "102", "count": 10})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["site"] == "102" and body["status"] == "in_transit" and len(body["kits"]) == 10
    kits = kits_where(db, Kit.kit_number.in_(body["kits"]))
    assert {(k.status, k.site_id, k.shipment_id) for k in kits} == {
        ("in_transit", "102", body["id"])
    }
    assert Counter(arm_of_kit(ctx, k) for k in kits) == {"igpro20": 5, "placebo": 5}

    # The destination's pharmacist sees it, with each kit's blinded lot and expiry; no arm.
    listed = api.get("/shipments", "pharmacist-102").get_json()
    assert [s["id"] for s in listed] == [body["id"]]
    kit = api.get(f"/kits/{body['kits'][0]}", "pharmacist-102").get_json()
    assert kit["lot"] == "L-SHIP-1" and kit["expires_on"] == expiry.isoformat()
    assert kit["status"] == "in_transit"
    for response in (created, api.get(f"/shipments/{body['id']}", "pharmacist-102")):
        assert not names_an_arm(response.get_data(as_text=True))
    # Another site's pharmacist sees nothing of it, and cannot receive it.
    assert api.get("/shipments", "pharmacist-101").get_json() == []
    assert api.get(f"/shipments/{body['id']}", "pharmacist-101").status_code == 404
    receipt = {"kits": dict.fromkeys(body["kits"], "available") | {body["kits"][3]: "damaged"}}
    assert (
        api.post(f"/shipments/{body['id']}/receive", "pharmacist-101", json=receipt).status_code
        == 404
    )

    received = api.post(f"/shipments/{body['id']}/receive", "pharmacist-102", json=receipt)
    assert received.status_code == 200, received.get_json()
    assert received.get_json()["status"] == "received"
    statuses = {k.kit_number: k.status for k in kits_where(db, Kit.shipment_id == body["id"])}
    assert statuses == receipt["kits"]
    inventory = api.get("/sites/102/inventory", "pharmacist-102").get_json()
    assert inventory["counts"]["damaged"] == 1 and inventory["in_transit"] == 0
    assert (
        api.post(f"/shipments/{body['id']}/receive", "pharmacist-102", json=receipt).status_code
        == 409
    )
    assert [e["data"]["shipment"] for e in entries(db, "shipment.created")] == [body["id"]]
    (entry,) = [e for e in entries(db, "shipment.received") if e["subject"] == str(body["id"])]
    assert entry["data"]["kits"] == receipt["kits"] and entry["actor"] == "pharmacist-102"


@pytest.mark.requirement("R-SHIP")
def test_a_whole_lot_is_shipped(api, db, ctx):
    generate(db, ctx, "L-WHOLE", 6, ctx.today() + timedelta(days=500))
    created = api.post("/shipments", "admin", json={"site": "201", "lot": "L-WHOLE"})
    assert created.status_code == 201, created.get_json()
    assert sorted(created.get_json()["kits"]) == sorted(
        k.kit_number for k in kits_where(db, Kit.lot == "L-WHOLE")
    )
    assert kits_where(db, Kit.lot == "L-WHOLE", Kit.status == "in_depot") == []


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(
    ("user", "path", "raw", "status"),
    [
        ("admin", "/shipments", {"site": "999", "count": 2}, 422),  # unknown site
        ("admin", "/shipments", {"site": "102", "count": 3}, 422),  # does not split 1:1
        ("admin", "/shipments", {"site": "102", "count": 2, "lot": "L-HOST"}, 422),
        ("admin", "/shipments", {"site": "102", "lot": "NO-SUCH-LOT"}, 422),
        ("admin", "/shipments", {"site": "102", "count": 5000}, 409),  # depot short
        ("admin", "/shipments", {"site": "102", "count": "2"}, 422),
        ("pharmacist-102", "/shipments", {"site": "102", "count": 2}, 403),
        (
            "pharmacist-102",
            "/shipments/{id}/receive",
            '{"kits": {"{k0}": "available", "{k0}": "available", "{k1}": "available"}}',
            400,
        ),  # a kit twice in one receipt
        ("pharmacist-102", "/shipments/{id}/receive", {"kits": {"{k0}": "available"}}, 422),
        (
            "pharmacist-102",
            "/shipments/{id}/receive",
            {"kits": {"{k0}": "fine", "{k1}": "lost"}},
            422,
        ),
        (
            "pharmacist-102",
            "/shipments/{id}/receive",
            {"kits": {"{k0}": "available", "{k1}": "available", "K0000-0000": "lost"}},
            422,
        ),
        (
            "pharmacist-101",
            "/shipments/{id}/receive",
            {"kits": {"{k0}": "available", "{k1}": "available"}},
            404,
        ),  # another site's shipment
        ("admin", "/shipments/{id}/dispatch", None, 409),  # not a request
        ("pharmacist-102", "/shipments/99999/receive", {"kits": {}}, 404),
    ],
)
def test_wrong_shipment_input_gets_a_4xx_and_changes_nothing(api, db, ctx, user, path, raw, status):
    generate(db, ctx, "L-HOST", 2, ctx.today() + timedelta(days=500))
    shipment = api.post("/shipments", "admin", json={"site": "102", "count": 2}).get_json()
    k0, k1 = shipment["kits"]
    text = raw if isinstance(raw, str) else json.dumps(raw)
    text = text.replace("{k0}", k0).replace("{k1}", k1)
    path = path.replace("{id}", str(shipment["id"]))
    before = snapshot(db)
    response = api.post(
        path, user, data=text if raw is not None else None, content_type="application/json"
    )
    assert response.status_code == status, response.get_json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert snapshot(db) == before


# Expiry, quarantine and the choice of kits -------------------------------------------------


def stock_102(db: Any, ctx: Any, api: Any, lot: str, count: int, expiry: date) -> list[str]:
    generate(db, ctx, lot, count, expiry)
    shipment = api.post("/shipments", "admin", json={"site": "102", "lot": lot}).get_json()
    receipt = {"kits": dict.fromkeys(shipment["kits"], "available")}
    assert (
        api.post(f"/shipments/{shipment['id']}/receive", "pharmacist-102", json=receipt).status_code
        == 200
    )
    return shipment["kits"]


def screen_and_randomize_102(api: Any, number: str, weight: int = 70) -> Any:
    assert api.screen(number, user="coordinator-102", site="102").status_code == 201
    return api.randomize(number, user="coordinator-102", weight_kg=weight)


@pytest.mark.requirement("R-KIT-3")
def test_the_earliest_blinded_expiry_is_allocated_first(api, db, ctx):
    leave_per_arm(db, ctx, "102", 0)
    later = stock_102(db, ctx, api, "L-LATE", 40, ctx.today() + timedelta(days=600))
    earlier = stock_102(db, ctx, api, "L-EARLY", 8, ctx.today() + timedelta(days=300))
    first = screen_and_randomize_102(api, "102-FEFO-1").get_json()["kits"]
    assert set(first) <= set(earlier) and len(first) == 4
    # The earlier lot's 4 kits of that arm are all used: the next of that arm (and the
    # other arm's 4 earlier kits first) follow the same rule.
    second = screen_and_randomize_102(api, "102-FEFO-2").get_json()["kits"]
    assert set(second) <= set(earlier) | set(later)
    kits = {k.kit_number: k for k in kits_where(db, Kit.kit_number.in_(first + second))}
    arms = {arm_of_kit(ctx, kits[n]) for n in first}, {arm_of_kit(ctx, kits[n]) for n in second}
    if arms[0] != arms[1]:
        assert set(second) <= set(earlier)
    else:
        assert set(second) <= set(later)


@pytest.mark.requirement("R-KIT-3")
def test_expired_window_and_quarantined_kits_are_never_allocated(api, db, ctx, clock):
    leave_per_arm(db, ctx, "102", 0)
    dnd = ctx.definition.do_not_dispense_days
    soon = stock_102(db, ctx, api, "L-SOON", 40, ctx.today() + timedelta(days=dnd + 2))
    # Enough good kits of either arm, whichever arms the quarantine and the randomisations
    # below take: a refused randomisation would roll back the expiry marks it made.
    good = stock_102(db, ctx, api, "L-GOOD", 40, ctx.today() + timedelta(days=400))
    # Quarantine 6 good kits (a temperature excursion): never allocated.
    held = good[:6]
    for number in held:
        response = api.post(f"/kits/{number}/quarantine", "admin", json={"reason": "excursion"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "quarantined"
    assert (
        api.post(f"/kits/{held[0]}/quarantine", "pharmacist-102", json={"reason": "x"}).status_code
        == 403
    )
    clock.advance(days=3)  # L-SOON is inside the do-not-dispense window now
    given = []
    for index in range(3):
        response = screen_and_randomize_102(api, f"102-EXP-{index}", weight=40)
        if response.status_code == 201:
            given += response.get_json()["kits"]
    assert given and not set(given) & (set(soon) | set(held))
    clock.advance(days=dnd)  # and past its expiry: marked expired at the next allocation
    last = screen_and_randomize_102(api, "102-EXP-9", weight=40)
    assert last.status_code == 201, last.get_json()
    assert {k.status for k in kits_where(db, Kit.lot == "L-SOON")} == {"expired"}
    assert entries(db, "kit.expired")[-1]["data"]["site"] == "102"
    released = api.post(f"/kits/{held[0]}/release", "admin", json={"reason": "within range"})
    assert released.status_code == 200 and released.get_json()["status"] == "available"
    changes = [e for e in entries(db, "kit.status_changed") if e["subject"] == held[0]]
    assert [(e["data"]["to"], e["data"]["reason"]) for e in changes] == [
        ("quarantined", "excursion"),
        ("available", "within range"),
    ]


@pytest.mark.requirement("R-KIT-3")
def test_sealroom_kits_expire_marks_every_kit_past_its_expiry(db, ctx, clock):
    generate(db, ctx, "L-OLD", 4, ctx.today() + timedelta(days=2))
    clock.advance(days=3)
    with db.transaction() as session:
        expired = shipments.expire_kits(session, ctx, SYSTEM)
    assert sorted(expired["depot"]) == sorted(
        k.kit_number for k in kits_where(db, Kit.lot == "L-OLD")
    )
    assert {k.status for k in kits_where(db, Kit.lot == "L-OLD")} == {"expired"}
    with db.transaction() as session:
        assert shipments.expire_kits(session, ctx, SYSTEM) == {}


# Resupply ----------------------------------------------------------------------------------


@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-BLIND-2")
def test_an_allocation_below_the_trigger_requests_a_resupply_that_restores_the_target(api, db, ctx):
    levels = ctx.definition.supply.levels("102")
    with db.transaction() as session:
        session.get_one(
            User, session.scalar(select(User.id).where(User.name == "admin"))
        ).email = "depot@example.org"
    generate(db, ctx, "L-RESUPPLY", 4 * levels.target, ctx.today() + timedelta(days=500))
    leave_per_arm(db, ctx, "102", levels.trigger + 2)
    first = screen_and_randomize_102(api, "102-RS-1", weight=70)  # 4 kits: one arm below
    assert first.status_code == 201
    (requested,) = entries(db, "shipment.requested")
    shipment_id = requested["data"]["shipment"]
    assert requested["actor"] == "system" and requested["data"]["site"] == "102"
    with db.reading() as session:
        message = session.scalars(select(OutboxMessage).where(OutboxMessage.about == "102")).one()
        assert message.recipient == "depot@example.org" and str(shipment_id) in message.body
        assert not names_an_arm(message.body + message.subject)
    # A site never sees the request itself; a second allocation asks for nothing more.
    assert api.get(f"/shipments/{shipment_id}", "pharmacist-102").status_code == 404
    assert screen_and_randomize_102(api, "102-RS-2", weight=70).status_code == 201
    assert len(entries(db, "shipment.requested")) == 1

    dispatched = api.post(f"/shipments/{shipment_id}/dispatch", "admin")
    assert dispatched.status_code == 200, dispatched.get_json()
    body = dispatched.get_json()
    assert body["status"] == "in_transit" and body["origin"] == "resupply"
    receipt = {"kits": dict.fromkeys(body["kits"], "available")}
    assert (
        api.post(f"/shipments/{shipment_id}/receive", "pharmacist-102", json=receipt).status_code
        == 200
    )
    cutoff = ctx.today() + timedelta(days=ctx.definition.do_not_dispense_days)
    stock = Counter(
        arm_of_kit(ctx, k)
        for k in kits_where(db, Kit.site_id == "102", Kit.status == AVAILABLE)
        if k.expires_on > cutoff
    )
    assert stock == {"igpro20": levels.target, "placebo": levels.target}
    # Dispatched once: a second dispatch is refused.
    assert api.post(f"/shipments/{shipment_id}/dispatch", "admin").status_code == 409


# Inventory and the supply report -----------------------------------------------------------


@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-BLIND-1")
def test_inventory_counts_by_expiry_month_and_days_of_supply_never_by_arm(api, db, ctx):
    leave_per_arm(db, ctx, "102", 0)
    expiry = ctx.today() + timedelta(days=400)
    stock_102(db, ctx, api, "L-INV", 40, expiry)
    assert screen_and_randomize_102(api, "102-INV-1", weight=70).status_code == 201
    inventory = api.get("/sites/102/inventory", "pharmacist-102")
    body = inventory.get_json()
    assert body["by_expiry_month"] == {f"{expiry.year:04d}-{expiry.month:02d}": 36}
    assert body["dispensable"] == 36 and body["kits_allocated_last_28_days"] == 4
    assert body["days_of_supply"] == 36 * 28 // 4
    assert not names_an_arm(inventory.get_data(as_text=True))

    report = api.get("/reports/supply", "statistician")
    assert report.status_code == 200
    (site,) = [s for s in report.get_json()["sites"] if s["site"] == "102"]
    arms = site["arms"]
    assert sorted(a["dispensable"] for a in arms.values()) == [16, 20]
    assert sum(a["kits_allocated_last_28_days"] for a in arms.values()) == 4
    for user in ("admin", "pharmacist-102", "sponsor", "auditor"):
        assert api.get("/reports/supply", user).status_code == 403


# The simulation ----------------------------------------------------------------------------


@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-BLIND-2")
def test_the_bundled_levels_never_let_a_site_meet_a_supply_refusal():
    """README.md's threat model: in normal operation (benchmarks/resupply.py's assumptions)
    a site never meets an insufficient-supply refusal with the bundled levels."""
    from randomizer.domain import bundled_trial_path, load_trial
    from randomizer.domain.supply_simulation import simulate_runs

    definition = load_trial(bundled_trial_path())
    levels = definition.supply.default
    results = simulate_runs(definition, levels, runs=10, days_between=5)
    assert sum(r.refusals for r in results) == 0
    assert all(r.shipments > 0 for r in results)  # the levels were reached, not avoided
    # ...and the simulation can fail: a site five times as fast meets refusals.
    assert sum(r.refusals for r in simulate_runs(definition, levels, runs=10, days_between=1)) > 0


# The command line --------------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-SHIP")
def test_the_depot_commands_make_ship_and_expire_kits(scratch, tmp_path):
    from tests.randomizer.test_cli import initialised

    instance = initialised(scratch, "sqlite", tmp_path)
    expiry = (date.today() + timedelta(days=400)).isoformat()
    made = instance.run("kits", "generate", "--lot", "L-CLI", "--count", "10", "--expiry", expiry)
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == "10 kits of lot L-CLI in the depot"
    for args, why in (
        (("--lot", "L-CLI2", "--count", "3", "--expiry", expiry), "count:"),
        (("--lot", "L-CLI3", "--count", "4", "--expiry", "2020-01-31"), "expiry:"),
    ):
        refused = instance.run("kits", "generate", *args)
        assert refused.exit_code == 1 and why in refused.output, refused.output
    shipped = instance.run("shipments", "create", "--site", "102", "--count", "4")
    assert shipped.exit_code == 0, shipped.output
    lines = shipped.stdout.strip().splitlines()
    assert lines[0].endswith("to site 102: in_transit") and len(lines) == 5
    assert instance.run("shipments", "create", "--site", "102").exit_code == 1
    assert instance.run("shipments", "dispatch", "99").exit_code == 1
    assert instance.run("kits", "expire").stdout.strip() == "no kit has expired"
    assert [e["action"] for e in instance.entries_about("L-CLI")] == ["kits.generated"]


@pytest.mark.requirement("R-SHIP")
def test_a_depot_kit_is_visible_to_an_admin_only_and_shipment_ids_are_bounded(api, db, ctx):
    (number, *_) = generate(db, ctx, "L-SEEN", 2, ctx.today() + timedelta(days=300))
    seen = api.get(f"/kits/{number}", "admin")
    assert seen.status_code == 200 and seen.get_json()["site"] is None
    assert seen.get_json()["status"] == "in_depot"
    assert api.get(f"/kits/{number}", "pharmacist-101").status_code == 404
    for shipment_id in ("0", "01", "9999999999", "99999999999999999999", "1x"):
        assert api.get(f"/shipments/{shipment_id}", "admin").status_code == 404


@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-KIT-3")
@pytest.mark.requirement("R-BLIND-2")
def test_a_site_stocked_from_the_depot_is_resupplied_and_never_allocates_a_bad_kit(
    api, db, ctx, clock
):
    """Issue 12's "done when": stocked by a shipment, a stretch of randomisations and
    dispensings triggers resupply, received with one damaged kit; no expired, windowed or
    quarantined kit is ever allocated."""
    levels, dnd = ctx.definition.supply.levels("102"), ctx.definition.do_not_dispense_days
    leave_per_arm(db, ctx, "102", 0)
    generate(db, ctx, "L-DONE", 6 * levels.target, ctx.today() + timedelta(days=500))
    short = stock_102(db, ctx, api, "L-SHORT", 20, ctx.today() + timedelta(days=dnd + 5))
    first = api.post("/shipments", "admin", json={"site": "102", "count": 2 * levels.trigger + 40})
    receipt = {"kits": dict.fromkeys(first.get_json()["kits"], "available")}
    assert api.post(f"/shipments/{first.get_json()['id']}/receive", "pharmacist-102", json=receipt)
    held = first.get_json()["kits"][:4]
    for number in held:
        assert api.post(f"/kits/{number}/quarantine", "admin", json={"reason": "excursion"})
    randomised = []
    for index in range(12):  # 5 kits each (100 kg)
        number = f"102-DONE-{index}"
        assert screen_and_randomize_102(api, number, weight=100).status_code == 201
        randomised.append(number)
    clock.advance(days=28)  # week5: L-SHORT is now past its expiry
    for number in randomised:
        dispensed = api.post(
            f"/participants/{number}/dispense",
            "pharmacist-102",
            json={"visit": "week5", "weight_kg": 100},
        )
        assert dispensed.status_code == 201, dispensed.get_json()
        if entries(db, "shipment.requested"):
            break
    (requested,) = entries(db, "shipment.requested")
    shipment_id = requested["data"]["shipment"]
    sent = api.post(f"/shipments/{shipment_id}/dispatch", "admin").get_json()
    receipt = {"kits": dict.fromkeys(sent["kits"], "available") | {sent["kits"][0]: "damaged"}}
    received = api.post(f"/shipments/{shipment_id}/receive", "pharmacist-102", json=receipt)
    assert received.status_code == 200 and received.get_json()["status"] == "received"

    allocated = kits_where(db, Kit.site_id == "102", Kit.allocated_at.is_not(None))
    assert allocated and not {k.kit_number for k in allocated} & set(held)
    for kit in allocated:
        assert kit.expires_on > kit.allocated_at.date() + timedelta(days=dnd), kit.kit_number
    assert {k.status for k in kits_where(db, Kit.kit_number.in_(short))} <= {
        "allocated",
        "expired",
    }
    inventory = api.get("/sites/102/inventory", "pharmacist-102").get_json()
    assert inventory["counts"]["quarantined"] == 4 and inventory["counts"]["damaged"] == 1
