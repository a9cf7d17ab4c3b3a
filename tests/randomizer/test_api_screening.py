"""Screening and reading participants: ``POST /participants``, ``GET /participants/<sn>``.

URS §8 (who may call what, the screening body), §2 (stratification factors), R-ROLE, and
R-BLIND-1 (no arm, no existence of another site's participants).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from randomizer.models import AuditEntry, Participant

SCREENERS = ["coordinator-101", "investigator-101"]
NOT_SCREENERS = ["pharmacist-101", "medical-monitor", "sponsor", "statistician", "auditor", "admin"]
READERS_OF_SITE_101 = [
    "coordinator-101",
    "investigator-101",
    "pharmacist-101",
    "medical-monitor",
    "sponsor",
]
OTHER_SITES_STAFF = ["coordinator-102", "pharmacist-102", "coordinator-201", "pharmacist-201"]
NOT_READERS = ["statistician", "auditor", "admin"]


#: A field value that leaves the field out of the body.
OMIT: Any = object()


def screening_body(api: Any, **changes: Any) -> dict[str, Any]:
    body = {
        "screening_number": "101-0001",
        "site": "101",
        "screened_on": api.clock.today().isoformat(),
        "strata": {"prior_ig": "no"},
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not OMIT}


def post_screening(api: Any, user: str = "coordinator-101", **changes: Any) -> Any:
    return api.post("/participants", user, json=screening_body(api, **changes))


def participant_count(db: Any) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(Participant))


def audit_count(db: Any) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def assert_validation_error(response: Any, *paths: str) -> dict[str, list[str]]:
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"] == "/problems/validation"
    for path in paths:
        assert path in body["errors"], body["errors"]
        assert body["errors"][path] and all(isinstance(m, str) for m in body["errors"][path])
    return body["errors"]


def keys_of(value: Any) -> set[str]:
    """Every key of every object nested in ``value``."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


# Screening -----------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("user", SCREENERS)
def test_site_staff_can_screen_and_the_201_body_equals_get(api, user):
    created = api.screen("101-0001", user=user)

    assert created.status_code == 201, created.get_json()
    shown = api.get("/participants/101-0001", user)
    assert shown.status_code == 200
    assert created.get_json() == shown.get_json()
    assert shown.get_json() == {
        "screening_number": "101-0001",
        "site": "101",
        "status": "screened",
        "screened_on": api.clock.today().isoformat(),
        "stratum": None,
        "randomization_number": None,
        "randomized_at": None,
        "kits": [],
        "unblinded": False,
        "unblindings": [],
        "corrected_stratum": None,
        "visits": [],
    }


@pytest.mark.requirement("R-AUD")
def test_screening_appends_one_participant_screened_entry(api, db):
    before = audit_count(db)

    assert api.screen("101-0001", prior_ig="yes").status_code == 201

    assert audit_count(db) == before + 1
    with db.reading() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
        action, subject, canonical = entry.action, entry.subject, json.loads(entry.canonical)
    assert (action, subject) == ("participant.screened", "101-0001")
    assert canonical["data"]["strata"] == {"prior_ig": "yes"}
    assert canonical["actor"] == "coordinator-101"


@pytest.mark.requirement("R-ROLE")
@pytest.mark.parametrize("user", NOT_SCREENERS)
def test_only_coordinators_and_investigators_can_screen(api, db, user):
    response = post_screening(api, user)

    assert response.status_code == 403
    assert response.get_json()["type"] == "/problems/forbidden"
    assert participant_count(db) == 0


