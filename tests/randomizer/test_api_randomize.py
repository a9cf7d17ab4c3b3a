"""``POST /participants/<sn>/randomize`` (URS §8, §2, §3; R-LIST-2, R-BLIND-2, R-RCPT, R-AUD).

A randomisation takes the next slot of the participant's stratum and the week-1 kits; its
checks run in URS §8's order (token, role, visibility, state, input, screening window and
eligibility, supply and list), and every refusal changes nothing but its own audit entry.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.checkpoint import verify_checkpoint
from audit.entry import entry_hash
from audit.merkle import leaf_hash, verify_inclusion
from keys import SealedArm
from randomizer.models import AuditEntry, Kit, Participant, Slot, Stratum
from randomizer.services.kits import KIT_SEAL_KIND
from randomizer.services.trial_setup import SLOT_SEAL_KIND
from tests.conftest import ELIGIBLE

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
NORTH_AMERICA_NO = "region=north_america|prior_ig=no"
NOT_RANDOMIZERS = [
    "pharmacist-101",
    "medical-monitor",
    "sponsor",
    "statistician",
    "auditor",
    "admin",
]

#: Answers failing every rule at once (one step past each boundary). Decimals are written as
#: floats here: the test client sends them as JSON numbers (it would send a Decimal as a
#: string), and the service reads the number's text exactly.
FAILS_EVERY_RULE = {
    "age_years": 17,
    "eular_acr_dm": False,
    "prednisolone_mg_per_day": 20.001,
    "pga_vas_cm": 1.999,
    "mmt8": 143,
    "cdasi_activity": 13,
    "malignancy_within_5_years": True,
    "cancer_associated_myositis": True,
    "pgd_vas_cm": 3.0,
    "improved_since_screening": True,
}


def answers(**changes: Any) -> dict[str, Any]:
    return {**ELIGIBLE, **changes}


def randomize_body(api: Any, sn: str, body: Any, user: str = "coordinator-101") -> Any:
    return api.post(f"/participants/{sn}/randomize", user, json=body)


# Reading the database ------------------------------------------------------------------------


def audit_entries(db: Any) -> list[dict[str, Any]]:
    with db.reading() as session:
        return [json.loads(c) for c in session.scalars(select(AuditEntry.canonical))]


def audit_count(db: Any) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def last_entry(db: Any) -> dict[str, Any]:
    with db.reading() as session:
        canonical = session.scalars(
            select(AuditEntry.canonical).order_by(AuditEntry.seq.desc()).limit(1)
        ).one()
    return json.loads(canonical)


def trial_state(db: Any) -> dict[str, Any]:
    """Everything a randomisation may change, except the audit trail."""
    with db.reading() as session:
        return {
            "participants": sorted(
                session.execute(
                    select(
                        Participant.screening_number,
                        Participant.status,
                        Participant.stratum_number,
                        Participant.randomization_number,
                        Participant.randomized_at,
                        Participant.weight_kg,
                        Participant.sealed_arm,
                    )
                ).all()
            ),
            "kits": sorted(
                session.execute(
                    select(Kit.kit_number, Kit.status, Kit.participant_id, Kit.visit)
                ).all()
            ),
            "used_slots": sorted(
                session.execute(
                    select(Slot.randomization_number, Slot.participant_id).where(
                        Slot.participant_id.is_not(None)
                    )
                ).all()
            ),
            "strata": sorted(session.execute(select(Stratum.number, Stratum.next_position)).all()),
        }


def arm_of_next_slot(db: Any, ctx: Any, stratum_key: str) -> str:
    with db.reading() as session:
        stratum = session.scalars(select(Stratum).where(Stratum.key == stratum_key)).one()
        slot = session.scalars(
            select(Slot).where(
                Slot.stratum_number == stratum.number, Slot.position == stratum.next_position
            )
        ).one()
        return ctx.sealer.unseal_arm(
            SealedArm.from_text(slot.sealed_arm), SLOT_SEAL_KIND, slot.randomization_number
        )


def leave_available(db: Any, ctx: Any, site: str, arm: str, keep: int) -> None:
    """Mark every available kit of ``arm`` at ``site`` damaged except ``keep`` of them."""
    with db.transaction() as session:
        kits = session.scalars(
            select(Kit).where(Kit.site_id == site, Kit.status == "available").order_by(Kit.id)
        ).all()
        of_arm = [
            kit
            for kit in kits
            if ctx.sealer.unseal_arm(
                SealedArm.from_text(kit.sealed_arm), KIT_SEAL_KIND, kit.kit_number
            )
            == arm
        ]
        for kit in of_arm[keep:]:
            kit.status = "damaged"


def exhaust_stratum(db: Any, stratum_key: str) -> None:
    with db.transaction() as session:
        stratum = session.scalars(select(Stratum).where(Stratum.key == stratum_key)).one()
        stratum.next_position = stratum.size + 1


def other_arm(ctx: Any, arm: str) -> str:
    (other,) = [a.id for a in ctx.definition.arms if a.id != arm]
    return other


# Success -------------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_first_randomisation_in_a_stratum_gets_its_first_slot(api, clock):
    response = api.screen_and_randomize("101-0001", weight_kg=70)

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == {"randomization_number", "stratum", "randomized_at", "kits", "receipt"}
    assert body["randomization_number"] == "R02-0001"
    assert body["stratum"] == NORTH_AMERICA_NO
    assert RFC3339_UTC.match(body["randomized_at"])
    assert body["randomized_at"] == clock.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(body["kits"]) == len(set(body["kits"])) == 4


@pytest.mark.requirement("R-LIST-2")
def test_consecutive_randomisations_in_a_stratum_take_consecutive_slots(api):
    numbers = [
        api.screen_and_randomize(f"101-000{i}").get_json()["randomization_number"]
        for i in range(1, 4)
    ]
    # Site 102 is in North America too: same stratum, next slot.
    from_102 = api.screen_and_randomize("102-0004", user="coordinator-102", site="102")

    assert numbers == ["R02-0001", "R02-0002", "R02-0003"]
    assert from_102.get_json()["randomization_number"] == "R02-0004"


@pytest.mark.requirement("R-LIST-2")
@pytest.mark.parametrize(
    ("user", "site", "prior_ig", "stratum", "number"),
    [
        ("coordinator-101", "101", "yes", "region=north_america|prior_ig=yes", "R01-0001"),
        ("coordinator-201", "201", "yes", "region=europe|prior_ig=yes", "R03-0001"),
        ("coordinator-201", "201", "no", "region=europe|prior_ig=no", "R04-0001"),
    ],
)
def test_stratum_comes_from_the_sites_region_and_the_screening_answer(
    api, user, site, prior_ig, stratum, number
):
    response = api.screen_and_randomize(f"{site}-0001", user=user, site=site, prior_ig=prior_ig)

    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["stratum"], response.get_json()["randomization_number"]) == (
        stratum,
        number,
    )


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("weight_kg", "kits"),
    [(30, 2), (70, 4), (80, 4), (80.01, 5), (100, 5), (250, 13)],
)
def test_week1_kit_count_follows_the_weight(api, weight_kg, kits):
    # ceil(weight * 0.5 g/kg/week * 4 weeks / 40 g): 80 kg is exactly 4 kits, 80.01 kg is 5.
    response = api.screen_and_randomize("101-0001", weight_kg=weight_kg)

    assert response.status_code == 201, response.get_json()
    assert len(set(response.get_json()["kits"])) == kits


@pytest.mark.requirement("R-API")
def test_participant_shows_randomisation_afterwards(api):
    randomized = api.screen_and_randomize("101-0001").get_json()

    shown = api.get("/participants/101-0001", "coordinator-101").get_json()

    assert shown["status"] == "randomized"
    assert shown["stratum"] == randomized["stratum"] == NORTH_AMERICA_NO
    assert shown["randomization_number"] == randomized["randomization_number"]
    assert shown["randomized_at"] == randomized["randomized_at"]
    assert sorted(shown["kits"]) == sorted(randomized["kits"])
    assert shown["unblinded"] is False


@pytest.mark.requirement("R-RCPT")
def test_receipt_proves_the_randomized_entry_is_in_a_signed_checkpoint(api, ctx, db):
    response = api.screen_and_randomize("101-0001")

    body = response.get_json()
    receipt = body["receipt"]
    assert set(receipt) == {"seq", "entry", "checkpoint", "inclusion_proof"}
    entry = json.loads(receipt["entry"])
    assert entry["seq"] == receipt["seq"]
    assert entry["action"] == "participant.randomized"
    assert entry["subject"] == "101-0001"
    assert entry["data"]["randomization_number"] == body["randomization_number"]
    assert entry["data"]["kits"] == sorted(body["kits"])
    assert entry["data"]["stratum"] == body["stratum"]
    checkpoint = verify_checkpoint(receipt["checkpoint"], ctx.audit.verifier_key)
    assert checkpoint.size == receipt["seq"] + 1
    proof = [base64.b64decode(h) for h in receipt["inclusion_proof"]]
    leaf = leaf_hash(receipt["entry"].encode("utf-8"))
    assert verify_inclusion(leaf, receipt["seq"], checkpoint.size, proof, checkpoint.root)
    # The entry is the stored one, byte for byte.
    with db.reading() as session:
        stored = session.get(AuditEntry, receipt["seq"]).canonical
    assert entry_hash(stored.encode("utf-8")) == entry_hash(receipt["entry"].encode("utf-8"))


@pytest.mark.requirement("R-AUD")
def test_randomisation_appends_exactly_one_randomized_entry(api, db):
    assert api.screen("101-0001").status_code == 201
    before = audit_count(db)

    response = api.randomize("101-0001", weight_kg=70.5)

    assert response.status_code == 201
    assert audit_count(db) == before + 1
    entry = last_entry(db)
    assert entry["action"] == "participant.randomized"
    assert entry["data"]["weight_kg"] == "70.5"
    assert entry["data"]["eligibility"]["pga_vas_cm"] == "4.5"
    assert entry["data"]["eligibility"]["age_years"] == 54
    assert set(entry["data"]["sealed_arm"]) >= {"nonce", "ciphertext"}


@pytest.mark.requirement("R-ROLE")
def test_investigator_can_randomize(api):
    response = api.screen_and_randomize("101-0001", user="investigator-101")

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["randomization_number"] == "R02-0001"


@pytest.mark.requirement("R-ROLE")
@pytest.mark.parametrize("user", NOT_RANDOMIZERS)
def test_only_coordinators_and_investigators_can_randomize_and_refusals_are_audited(api, db, user):
    assert api.screen("101-0001").status_code == 201
    before, state = audit_count(db), trial_state(db)

    response = api.randomize("101-0001", user=user)

    assert response.status_code == 403
    assert response.get_json()["type"] == "/problems/forbidden"
    assert trial_state(db) == state
    assert audit_count(db) == before + 1
    entry = last_entry(db)
    assert (entry["action"], entry["actor"]) == ("participant.randomization_refused", user)
    assert entry["data"]["reason"] == "forbidden"


# Refusals ------------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_second_randomisation_is_refused_with_the_existing_number(api, db):
    first = api.screen_and_randomize("101-0001").get_json()
    state = trial_state(db)

    again = api.randomize("101-0001", weight_kg=100)

    assert again.status_code == 409
    problem = again.get_json()
    assert problem["type"] == "/problems/already-randomized"
    assert problem["randomization_number"] == first["randomization_number"]
    assert trial_state(db) == state


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("days", [0, 1, 20, 21])
def test_randomisation_is_allowed_until_window_days_after_screening_inclusive(api, clock, days):
    assert api.screen("101-0001").status_code == 201
    clock.advance(days=days)

    response = api.randomize("101-0001")

    assert response.status_code == 201, response.get_json()


@pytest.mark.requirement("R-API")
def test_randomisation_after_the_screening_window_is_refused(api, clock, db):
    screened = api.screen("101-0001").get_json()
    clock.advance(days=22)
    state = trial_state(db)

    response = api.randomize("101-0001")

    assert response.status_code == 422
    problem = response.get_json()
    assert problem["type"] == "/problems/screening-window"
    assert problem["screened_on"] == screened["screened_on"]
    assert trial_state(db) == state


@pytest.mark.requirement("R-API")
def test_ineligible_refusal_lists_every_failed_rule_in_rule_order(api, ctx):
    assert api.screen("101-0001").status_code == 201

    response = api.randomize("101-0001", eligibility=dict(FAILS_EVERY_RULE))

    assert response.status_code == 422
    problem = response.get_json()
    assert problem["type"] == "/problems/ineligible"
    expected = [{"id": r.id, "text": r.text} for r in ctx.definition.eligibility_rules]
    assert [r["id"] for r in expected] == ["I1", "I2", "I3", "I4", "I5", "E1", "E2", "E3", "E4"]
    assert problem["failed_rules"] == expected


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({"age_years": 18}, []),
        ({"age_years": 17}, ["I1"]),
        ({"eular_acr_dm": False}, ["I2"]),
        ({"prednisolone_mg_per_day": 20}, []),
        ({"prednisolone_mg_per_day": 20.001}, ["I3"]),
        ({"pga_vas_cm": 2.0}, []),
        ({"pga_vas_cm": 1.999}, ["I4"]),
        ({"mmt8": 142, "cdasi_activity": 13}, []),
        ({"mmt8": 143, "cdasi_activity": 14}, []),
        ({"mmt8": 143, "cdasi_activity": 13}, ["I5"]),
        ({"malignancy_within_5_years": True}, ["E1"]),
        ({"cancer_associated_myositis": True}, ["E2"]),
        ({"pgd_vas_cm": 2.999}, []),
        ({"pgd_vas_cm": 3}, ["E3"]),
        ({"improved_since_screening": True}, ["E4"]),
        ({"age_years": 17, "improved_since_screening": True}, ["I1", "E4"]),
    ],
)
def test_eligibility_rules_at_their_boundaries(api, changes, failed):
    assert api.screen("101-0001").status_code == 201

    response = api.randomize("101-0001", eligibility=answers(**changes))

    if not failed:
        assert response.status_code == 201, response.get_json()
    else:
        assert response.status_code == 422
        assert response.get_json()["type"] == "/problems/ineligible"
        assert [rule["id"] for rule in response.get_json()["failed_rules"]] == failed


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("field", "value", "failed"),
    [
        ("pga_vas_cm", 0, ["I4"]),  # well formed, but PGA < 2.0 cm fails I4
        ("pga_vas_cm", 10, []),
        ("mmt8", 0, []),
        ("mmt8", 150, []),  # I5 still holds through CDASI 20
        ("cdasi_activity", 0, []),  # I5 still holds through MMT-8 120
        ("cdasi_activity", 100, []),
        ("prednisolone_mg_per_day", 0, []),
    ],
)
def test_eligibility_answer_bounds_are_inclusive(api, field, value, failed):
    # The definition's minimum and maximum are valid answers: validation accepts them, and
    # only an eligibility rule may refuse them (with a problem naming the rule, not a field).
    assert api.screen("101-0001").status_code == 201

    response = api.randomize("101-0001", eligibility=answers(**{field: value}))

    if not failed:
        assert response.status_code == 201, response.get_json()
    else:
        assert response.status_code == 422, response.get_json()
        problem = response.get_json()
        assert problem["type"] == "/problems/ineligible", problem
        assert [rule["id"] for rule in problem["failed_rules"]] == failed


#: The bounds reclaiim.toml gives the numeric answers tested here (inclusive at both ends).
ANSWER_BOUNDS = {
    "pga_vas_cm": (0, 10),
    "mmt8": (0, 150),
    "cdasi_activity": (0, 100),
    "prednisolone_mg_per_day": (0, 1000),
}


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pga_vas_cm", -0.001),
        ("pga_vas_cm", 10.001),
        ("mmt8", -1),
        ("mmt8", 151),
        ("cdasi_activity", -1),
        ("cdasi_activity", 101),
        ("prednisolone_mg_per_day", -0.001),
    ],
)
def test_eligibility_answer_just_outside_its_bounds_is_a_validation_problem(api, db, field, value):
    # One step past a bound: 1 for an integer, 0.001 (the places a decimal may have) else.
    assert api.screen("101-0001").status_code == 201
    state = trial_state(db)

    response = api.randomize("101-0001", eligibility=answers(**{field: value}))

    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/validation", problem
    assert set(problem["errors"]) == {f"eligibility.{field}"}, problem
    low, high = ANSWER_BOUNDS[field]
    assert problem["errors"][f"eligibility.{field}"] == [
        f"Must be greater than or equal to {low} and less than or equal to {high}."
    ]
    assert "failed_rules" not in problem
    assert trial_state(db) == state


@pytest.mark.requirement("R-AUD")
def test_ineligible_refusal_is_audited_with_the_failed_rule_ids(api, db):
    assert api.screen("101-0001").status_code == 201

    api.randomize("101-0001", eligibility=answers(age_years=17, pgd_vas_cm=5))

    entry = last_entry(db)
    assert entry["action"] == "participant.randomization_refused"
    assert entry["subject"] == "101-0001"
    assert entry["data"]["failed_rules"] == ["I1", "E3"]


@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.parametrize("short_arm", ["the participant's own arm", "the other arm"])
def test_site_short_of_either_arm_refuses_every_randomisation(api, ctx, db, short_arm):
    assert api.screen("101-0001").status_code == 201
    own = arm_of_next_slot(db, ctx, NORTH_AMERICA_NO)
    arm = own if short_arm == "the participant's own arm" else other_arm(ctx, own)
    leave_available(db, ctx, "101", arm, keep=0)

    response = api.randomize("101-0001")

    assert response.status_code == 409
    problem = response.get_json()
    assert problem["type"] == "/problems/insufficient-supply"
    # The refusal names no arm: it reads the same whichever arm is short.
    assert problem["detail"] == (
        "Site 101 does not hold 4 dispensable kits of every arm; ask the pharmacist to "
        "receive a shipment before randomising."
    )


@pytest.mark.requirement("R-BLIND-2")
@pytest.mark.parametrize(("keep", "status"), [(3, 409), (4, 201)])
def test_site_must_hold_the_needed_kits_of_every_arm(api, ctx, db, keep, status):
    # 70 kg needs 4 kits; the other arm (not the participant's) is the one left short.
    assert api.screen("101-0001").status_code == 201
    leave_available(
        db, ctx, "101", other_arm(ctx, arm_of_next_slot(db, ctx, NORTH_AMERICA_NO)), keep
    )

    assert api.randomize("101-0001", weight_kg=70).status_code == status


@pytest.mark.requirement("R-BLIND-2")
def test_supply_of_another_site_does_not_count(api, ctx, db):
    for arm in ctx.definition.arms:
        leave_available(db, ctx, "101", arm.id, keep=0)
    assert api.screen("101-0001").status_code == 201

    assert api.randomize("101-0001").status_code == 409
    assert (
        api.screen_and_randomize("102-0002", user="coordinator-102", site="102").status_code == 201
    )


@pytest.mark.requirement("R-LIST")
def test_exhausted_stratum_refuses_and_never_improvises_a_slot(api, db):
    assert api.screen("101-0001").status_code == 201
    exhaust_stratum(db, NORTH_AMERICA_NO)
    state = trial_state(db)

    response = api.randomize("101-0001")

    assert response.status_code == 409
    assert response.get_json()["type"] == "/problems/stratum-exhausted"
    assert trial_state(db) == state
    # Other strata go on.
    assert api.screen_and_randomize("101-0002", prior_ig="yes").status_code == 201


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize(
    "refusal",
    [
        "forbidden",
        "not-found",
        "already-randomized",
        "validation",
        "screening-window",
        "ineligible",
        "insufficient-supply",
        "stratum-exhausted",
    ],
)
def test_refusal_changes_nothing_but_adds_one_refused_entry(api, clock, ctx, db, refusal):
    assert api.screen_and_randomize("101-0000").status_code == 201  # some state to keep
    assert api.screen("101-0001").status_code == 201
    user, sn, body = "coordinator-101", "101-0001", {"weight_kg": 70, "eligibility": ELIGIBLE}
    if refusal == "forbidden":
        user = "pharmacist-101"
    elif refusal == "not-found":
        user = "coordinator-102"
    elif refusal == "already-randomized":
        sn = "101-0000"
    elif refusal == "validation":
        body = {"weight_kg": 70, "eligibility": answers(age_years="54")}
    elif refusal == "screening-window":
        clock.advance(days=22)
    elif refusal == "ineligible":
        body = {"weight_kg": 70, "eligibility": answers(age_years=17)}
    elif refusal == "insufficient-supply":
        leave_available(db, ctx, "101", ctx.definition.arms[0].id, keep=0)
    elif refusal == "stratum-exhausted":
        exhaust_stratum(db, NORTH_AMERICA_NO)
    state, before = trial_state(db), audit_count(db)

    response = randomize_body(api, sn, body, user)

    assert response.status_code in (403, 404, 409, 422)
    assert response.get_json()["type"] == f"/problems/{refusal}"
    assert trial_state(db) == state
    assert audit_count(db) == before + 1
    entry = last_entry(db)
    assert entry["action"] == "participant.randomization_refused"
    assert (entry["actor"], entry["data"]["reason"]) == (user, refusal)


# Order of the checks (URS §8) ----------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_role_is_checked_before_the_participant_exists(api):
    assert api.screen("101-0001").status_code == 201

    unknown = api.randomize("101-9999", user="pharmacist-101", weight_kg="junk")
    known = api.randomize("101-0001", user="pharmacist-101", weight_kg="junk")

    assert unknown.status_code == known.status_code == 403
    assert unknown.get_json() == known.get_json()


@pytest.mark.requirement("R-API")
def test_visibility_is_checked_before_the_body(api):
    assert api.screen("101-0001").status_code == 201
    invalid = {"weight_kg": "seventy", "eligibility": {"age_years": "old"}}

    elsewhere = randomize_body(api, "101-0001", invalid, "coordinator-102")
    unknown = randomize_body(api, "101-9999", invalid, "coordinator-102")

    assert elsewhere.status_code == unknown.status_code == 404
    assert elsewhere.get_json() == unknown.get_json()


@pytest.mark.requirement("R-API")
def test_already_randomised_is_checked_before_the_body(api):
    first = api.screen_and_randomize("101-0001").get_json()

    response = randomize_body(api, "101-0001", {"weight_kg": "junk"})

    assert response.status_code == 409
    assert response.get_json()["type"] == "/problems/already-randomized"
    assert response.get_json()["randomization_number"] == first["randomization_number"]


@pytest.mark.requirement("R-API")
def test_body_is_validated_before_eligibility(api):
    assert api.screen("101-0001").status_code == 201

    response = api.randomize("101-0001", weight_kg="70", eligibility=dict(FAILS_EVERY_RULE))

    assert response.status_code == 422
    assert response.get_json()["type"] == "/problems/validation"
    assert response.get_json()["errors"] == {"weight_kg": ["Not a valid number."]}


@pytest.mark.requirement("R-API")
def test_screening_window_is_checked_before_eligibility(api, clock):
    assert api.screen("101-0001").status_code == 201
    clock.advance(days=22)

    response = api.randomize("101-0001", eligibility=dict(FAILS_EVERY_RULE))

    assert response.status_code == 422
    assert response.get_json()["type"] == "/problems/screening-window"


@pytest.mark.requirement("R-API")
def test_eligibility_is_checked_before_supply(api, ctx, db):
    assert api.screen("101-0001").status_code == 201
    for arm in ctx.definition.arms:
        leave_available(db, ctx, "101", arm.id, keep=0)

    response = api.randomize("101-0001", eligibility=answers(age_years=17))

    assert response.status_code == 422
    assert response.get_json()["type"] == "/problems/ineligible"


@pytest.mark.requirement("R-BLIND-2")
def test_supply_is_checked_before_the_list(api, ctx, db):
    # Supply is decided before, and independently of, the slot (and its arm).
    assert api.screen("101-0001").status_code == 201
    leave_available(db, ctx, "101", ctx.definition.arms[1].id, keep=0)
    exhaust_stratum(db, NORTH_AMERICA_NO)

    response = api.randomize("101-0001")

    assert response.status_code == 409
    assert response.get_json()["type"] == "/problems/insufficient-supply"
