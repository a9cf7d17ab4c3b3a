"""``Idempotency-Key`` on state-changing POSTs (URS §8).

Scoped to the user and the endpoint: the same key with the same body returns the first
response again and changes nothing more; with another body it is 422
``idempotency-key-reused``. A refusal that was audited is replayed too, without a second
audit entry.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from randomizer.models import AuditEntry, Kit, Participant, Slot
from tests.conftest import ELIGIBLE

KEY = "3f1c2a9e-retry-1"


def key(value: str = KEY) -> dict[str, str]:
    return {"Idempotency-Key": value}


def screening_body(api: Any, sn: str = "101-0001", prior_ig: str = "no") -> dict[str, Any]:
    return {
        "screening_number": sn,
        "site": "101",
        "screened_on": api.clock.today().isoformat(),
        "strata": {"prior_ig": prior_ig},
    }


def screen(api: Any, body: Any, user: str = "coordinator-101", key_value: str = KEY) -> Any:
    return api.post("/participants", user, json=body, headers=key(key_value))


def randomize_raw(api: Any, sn: str, data: bytes, key_value: str = KEY) -> Any:
    return api.post(
        f"/participants/{sn}/randomize",
        "coordinator-101",
        data=data,
        headers={**key(key_value), "Content-Type": "application/json"},
    )


def counts(db: Any) -> dict[str, int]:
    with db.reading() as session:
        return {
            "participants": session.scalar(select(func.count()).select_from(Participant)),
            "audit": session.scalar(select(func.count()).select_from(AuditEntry)),
            "allocated_kits": session.scalar(
                select(func.count()).select_from(Kit).where(Kit.participant_id.is_not(None))
            ),
            "used_slots": session.scalar(
                select(func.count()).select_from(Slot).where(Slot.participant_id.is_not(None))
            ),
        }


def assert_key_reused(response: Any) -> None:
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "/problems/idempotency-key-reused"


# Replays -------------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_same_key_and_body_replays_the_screening_once(api, db):
    before = counts(db)

    first = screen(api, screening_body(api))
    second = screen(api, screening_body(api))

    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    after = counts(db)
    assert after["participants"] == before["participants"] + 1
    assert after["audit"] == before["audit"] + 1


@pytest.mark.requirement("R-API")
def test_same_key_and_body_replays_the_randomisation_once(api, db):
    assert api.screen("101-0001").status_code == 201
    before = counts(db)

    first = api.randomize("101-0001", headers=key())
    second = api.randomize("101-0001", headers=key())

    assert first.status_code == second.status_code == 201
    # The very same answer: number, kits, time and receipt; not a 409 already-randomized.
    assert first.get_json() == second.get_json()
    after = counts(db)
    assert after["audit"] == before["audit"] + 1
    assert after["used_slots"] == before["used_slots"] + 1
    assert after["allocated_kits"] == before["allocated_kits"] + 4


@pytest.mark.requirement("R-API")
def test_replay_returns_the_first_response_even_after_the_screening_window(api, clock):
    assert api.screen("101-0001").status_code == 201
    first = api.randomize("101-0001", headers=key())
    clock.advance(days=60)

    second = api.randomize("101-0001", headers=key())

    assert second.status_code == 201
    assert second.get_json() == first.get_json()


@pytest.mark.requirement("R-API")
def test_same_json_written_differently_is_the_same_body(api, db):
    assert api.screen("101-0001").status_code == 201
    body = {"weight_kg": 70.5, "eligibility": ELIGIBLE}
    compact = json.dumps(body, separators=(",", ":")).encode()
    reordered = json.dumps(
        {"eligibility": dict(reversed(list(ELIGIBLE.items()))), "weight_kg": 70.5}, indent=2
    ).encode()

    first = randomize_raw(api, "101-0001", compact)
    second = randomize_raw(api, "101-0001", reordered)

    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()


@pytest.mark.requirement("R-AUD")
def test_audited_refusal_is_replayed_without_a_second_audit_entry(api, db):
    assert api.screen("101-0001").status_code == 201
    ineligible = {**ELIGIBLE, "age_years": 17}
    before = counts(db)

    first = api.randomize("101-0001", eligibility=ineligible, headers=key())
    second = api.randomize("101-0001", eligibility=ineligible, headers=key())

    assert first.status_code == second.status_code == 422
    assert first.mimetype == second.mimetype == "application/problem+json"
    assert first.get_json()["type"] == "/problems/ineligible"
    assert first.get_data() == second.get_data()
    assert counts(db)["audit"] == before["audit"] + 1


@pytest.mark.requirement("R-AUD")
def test_oversized_randomisation_with_a_key_is_audited_once_and_replayed(api, db):
    assert api.screen("101-0001").status_code == 201
    big = json.dumps({"weight_kg": 70, "eligibility": ELIGIBLE, "pad": "a" * 100_000}).encode()
    before = counts(db)

    first = randomize_raw(api, "101-0001", big)
    second = randomize_raw(api, "101-0001", big)

    assert first.status_code == second.status_code == 413
    assert first.get_data() == second.get_data()
    assert counts(db)["audit"] == before["audit"] + 1


@pytest.mark.requirement("R-API")
def test_refusal_that_changed_nothing_does_not_use_up_the_key(api, db):
    assert api.screen("101-0001").status_code == 201

    duplicate = screen(api, screening_body(api, "101-0001"))
    fresh = screen(api, screening_body(api, "101-0002"))

    assert duplicate.status_code == 409
    assert fresh.status_code == 201


# Another body --------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_same_key_with_another_screening_body_is_refused_and_changes_nothing(api, db):
    assert screen(api, screening_body(api, "101-0001")).status_code == 201
    before = counts(db)

    response = screen(api, screening_body(api, "101-0002"))

    assert_key_reused(response)
    assert counts(db) == before
    assert api.get("/participants/101-0002", "coordinator-101").status_code == 404


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("first_weight", "second_weight"),
    [
        ("70", "100"),
        ("70.5", '"70.5"'),  # a number and a string are different bodies
        ("70.5", '{"d": "70.5"}'),
        ("70.5", "70.50"),
        ("70", "70.0"),
    ],
)
def test_same_key_with_another_randomisation_body_is_refused_and_changes_nothing(
    api, db, first_weight, second_weight
):
    assert api.screen("101-0001").status_code == 201
    eligibility = json.dumps(ELIGIBLE)
    first = randomize_raw(
        api, "101-0001", f'{{"weight_kg": {first_weight}, "eligibility": {eligibility}}}'.encode()
    )
    assert first.status_code == 201, first.get_json()
    before = counts(db)

    second = randomize_raw(
        api, "101-0001", f'{{"weight_kg": {second_weight}, "eligibility": {eligibility}}}'.encode()
    )

    assert_key_reused(second)
    # Nothing changed but the refusal's own audit entry (URS §7: every refused randomisation).
    assert counts(db) == {**before, "audit": before["audit"] + 1}
    assert last_entry(db)["action"] == "participant.randomization_refused"
    assert last_entry(db)["data"]["reason"] == "idempotency-key-reused"


def last_entry(db: Any) -> dict[str, Any]:
    with db.reading() as session:
        return json.loads(
            session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq.desc())).first()
        )


@pytest.mark.requirement("R-API")
def test_same_key_for_another_participant_is_refused(api, db):
    assert api.screen("101-0001").status_code == 201
    assert api.screen("101-0002").status_code == 201
    assert api.randomize("101-0001", headers=key()).status_code == 201

    response = api.randomize("101-0002", headers=key())

    assert_key_reused(response)
    assert api.get("/participants/101-0002", "coordinator-101").get_json()["status"] == "screened"


# Scope ---------------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_same_key_on_another_endpoint_is_independent(api):
    screened = screen(api, screening_body(api, "101-0001"))

    randomized = api.randomize("101-0001", headers=key())

    assert screened.status_code == 201
    assert randomized.status_code == 201, randomized.get_json()
    assert randomized.get_json()["randomization_number"] == "R02-0001"


@pytest.mark.requirement("R-API")
def test_same_key_by_another_user_is_independent(api, db):
    mine = screen(api, screening_body(api, "101-0001"), user="coordinator-101")
    theirs = screen(api, screening_body(api, "101-0002"), user="investigator-101")

    assert mine.status_code == theirs.status_code == 201
    assert theirs.get_json()["screening_number"] == "101-0002"
    assert counts(db)["participants"] == 2


@pytest.mark.requirement("R-API")
def test_same_key_and_body_by_another_user_is_not_a_replay(api):
    # Another user's identical request is a request of its own: here a duplicate number.
    assert screen(api, screening_body(api, "101-0001"), user="coordinator-101").status_code == 201

    response = screen(api, screening_body(api, "101-0001"), user="investigator-101")

    assert response.status_code == 409
    assert response.get_json()["type"] == "/problems/conflict"


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "value",
    ["", "has space", "k" * 256, "k" * 300, "tab\there", "caf\u00e9"],
    ids=["empty", "space", "256-chars", "300-chars", "tab", "non-ascii"],
)
def test_invalid_key_is_a_400_problem_and_changes_nothing(api, db, value):
    assert api.screen("101-0001").status_code == 201
    before = counts(db)

    screening = screen(api, screening_body(api, "101-0002"), key_value=value)
    assert counts(db) == before
    randomization = api.randomize("101-0001", headers=key(value))

    for response in (screening, randomization):
        assert response.status_code == 400
        assert response.mimetype == "application/problem+json"
        problem = response.get_json()
        assert problem["type"] == "/problems/validation"
        assert "Idempotency-Key" in problem["errors"]
    # The refused randomisation, and only it, is audited (URS §7); nothing else changed.
    assert counts(db) == {**before, "audit": before["audit"] + 1}
    entry = last_entry(db)
    assert (entry["action"], entry["subject"]) == ("participant.randomization_refused", "101-0001")
    assert entry["data"]["fields"] == ["Idempotency-Key"]


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("value", ["k", "k" * 255, "A-z_0.9~!#$%&'*+^`|"])
def test_key_of_1_to_255_printable_characters_is_accepted(api, value):
    response = screen(api, screening_body(api), key_value=value)

    assert response.status_code == 201, response.get_json()