@pytest.mark.requirement("R-ROLE")
@pytest.mark.parametrize("site", ["102", "201", "999"])
def test_coordinator_cannot_screen_at_another_site(api, db, site):
    response = post_screening(api, "coordinator-101", site=site)

    assert response.status_code == 403
    assert response.get_json()["type"] == "/problems/forbidden"
    assert participant_count(db) == 0


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("second_user", SCREENERS)
def test_screening_number_already_in_use_at_the_site_is_a_conflict(api, db, second_user):
    assert api.screen("101-0001").status_code == 201

    response = post_screening(api, second_user, strata={"prior_ig": "yes"})

    assert response.status_code == 409
    assert response.get_json()["type"] == "/problems/conflict"
    assert participant_count(db) == 1
    first = api.get("/participants/101-0001", "coordinator-101").get_json()
    assert first["site"] == "101"


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("days_ago", [0, 1, 400])
def test_screening_date_today_or_in_the_past_is_accepted(api, days_ago):
    screened_on = api.clock.today() - timedelta(days=days_ago)

    response = post_screening(api, screened_on=screened_on.isoformat())

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["screened_on"] == screened_on.isoformat()


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("days_ahead", [1, 365])
def test_screening_date_in_the_future_is_refused(api, db, days_ahead):
    screened_on = api.clock.today() + timedelta(days=days_ahead)

    response = post_screening(api, screened_on=screened_on.isoformat())

    assert_validation_error(response, "screened_on")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "screened_on", ["2026-02-30", "26-01-01", "2026/01/01", "2026-01-01T00:00:00Z", "", 20260101]
)
def test_screening_date_must_be_an_iso_calendar_date(api, screened_on):
    assert_validation_error(post_screening(api, screened_on=screened_on), "screened_on")


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("number", ["101-0001", "101-a", "101-" + "A" * 28, "101-0-Z-9-z", "101-"])
def test_screening_number_of_1_to_32_letters_digits_and_dashes_is_accepted(api, number):
    response = post_screening(api, screening_number=number)

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["screening_number"] == number


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "number",
    [
        "A" * 33,
        "",
        "S 0001",
        " 101-0001",
        "101-0001 ",
        "S_0001",
        "S.0001",
        "101-0001\n",  # Python's $ matches before a final newline
        "A" * 32 + "\n",  # ... and that made 33 characters reach VARCHAR(32)
        "Ünïcödé",
        "101-\uff10\uff10\uff101",  # fullwidth digits
        "101-0001\u200b",
    ],
)
def test_screening_number_outside_the_pattern_is_refused(api, db, number):
    response = post_screening(api, screening_number=number)

    assert_validation_error(response, "screening_number")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize("region", ["north_america", "europe"])
def test_site_derived_factor_may_not_be_sent(api, db, region):
    # Even the site's true region is refused: it is never typed by a person (URS §2).
    response = post_screening(api, strata={"prior_ig": "no", "region": region})

    assert_validation_error(response, "strata.region")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-CFG")
def test_screening_factor_must_be_sent(api, db):
    errors = assert_validation_error(post_screening(api, strata={}), "strata.prior_ig")

    assert errors == {"strata.prior_ig": ["Missing data for required field."]}
    assert participant_count(db) == 0


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize("level", ["maybe", "YES", "No", "", None, True, 1, ["no"]])
def test_unknown_level_of_a_screening_factor_is_refused(api, db, level):
    response = post_screening(api, strata={"prior_ig": level})

    assert_validation_error(response, "strata.prior_ig")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-CFG")
def test_unknown_stratification_factor_is_refused(api, db):
    response = post_screening(api, strata={"prior_ig": "no", "sex": "female"})

    assert_validation_error(response, "strata.sex")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("field", ["arm", "notes", "stratum", "randomization_number"])
def test_unknown_top_level_field_is_refused(api, db, field):
    body = {**screening_body(api), field: "x"}

    response = api.post("/participants", "coordinator-101", json=body)

    assert_validation_error(response, field)
    assert participant_count(db) == 0


@pytest.mark.requirement("R-API")
def test_every_missing_field_is_reported_at_once(api):
    errors = assert_validation_error(api.post("/participants", "coordinator-101", json={}))

    # The screening number may be left out: RECLAIIM's definition has a number pattern.
    assert set(errors) == {"site", "screened_on", "strata"}


