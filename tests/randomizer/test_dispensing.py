"""Dispensing through the whole RECLAIIM schedule, kits, inventory, lifecycle (R-DISP, R-KIT-2,
R-LIFE, R-FIX), through the HTTP API with a clock the test moves."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from randomizer.domain import kits_for_visit
from randomizer.models import AuditEntry, Kit
from randomizer.services.participants import participant_arm
from tests.randomizer.test_blinding import names_an_arm


def kit_arm(db, ctx, kit_number: str) -> str:
    from keys import SealedArm

    with db.reading() as session:
        sealed = session.scalars(select(Kit.sealed_arm).where(Kit.kit_number == kit_number)).one()
    return ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "kit", kit_number)


def arm_of(db, ctx, number: str) -> str:
    from randomizer.models import Participant

    with db.reading() as session:
        participant = session.scalars(
            select(Participant).where(Participant.screening_number == number)
        ).one()
        return participant_arm(ctx, participant)


def actions(db, subject: str) -> list[str]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.subject == subject)
                .order_by(AuditEntry.seq)
            )
        )


def dispense(api, number: str, visit: str, weight=70, user="pharmacist-101", **kwargs):
    return api.post(
        f"/participants/{number}/dispense",
        user,
        json={"visit": visit, "weight_kg": weight},
        **kwargs,
    )


@pytest.mark.requirement("R-DISP")
@pytest.mark.requirement("R-KIT-2")
def test_a_participant_is_followed_through_the_whole_schedule(api, db, ctx, clock):
    assert api.screen_and_randomize("101-SCHED-1", weight_kg=70).status_code == 201
    arm = arm_of(db, ctx, "101-SCHED-1")
    definition = ctx.definition
    given: dict[str, list[str]] = {}

    for visit in definition.visits[1:]:
        clock.advance(days=7 * (visit.week - 1) - (clock.today() - api_randomized_on(api)).days)
        response = dispense(api, "101-SCHED-1", visit.id)
        if not visit.dispenses:
            assert response.status_code == 422, response.get_json()
            assert response.get_json()["errors"] == {
                "visit": [f"Visit {visit.id} dispenses no kits."]
            }
            continue
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        assert body["visit"] == visit.id and body["dispensed_on"] == clock.today().isoformat()
        assert len(body["kits"]) == kits_for_visit(definition, Decimal(70), visit) == 4
        assert {kit_arm(db, ctx, kit) for kit in body["kits"]} == {arm}
        assert not names_an_arm(response.get_data(as_text=True))
        given[visit.id] = body["kits"]
        if visit.id == "week9":
            # A kit of this visit is damaged before it is handed over: a replacement of the
            # same arm at the same site, in the same transaction.
            damaged = body["kits"][0]
            changed = api.post(
                f"/kits/{damaged}/status",
                "pharmacist-101",
                json={"status": "damaged", "reason": "vial cracked"},
            )
            assert changed.status_code == 200, changed.get_json()
            replacement = changed.get_json()["replacement"]
            assert replacement and replacement not in body["kits"]
            assert kit_arm(db, ctx, replacement) == arm
            assert not names_an_arm(changed.get_data(as_text=True))
            shown = api.get(f"/kits/{replacement}", "pharmacist-101").get_json()
            assert shown["replaces"] == damaged and shown["visit"] == "week9"
            assert shown["participant"] == "101-SCHED-1" and shown["status"] == "allocated"
            given["week9"] = sorted([*body["kits"][1:], replacement, damaged])
        for kit in body["kits"]:
            if kit != body["kits"][0] or visit.id != "week9":
                handed = api.post(
                    f"/kits/{kit}/status",
                    "pharmacist-101",
                    json={"status": "dispensed", "reason": "handed over"},
                )
                assert handed.status_code == 200, handed.get_json()
                assert handed.get_json()["replacement"] is None

    shown = api.get("/participants/101-SCHED-1", "coordinator-101")
    assert shown.status_code == 200
    visits = {v["visit"]: v for v in shown.get_json()["visits"]}
    assert [v["visit"] for v in shown.get_json()["visits"]] == [v.id for v in definition.visits]
    assert visits["week25"]["status"] == "assessment"
    for visit_id, kits in given.items():
        assert visits[visit_id]["status"] == "dispensed"
        assert visits[visit_id]["kits"] == sorted(kits)
    assert not names_an_arm(shown.get_data(as_text=True))
    assert actions(db, "101-SCHED-1").count("participant.dispensed") == 5
    assert actions(db, "101-SCHED-1").count("participant.dispense_refused") == 1  # week25


def api_randomized_on(api):
    from datetime import date

    body = api.get("/participants/101-SCHED-1", "coordinator-101").get_json()
    return date.fromisoformat(body["randomized_at"][:10])


@pytest.mark.requirement("R-DISP")
def test_a_visit_is_dispensed_once_inside_its_window(api, db, clock):
    assert api.screen_and_randomize("101-WIN-1").status_code == 201
    clock.advance(days=24)  # week5 is day 28, its window 25 to 31
    early = dispense(api, "101-WIN-1", "week5")
    clock.advance(days=1)
    first = dispense(api, "101-WIN-1", "week5")
    again = dispense(api, "101-WIN-1", "week5")
    clock.advance(days=7)  # day 32: week5's window closed, week9's (53 to 59) not open
    late = dispense(api, "101-WIN-1", "week9")

    assert early.status_code == 422 and early.get_json()["type"] == "/problems/visit-window"
    assert first.status_code == 201
    assert again.status_code == 409
    assert again.get_json()["kits"] == first.get_json()["kits"]
    assert late.status_code == 422 and late.get_json()["type"] == "/problems/visit-window"
    visits = {
        v["visit"]: v["status"]
        for v in api.get("/participants/101-WIN-1", "coordinator-101").get_json()["visits"]
    }
    assert visits["week1"] == visits["week5"] == "dispensed"
    assert visits["week9"] == "due"
    assert actions(db, "101-WIN-1").count("participant.dispense_refused") == 3


@pytest.mark.requirement("R-LIFE")
def test_withdrawal_and_discontinuation_end_dispensing(api, db, clock):
    for number in ("101-LIFE-1", "101-LIFE-2"):
        assert api.screen_and_randomize(number).status_code == 201
    withdrawn = api.post(
        "/participants/101-LIFE-1/withdraw", "coordinator-101", json={"reason": "consent withdrawn"}
    )
    stopped = api.post(
        "/participants/101-LIFE-2/discontinue", "investigator-101", json={"reason": "adverse event"}
    )
    clock.advance(days=28)

    assert withdrawn.status_code == 200 and withdrawn.get_json()["status"] == "withdrawn"
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "discontinued"
    for number in ("101-LIFE-1", "101-LIFE-2"):
        refused = dispense(api, number, "week5")
        assert refused.status_code == 409, refused.get_json()
        visits = {
            v["visit"]: v["status"]
            for v in api.get(f"/participants/{number}", "coordinator-101").get_json()["visits"]
        }
        assert visits["week5"] == "stopped" and visits["week25"] == "assessment"
    again = api.post(
        "/participants/101-LIFE-1/discontinue", "coordinator-101", json={"reason": "x"}
    )
    assert again.status_code == 409
    assert "participant.withdrawn" in actions(db, "101-LIFE-1")
    assert "participant.discontinued_refused" in actions(db, "101-LIFE-1")


@pytest.mark.requirement("R-FIX")
def test_an_admin_flags_an_error_and_corrects_a_stratum_beside_the_original(api, db):
    assert api.screen_and_randomize("101-FIX-1", prior_ig="no").status_code == 201
    original = api.get("/participants/101-FIX-1", "coordinator-101").get_json()

    corrected = api.post(
        "/participants/101-FIX-1/correct-stratum",
        "admin",
        json={"strata": {"prior_ig": "yes"}, "reason": "prior IVIG found in the records"},
    )
    by_site = api.post(
        "/participants/101-FIX-1/flag-error", "coordinator-101", json={"reason": "x"}
    )
    flagged = api.post(
        "/participants/101-FIX-1/flag-error", "admin", json={"reason": "not eligible"}
    )

    assert corrected.status_code == 200, corrected.get_json()
    body = corrected.get_json()
    assert body["stratum"] == original["stratum"] == "region=north_america|prior_ig=no"
    assert body["corrected_stratum"] == "region=north_america|prior_ig=yes"
    assert body["randomization_number"] == original["randomization_number"]
    assert by_site.status_code == 403
    assert flagged.status_code == 200 and flagged.get_json()["status"] == "randomized_in_error"
    assert flagged.get_json()["randomization_number"] == original["randomization_number"]
    assert "participant.stratum_corrected" in actions(db, "101-FIX-1")


@pytest.mark.requirement("R-KIT-2")
def test_illegal_kit_changes_and_other_sites_kits_are_refused(api, db):
    response = api.screen_and_randomize("101-KIT-1")
    kit = response.get_json()["kits"][0]
    returned = api.post(
        f"/kits/{kit}/status", "pharmacist-101", json={"status": "returned", "reason": "x"}
    )
    elsewhere = api.post(
        f"/kits/{kit}/status", "pharmacist-102", json={"status": "dispensed", "reason": "x"}
    )
    unknown = api.post(
        "/kits/K0000-0000/status", "pharmacist-102", json={"status": "dispensed", "reason": "x"}
    )
    coordinator = api.post(
        f"/kits/{kit}/status", "coordinator-101", json={"status": "dispensed", "reason": "x"}
    )

    assert returned.status_code == 409, returned.get_json()
    assert elsewhere.status_code == 404 and unknown.status_code == 404
    assert elsewhere.get_data() == unknown.get_data()
    assert coordinator.status_code == 403
    with db.reading() as session:
        assert session.scalars(select(Kit.status).where(Kit.kit_number == kit)).one() == "allocated"
    assert actions(db, kit).count("kit.status_change_refused") == 3


@pytest.mark.requirement("R-BLIND-1")
def test_inventory_counts_by_status_never_by_arm(api):
    assert api.screen_and_randomize("101-INV-1").status_code == 201
    shown = api.get("/sites/101/inventory", "pharmacist-101")
    other = api.get("/sites/102/inventory", "pharmacist-101")
    admin = api.get("/sites/102/inventory", "admin")

    assert shown.status_code == 200
    counts = shown.get_json()["counts"]
    assert counts["allocated"] == 4 and set(counts) >= {"available", "damaged", "in_transit"}
    assert not names_an_arm(shown.get_data(as_text=True))
    assert other.status_code == 404
    assert admin.status_code == 200
