"""Reports and the allocation export (issue 14: R-REP-1, R-REP-2, R-REP-5; URS §8).

The blinded enrollment report is checked against what was done, and against itself after
every arm in the database has been relabelled (each participant, slot and kit resealed
with the other arm): a report that depended on an arm in any way would change.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from keys import SealedArm
from randomizer import roles
from randomizer.models import AuditEntry, Kit, Participant, Slot, Stratum
from randomizer.roles import BLINDED_ROLES
from tests.conftest import ELIGIBLE
from tests.randomizer.test_blinding import ARM_IDS, names_an_arm
from tests.randomizer.test_role_table import USERS

STATISTICIAN = USERS[roles.STATISTICIAN]
SVG_NS = "{http://www.w3.org/2000/svg}"


def enrol_scenario(api, clock) -> dict[str, Any]:
    """At three sites over two months: randomisations, two ineligible participants (rules
    I1, and I1 with E1), one outside the window, one withdrawn, one discontinued and one
    unblinded. Returns what was done, by screening number."""
    done: dict[str, Any] = {"randomized": [], "failed": []}
    for site, prior_ig, n in (("101", "no", 3), ("101", "yes", 2), ("102", "no", 2)):
        for i in range(n):
            number = f"{site}-R{prior_ig}{i}"
            response = api.screen_and_randomize(
                number, user=f"coordinator-{site}", site=site, prior_ig=prior_ig
            )
            assert response.status_code == 201, response.get_json()
            done["randomized"].append(number)
    clock.advance(days=31)
    assert api.screen_and_randomize("201-R0", user="coordinator-201", site="201").status_code == 201
    done["randomized"].append("201-R0")
    for number, answers in (
        ("101-F1", {"age_years": 17}),
        ("101-F2", {"age_years": 17, "malignancy_within_5_years": True}),
    ):
        assert api.screen(number).status_code == 201
        refused = api.randomize(number, eligibility={**ELIGIBLE, **answers})
        assert refused.status_code == 422, refused.get_json()
        done["failed"].append(number)
    late = clock.today() - timedelta(days=30)
    assert api.screen("101-LATE", screened_on=late).status_code == 201
    assert api.randomize("101-LATE").get_json()["type"] == "/problems/screening-window"
    assert api.screen("101-WAIT").status_code == 201  # screened, not (yet) randomised
    for path, body in (
        ("101-Rno0/withdraw", {"reason": "consent withdrawn"}),
        ("101-Rno1/discontinue", {"reason": "adverse event"}),
    ):
        assert api.post(f"/participants/{path}", "coordinator-101", json=body).status_code == 200
    unblind = {"reason": "serious_adverse_event", "event_reference": "SAE-REP-1"}
    assert api.post("/participants/102-Rno0/unblind", "medical-monitor", json=unblind).status_code
    return done


def relabel_every_arm(db, ctx) -> None:
    """Reseal every participant, slot and kit with the other arm (RECLAIIM has two)."""
    other = dict(zip(ARM_IDS, reversed(ARM_IDS), strict=True))

    def flip(sealed: str, kind: str, owner: str) -> str:
        arm = ctx.sealer.unseal_arm(SealedArm.from_text(sealed), kind, owner)
        return ctx.sealer.seal_arm(other[arm], kind, owner).to_text()

    with db.transaction() as session:
        for participant in session.scalars(select(Participant)):
            if participant.sealed_arm is not None:
                participant.sealed_arm = flip(
                    participant.sealed_arm, "participant", participant.screening_number
                )
        for slot in session.scalars(select(Slot)):
            slot.sealed_arm = flip(slot.sealed_arm, "slot", slot.randomization_number)
        for kit in session.scalars(select(Kit)):
            kit.sealed_arm = flip(kit.sealed_arm, "kit", kit.kit_number)


def arms_by_participant(db, ctx) -> dict[str, str]:
    with db.reading() as session:
        rows = session.execute(
            select(Participant.screening_number, Participant.sealed_arm).where(
                Participant.sealed_arm.is_not(None)
            )
        ).all()
    return {
        number: ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "participant", number)
        for number, sealed in rows
    }


def export_entries(db, action: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        texts = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        ).all()
    return [json.loads(text) for text in texts]


# Enrollment (blinded) ------------------------------------------------------------------------


@pytest.mark.requirement("R-REP-1")
def test_the_enrollment_report_counts_what_was_done(api, clock):
    enrol_scenario(api, clock)

    report = api.get("/reports/enrollment", "sponsor").get_json()

    assert report["trial"] == "RECLAIIM"
    assert report["target"] == 126
    assert report["totals"] == {
        "screened": 12,
        "screen_failed": 3,
        "randomized": 8,
        "withdrawn": 1,
        "discontinued": 1,
        "unblinded": 1,
    }
    sites = {item["site"]: item for item in report["sites"]}
    assert [item["site"] for item in report["sites"]] == ["101", "102", "201"]
    assert (sites["101"]["screened"], sites["101"]["randomized"]) == (9, 5)
    assert sites["101"]["screen_failed"] == 3 and sites["102"]["unblinded"] == 1
    assert (sites["201"]["screened"], sites["201"]["randomized"]) == (1, 1)
    strata = {item["stratum"]: item for item in report["strata"]}
    assert len(strata) == 6
    assert strata["region=north_america|prior_ig=no"]["randomized"] == 5
    assert strata["region=north_america|prior_ig=yes"]["randomized"] == 2
    assert strata["region=europe|prior_ig=no"]["randomized"] == 1
    assert strata["region=north_america|prior_ig=no"]["screen_failed"] == 3
    assert sum(item["randomized"] for item in report["months"]) == 8
    assert sum(item["screened"] for item in report["months"]) == 12
    assert len(report["months"]) >= 2  # 31 days apart
    by_rule = {item["rule"]: item["participants"] for item in report["screen_failures"]["by_rule"]}
    assert by_rule == {
        "I1": 2,
        "I2": 0,
        "I3": 0,
        "I4": 0,
        "I5": 0,
        "E1": 1,
        "E2": 0,
        "E3": 0,
        "E4": 0,
    }
    assert report["screen_failures"]["outside_window"] == 1


@pytest.mark.requirement("R-REP-1")
def test_a_screen_failure_randomised_later_is_no_screen_failure(api):
    assert api.screen("101-AGAIN").status_code == 201
    assert api.randomize("101-AGAIN", eligibility={**ELIGIBLE, "age_years": 17}).status_code == 422
    assert api.randomize("101-AGAIN").status_code == 201

    totals = api.get("/reports/enrollment", "admin").get_json()["totals"]

    assert (totals["screen_failed"], totals["randomized"]) == (0, 1)


@pytest.mark.requirement("R-REP-1")
@pytest.mark.requirement("R-BLIND-1")
def test_the_enrollment_report_and_its_pictures_are_the_same_whatever_the_arms(api, db, ctx, clock):
    enrol_scenario(api, clock)
    forms = [
        ("application/json", ""),
        ("text/csv", ""),
        ("image/svg+xml", "?picture=enrollment"),
        ("image/svg+xml", "?picture=screen-failures"),
        ("image/png", ""),
    ]

    def answers() -> list[bytes]:
        return [
            api.get(f"/reports/enrollment{query}", "sponsor", headers={"Accept": form}).get_data()
            for form, query in forms
        ]

    before = arms_by_participant(db, ctx)
    first = answers()
    relabel_every_arm(db, ctx)
    after = arms_by_participant(db, ctx)
    second = answers()

    assert before.keys() == after.keys() and all(before[n] != after[n] for n in before)
    assert first == second
    for body in first[:4]:
        assert not names_an_arm(body.decode("utf-8"))


@pytest.mark.requirement("R-REP-1")
def test_the_enrollment_report_names_the_trial_by_id_only(api, ctx):
    body = api.get("/reports/enrollment", "sponsor").get_data(as_text=True)

    assert ctx.definition.title not in body
    assert json.loads(body)["trial"] == ctx.definition.id


@pytest.mark.requirement("R-REP-1")
def test_the_enrollment_csv_has_the_json_counts(api, clock):
    enrol_scenario(api, clock)
    report = api.get("/reports/enrollment", "statistician").get_json()

    response = api.get("/reports/enrollment", "statistician", headers={"Accept": "text/csv"})

    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    total = next(row for row in rows if row["group"] == "total")
    assert {name: int(total[name]) for name in report["totals"]} == report["totals"]
    sites = {row["name"]: int(row["randomized"]) for row in rows if row["group"] == "site"}
    assert sites == {item["site"]: item["randomized"] for item in report["sites"]}
    rules = {
        row["name"]: int(row["screen_failed"])
        for row in rows
        if row["group"] == "screen_failed_rule"
    }
    assert rules["I1"] == 2 and rules["window"] == 1


# Balance and allocations (unblinded) ---------------------------------------------------------


@pytest.mark.requirement("R-REP-2")
def test_the_balance_report_agrees_with_an_independent_count_of_the_allocation_export(
    api, db, ctx, clock
):
    enrol_scenario(api, clock)

    balance = api.get("/reports/balance", STATISTICIAN).get_json()
    allocations = api.get("/allocations", STATISTICIAN).get_json()

    arms = arms_by_participant(db, ctx)
    assert {row["screening_number"]: row["arm"] for row in allocations} == arms
    independent = Counter((row["stratum"], row["arm"]) for row in allocations)
    for stratum in balance["strata"]:
        for arm in ARM_IDS:
            assert stratum["counts"][arm] == independent[(stratum["stratum"], arm)]
        assert stratum["randomized"] == sum(stratum["counts"].values())
        assert stratum["imbalance"] == abs(
            stratum["counts"]["igpro20"] - stratum["counts"]["placebo"]
        )
        assert stratum["slots"]["used"] == stratum["randomized"]
        assert stratum["slots"]["used"] + stratum["slots"]["left"] == stratum["slots"]["size"]
    assert balance["overall"]["counts"] == dict(Counter(arms.values()))
    assert balance["overall"]["randomized"] == 8


@pytest.mark.requirement("R-REP-2")
def test_a_stratum_that_will_run_out_at_the_current_rate_is_warned_of(api, db):
    """Stratum 2's list is moved on to its last ten slots, nine of which are then used;
    stratum 1 has one randomisation of ten: at the current rate (one in ten) it needs
    about 12 of the 116 still to come, and has far more left."""
    with db.transaction() as session:
        nearly_used = session.get_one(Stratum, 2)
        nearly_used.next_position = nearly_used.size - 9
    for n in range(9):
        assert api.screen_and_randomize(f"101-NO{n}", prior_ig="no").status_code == 201
    assert api.screen_and_randomize("101-YES", prior_ig="yes").status_code == 201

    strata = {
        s["number"]: s for s in api.get("/reports/balance", STATISTICIAN).get_json()["strata"]
    }

    assert strata[2]["slots"]["left"] == 1 and "current rate" in strata[2]["warning"]
    assert strata[1]["slots"] == {
        "size": strata[1]["slots"]["size"],
        "used": 1,
        "left": strata[1]["slots"]["size"] - 1,
    }
    assert strata[1]["warning"] is None
    assert strata[3]["warning"] is None  # nothing used: no rate


@pytest.mark.requirement("R-REP-2")
def test_a_used_up_stratum_is_warned_of(api, db):
    with db.transaction() as session:
        used_up = session.get_one(Stratum, 4)
        used_up.next_position = used_up.size + 1

    strata = api.get("/reports/balance", STATISTICIAN).get_json()["strata"]

    assert "used up" in strata[3]["warning"]


@pytest.mark.requirement("R-REP-2")
def test_the_allocation_export_is_urs_8s_list_and_is_audited(api, db, clock):
    done = enrol_scenario(api, clock)

    response = api.get("/allocations", STATISTICIAN)

    assert response.status_code == 200
    rows = response.get_json()
    assert sorted(row["screening_number"] for row in rows) == sorted(done["randomized"])
    for row in rows:
        assert {"screening_number", "site", "stratum", "randomization_number", "arm"} <= row.keys()
        assert {"randomized_at", "kits", "corrected_stratum", "unblindings"} <= row.keys()
        assert row["arm"] in ARM_IDS and len(row["kits"]) == 4
    unblinded = {row["screening_number"]: row for row in rows}["102-Rno0"]
    assert unblinded["unblinded"] and unblinded["unblindings"][0]["by"] == "medical-monitor"
    (entry,) = export_entries(db, "export.created")
    assert (entry["actor"], entry["role"]) == ("statistician", "statistician")
    assert entry["data"] == {"kind": "allocations", "rows": len(rows)}


@pytest.mark.requirement("R-REP-2")
def test_the_allocation_csv_has_the_json_rows(api):
    for n in range(3):
        assert api.screen_and_randomize(f"101-CSV{n}").status_code == 201
    rows = api.get("/allocations", STATISTICIAN).get_json()

    response = api.get("/allocations", STATISTICIAN, headers={"Accept": "text/csv"})

    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["screening_number"], r["arm"], r["kits"]) for r in table] == [
        (r["screening_number"], r["arm"], " ".join(r["kits"])) for r in rows
    ]
    assert [r["randomized_at"] for r in table] == [r["randomized_at"] for r in rows]


@pytest.mark.requirement("R-REP-2")
@pytest.mark.requirement("R-REP-5")
@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("role", sorted(BLINDED_ROLES))
def test_every_blinded_role_is_refused_the_unblinded_reports_and_exports_and_audited(api, db, role):
    assert api.screen_and_randomize("101-SEEN").status_code == 201
    user = USERS[role]

    answers = [
        api.get("/reports/balance", user),
        api.get("/reports/balance", user, headers={"Accept": "image/svg+xml"}),
        api.get("/allocations", user),
        api.get("/allocations", user, headers={"Accept": "text/csv"}),
        api.get("/exports/dm", user),
        api.get("/exports/dm?format=xpt", user),
        api.get("/exports/dm?format=nonsense", user),
    ]

    for answer in answers:
        assert answer.status_code == 403, answer.get_data()
        assert not names_an_arm(answer.get_data(as_text=True))
    refused = export_entries(db, "export.refused")
    assert [entry["data"]["kind"] for entry in refused] == ["allocations"] * 2 + ["sdtm-dm"] * 3
    assert all(entry["actor"] == user and entry["data"]["status"] == 403 for entry in refused)
    assert not export_entries(db, "export.created")


@pytest.mark.requirement("R-REP-4")
def test_the_balance_picture_shows_each_strata_counts(api, db, ctx, clock):
    enrol_scenario(api, clock)
    report = api.get("/reports/balance", STATISTICIAN).get_json()

    svg = api.get("/reports/balance", STATISTICIAN, headers={"Accept": "image/svg+xml"})
    png = api.get("/reports/balance", STATISTICIAN, headers={"Accept": "image/png"})

    assert svg.mimetype == "image/svg+xml" and png.mimetype == "image/png"
    assert png.get_data().startswith(b"\x89PNG\r\n\x1a\n")
    root = ET.fromstring(svg.get_data())
    ids = {element.get("id") for element in root.iter()}
    for stratum in report["strata"]:
        assert {f"bar-{arm}-{stratum['number']}" for arm in ARM_IDS} <= ids
    texts = [text.text for text in root.iter(f"{SVG_NS}text")]
    assert "IgPro20" in texts and "Placebo" in texts
    labels = Counter(texts)
    for stratum in report["strata"]:
        for arm in ARM_IDS:
            assert str(stratum["counts"][arm]) in labels