@pytest.mark.requirement("R-API")
def test_screening_validation_problem_has_the_same_title_as_randomization_validation(api):
    # One problem type, one title (RFC 9457 §3.1.3), whichever layer refused the input.
    assert api.screen("101-0001").status_code == 201
    screening = post_screening(api, screening_number="S 2")
    randomization = api.randomize("101-0001", weight_kg="70")

    assert screening.status_code == randomization.status_code == 422
    first, second = screening.get_json(), randomization.get_json()
    assert (first["type"], first["title"]) == (second["type"], second["title"])


# Reading -------------------------------------------------------------------------------------


@pytest.mark.requirement("R-ROLE")
@pytest.mark.parametrize("user", READERS_OF_SITE_101)
def test_site_roles_of_its_site_medical_monitor_and_sponsor_can_read_a_participant(api, user):
    created = api.screen("101-0001").get_json()

    response = api.get("/participants/101-0001", user)

    assert response.status_code == 200
    assert response.get_json() == created


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("user", OTHER_SITES_STAFF)
def test_another_sites_participant_is_indistinguishable_from_an_unknown_one(api, user):
    assert api.screen("101-0001").status_code == 201

    elsewhere = api.get("/participants/101-0001", user)
    unknown = api.get("/participants/101-9999", user)

    assert elsewhere.status_code == unknown.status_code == 404
    assert elsewhere.get_json()["type"] == "/problems/not-found"
    assert elsewhere.get_json() == unknown.get_json()
    assert elsewhere.get_data() == unknown.get_data()


@pytest.mark.requirement("R-ROLE")
@pytest.mark.parametrize("user", NOT_READERS)
def test_statistician_auditor_and_admin_cannot_read_participants(api, user):
    assert api.screen("101-0001").status_code == 201

    existing = api.get("/participants/101-0001", user)
    unknown = api.get("/participants/101-9999", user)

    assert existing.status_code == unknown.status_code == 403
    assert existing.get_json()["type"] == "/problems/forbidden"
    assert existing.get_json() == unknown.get_json()


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("user", READERS_OF_SITE_101)
def test_a_randomised_participant_shows_no_arm(api, user):
    assert api.screen_and_randomize("101-0001").status_code == 201

    response = api.get("/participants/101-0001", user)

    assert response.status_code == 200
    body = response.get_json()
    assert not {key for key in keys_of(body) if "arm" in key.lower()}
    text = response.get_data(as_text=True).lower()
    assert "igpro20" not in text and "placebo" not in text


# Screening numbers belong to their site (issue 7, finding 9) -----------------------------------


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("number", ["102-0001", "B-102-1", "1010-0001", "101", "0101-0001"])
def test_a_number_without_the_sites_prefix_is_refused_whether_or_not_it_exists(api, db, number):
    """Site 101 learns nothing of site 102's numbers: the same 422 whether 102 holds it or not."""
    before = post_screening(api, screening_number=number)
    # Site 102 screens the number if it is one of its own, and 102-0001 in any case.
    assert api.screen(number, user="coordinator-102", site="102").status_code in (201, 422)
    assert api.screen("102-0001", user="coordinator-102", site="102").status_code in (201, 409)

    after = post_screening(api, screening_number=number)

    errors = assert_validation_error(after, "screening_number")
    assert set(errors) == {"screening_number"}
    assert "101-" in errors["screening_number"][0]
    assert (before.status_code, before.get_data()) == (after.status_code, after.get_data())
    with db.reading() as session:
        sites = session.scalars(select(Participant.site_id)).all()
    assert "101" not in sites


@pytest.mark.requirement("R-API")
def test_an_omitted_number_is_the_sites_next_one_independently_of_other_sites(api, db):
    screen = lambda user="coordinator-101", site="101": post_screening(  # noqa: E731
        api, user, site=site, screening_number=OMIT
    )

    numbers = [screen().get_json()["screening_number"] for _ in range(3)]
    other = screen("coordinator-102", "102").get_json()["screening_number"]
    europe = screen("coordinator-201", "201").get_json()["screening_number"]
    numbers.append(screen("investigator-101").get_json()["screening_number"])

    assert numbers == ["101-0001", "101-0002", "101-0003", "101-0004"]
    assert (other, europe) == ("102-0001", "201-0001")
    with db.reading() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
        subject, data = entry.subject, json.loads(entry.canonical)["data"]
    assert (subject, data["number_assigned"]) == ("101-0004", True)


@pytest.mark.requirement("R-API")
def test_assignment_skips_the_numbers_the_site_sent_itself(api):
    for number in ("101-0001", "101-0003"):
        assert api.screen(number).status_code == 201

    assigned = [
        post_screening(api, screening_number=OMIT).get_json()["screening_number"] for _ in range(3)
    ]

    assert assigned == ["101-0002", "101-0004", "101-0005"]


@pytest.mark.requirement("R-API")
def test_an_assigned_number_can_be_randomised_like_any_other(api):
    number = post_screening(api, screening_number=OMIT).get_json()["screening_number"]

    response = api.randomize(number)

    assert response.status_code == 201, response.get_json()
    assert (
        api.get(f"/participants/{number}", "coordinator-101").get_json()["status"] == "randomized"
    )


@pytest.mark.requirement("R-API")
def test_a_null_screening_number_is_refused(api, db):
    response = api.post(
        "/participants", "coordinator-101", json=screening_body(api, screening_number=None)
    )

    assert_validation_error(response, "screening_number")
    assert participant_count(db) == 0


@pytest.mark.requirement("R-API")
def test_a_replayed_assignment_gives_the_same_number_once(api, db):
    body = screening_body(api, screening_number=OMIT)
    headers = {"Idempotency-Key": "assign-once"}

    first = api.post("/participants", "coordinator-101", json=body, headers=headers)
    again = api.post("/participants", "coordinator-101", json=body, headers=headers)

    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert first.get_json()["screening_number"] == "101-0001"
    assert participant_count(db) == 1


@pytest.mark.requirement("R-API")
def test_a_site_cannot_send_a_number_of_a_site_whose_id_extends_its_own(api, db, ctx):
    """Site ids may hold hyphens: ``101-9-0001`` is site 101-9's, not site 101's."""
    from randomizer.roles import Actor
    from randomizer.services.trial_setup import add_site

    admin = Actor(name="admin", role="admin")
    with db.transaction() as session:
        add_site(session, ctx, admin, "101-9", "Site 101-9", {"region": "north_america"})

    refused = post_screening(api, screening_number="101-9-0001")
    assigned = post_screening(api, screening_number=OMIT)

    errors = assert_validation_error(refused, "screening_number")
    assert "101-9" in errors["screening_number"][0]
    assert assigned.get_json()["screening_number"] == "101-0001"


@pytest.mark.requirement("R-CFG")
def test_without_a_number_pattern_the_number_must_be_sent(db, ctx):
    """A definition without ``screening.number_pattern`` (one stored before it existed)."""
    from dataclasses import replace

    from randomizer.domain.participants import ScreeningRequest
    from randomizer.errors import ValidationFailed
    from randomizer.roles import Actor
    from randomizer.schemas import build_trial_schemas
    from randomizer.services.participants import screen_participant

    definition = replace(ctx.definition, screening_number_pattern=None)
    coordinator = Actor(name="coordinator-101", role="coordinator", site="101")
    body = {"site": "101", "screened_on": ctx.today().isoformat(), "strata": {"prior_ig": "no"}}
    request = ScreeningRequest(None, "101", ctx.today(), {"prior_ig": "no"})

    schema_errors = build_trial_schemas(definition).screening().validate(body)
    with pytest.raises(ValidationFailed) as refused, db.transaction() as session:
        screen_participant(session, replace(ctx, definition=definition), coordinator, request)

    assert "screening_number" in schema_errors
    assert set(refused.value.extra["errors"]) == {"screening_number"}
