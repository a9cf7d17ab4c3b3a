"""Malformed, oversized and hostile requests (R-NF-3, URS §8 input rules and problem details).

Every one gets a 4xx ``application/problem+json`` with ``type``, ``title``, ``status`` and
``detail``; none a 500, on SQLite or PostgreSQL (which refuses NUL in text). Validation
errors name flat dotted paths such as ``eligibility.age_years``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from randomizer.models import AuditEntry, Participant
from tests.conftest import ELIGIBLE

#: In a body, this string is replaced by a raw JSON token (NaN, 1e999999, ...).
RAW = "@raw@"
PAST_DATE = "2024-06-03"
JSON = "application/json"


def encode(body: Any, raw: str | None = None) -> bytes:
    """``body`` as JSON (lone surrogates and NUL escaped), with RAW replaced by ``raw``."""
    text = json.dumps(body)
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    return text.encode("ascii")


def randomization(weight_kg: Any = 70, **changes: Any) -> dict[str, Any]:
    return {"weight_kg": weight_kg, "eligibility": {**ELIGIBLE, **changes}}


def screening(**changes: Any) -> dict[str, Any]:
    body = {
        "screening_number": "101-0002",
        "site": "101",
        "screened_on": PAST_DATE,
        "strata": {"prior_ig": "no"},
    }
    body.update(changes)
    return body


def assert_problem(response: Any, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.get_data()[:500]
    if status is not None:
        assert response.status_code == status, response.get_data()[:500]
    assert response.mimetype == "application/problem+json"
    body = json.loads(response.get_data())
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["type"].startswith("/problems/")
    assert body["status"] == response.status_code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def count(db: Any, model: Any) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(model))


def last_entry(db: Any) -> dict[str, Any]:
    with db.reading() as session:
        canonical = session.scalars(
            select(AuditEntry.canonical).order_by(AuditEntry.seq.desc()).limit(1)
        ).one()
    return json.loads(canonical)


@pytest.fixture
def screened(api: Any) -> str:
    response = api.screen("101-0001")
    assert response.status_code == 201
    return "101-0001"


def post_raw(api: Any, path: str, data: bytes, content_type: str | None = JSON, **kw: Any) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return api.post(path, "coordinator-101", data=data, headers=headers, **kw)


# Bodies that are wrong for both POSTs --------------------------------------------------------

NOT_JSON = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{}x", id="trailing-garbage"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b'{"a": -Infinity}', id="minus-infinity"),
    pytest.param(b'{"a": ' + b"7" * 5000 + b"}", id="integer-of-5000-digits"),
    pytest.param(b"[" * 10000 + b"]" * 10000, id="array-nested-10000-deep"),
    pytest.param(b'{"a":' * 10000 + b"1" + b"}" * 10000, id="object-nested-10000-deep"),
    pytest.param(b'{"a": "\xff\xfe"}', id="invalid-utf-8"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', id="utf-8-encoded-surrogate"),
    pytest.param("\ufeff{}".encode(), id="byte-order-mark"),
    pytest.param('{"a": 1}'.encode("utf-16"), id="utf-16"),
]

NOT_AN_OBJECT = [
    pytest.param(b"[]", id="array"),
    pytest.param(b'"a string"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="number"),
    pytest.param(b"[" * 500 + b"]" * 500, id="array-nested-500-deep"),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("data", NOT_JSON)
def test_body_that_is_not_json_is_a_400_problem(api, db, screened, data):
    before = count(db, AuditEntry)

    screening_response = post_raw(api, "/participants", data)
    randomize_response = post_raw(api, f"/participants/{screened}/randomize", data)

    for response in (screening_response, randomize_response):
        problem = assert_problem(response, 400)
        assert problem["type"] == "/problems/validation"
        assert problem["errors"] == {"_body": ["Not valid JSON."]}
    assert count(db, Participant) == 1
    # The refused randomisation is audited; the screening refusal changes nothing.
    assert count(db, AuditEntry) == before + 1


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("data", NOT_AN_OBJECT)
def test_json_body_that_is_not_an_object_is_a_422_problem(api, db, screened, data):
    for path in ("/participants", f"/participants/{screened}/randomize"):
        problem = assert_problem(post_raw(api, path, data), 422)
        assert problem["type"] == "/problems/validation"
        assert problem["errors"] == {"_schema": ["Invalid input type."]}
    assert count(db, Participant) == 1


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_sent_as_another_content_type_is_a_415_problem(api, screened, content_type):
    for path, body in (
        ("/participants", screening()),
        (f"/participants/{screened}/randomize", randomization()),
    ):
        response = post_raw(api, path, json.dumps(body).encode(), content_type)
        assert_problem(response, 415)


@pytest.mark.requirement("R-NF-3")
def test_oversized_body_is_a_413_problem_and_the_refusal_is_audited(api, db, screened):
    big = encode({**randomization(), "padding": "a" * 100_000})
    assert len(big) > 100_000
    before = count(db, AuditEntry)

    screening_response = post_raw(api, "/participants", big)
    randomize_response = post_raw(api, f"/participants/{screened}/randomize", big)

    assert_problem(screening_response, 413)
    assert_problem(randomize_response, 413)
    assert count(db, AuditEntry) == before + 1
    assert last_entry(db)["action"] == "participant.randomization_refused"


# Field-level hostility -----------------------------------------------------------------------

HOSTILE_RANDOMIZATIONS = [
    # (body, raw token for RAW, error path, exact messages or None)
    pytest.param(
        randomization(age_years="18"),
        None,
        "eligibility.age_years",
        ["Not a valid integer."],
        id="age-as-string",
    ),
    pytest.param(
        randomization(age_years=True),
        None,
        "eligibility.age_years",
        ["Not a valid integer."],
        id="true-as-integer",
    ),
    pytest.param(
        randomization(eular_acr_dm=1),
        None,
        "eligibility.eular_acr_dm",
        ["Not a valid boolean."],
        id="one-as-boolean",
    ),
    pytest.param(
        randomization(eular_acr_dm="yes"),
        None,
        "eligibility.eular_acr_dm",
        ["Not a valid boolean."],
        id="yes-as-boolean",
    ),
    pytest.param(
        randomization(malignancy_within_5_years="false"),
        None,
        "eligibility.malignancy_within_5_years",
        ["Not a valid boolean."],
        id="false-as-string",
    ),
    pytest.param(
        randomization(improved_since_screening=None),
        None,
        "eligibility.improved_since_screening",
        None,
        id="null-as-boolean",
    ),
    pytest.param(
        randomization("70"), None, "weight_kg", ["Not a valid number."], id="weight-as-string"
    ),
    pytest.param(randomization(True), None, "weight_kg", None, id="weight-as-true"),
    pytest.param(randomization([70]), None, "weight_kg", None, id="weight-as-array"),
    pytest.param(randomization(RAW), "1e999999", "weight_kg", None, id="weight-1e999999"),
    pytest.param(randomization(RAW), "-1e999999", "weight_kg", None, id="weight-minus-1e999999"),
    pytest.param(randomization(RAW), "1e-999999", "weight_kg", None, id="weight-1e-999999"),
    pytest.param(
        randomization(RAW), "7" + "0" * 4000, "weight_kg", None, id="weight-of-4001-digits"
    ),
    pytest.param(randomization(RAW), "70.1234", "weight_kg", None, id="weight-4-decimal-places"),
    pytest.param(randomization(RAW), "29.999", "weight_kg", None, id="weight-below-30"),
    pytest.param(randomization(RAW), "250.001", "weight_kg", None, id="weight-above-250"),
    pytest.param(randomization(RAW), "-0", "weight_kg", None, id="weight-minus-zero"),
    pytest.param(
        randomization(age_years=RAW),
        "1" + "0" * 4000,
        "eligibility.age_years",
        None,
        id="age-of-4001-digits",
    ),
    pytest.param(
        randomization(age_years=RAW), "1e999999", "eligibility.age_years", None, id="age-1e999999"
    ),
    pytest.param(randomization(age_years=151), None, "eligibility.age_years", None, id="age-151"),
    pytest.param(
        randomization(pga_vas_cm=RAW), "10.001", "eligibility.pga_vas_cm", None, id="pga-over-10"
    ),
    pytest.param(
        randomization(pgd_vas_cm=RAW), "-0.001", "eligibility.pgd_vas_cm", None, id="pgd-below-0"
    ),
    pytest.param(
        randomization(cdasi_activity=101),
        None,
        "eligibility.cdasi_activity",
        None,
        id="cdasi-over-100",
    ),
    pytest.param(
        {"weight_kg": 70, "eligibility": {k: v for k, v in ELIGIBLE.items() if k != "mmt8"}},
        None,
        "eligibility.mmt8",
        ["Missing data for required field."],
        id="answer-missing",
    ),
    pytest.param({"weight_kg": 70}, None, "eligibility", None, id="eligibility-missing"),
    pytest.param(
        {"weight_kg": 70, "eligibility": [ELIGIBLE]}, None, "eligibility._schema", None, id="list"
    ),
    pytest.param(
        randomization(RAW), "[" * 900 + "]" * 900, "weight_kg", None, id="weight-nested-900-deep"
    ),
    pytest.param(
        {**randomization(), "arm": "placebo"}, None, "arm", ["Unknown field."], id="unknown-field"
    ),
    pytest.param(
        {"weight_kg": 70, "eligibility": {**ELIGIBLE, "sex": "f"}},
        None,
        "eligibility.sex",
        ["Unknown field."],
        id="unknown-answer",
    ),
    pytest.param(
        {**randomization(), "x\u0000y": 1}, None, "x\u0000y", ["Unknown field."], id="nul-in-key"
    ),
    pytest.param(
        {"weight_kg": 70, "eligibility": {**ELIGIBLE, "\u0000": "\u0000"}},
        None,
        "eligibility.\u0000",
        ["Unknown field."],
        id="nul-in-answer-key",
    ),
    pytest.param(
        {**randomization(), "\ud800": "\udfff"},
        None,
        "\ud800",
        ["Unknown field."],
        id="lone-surrogate-key",
    ),
    pytest.param(
        randomization(age_years="\u0000"),
        None,
        "eligibility.age_years",
        ["Not a valid integer."],
        id="nul-as-integer",
    ),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(("body", "raw", "path", "messages"), HOSTILE_RANDOMIZATIONS)
def test_hostile_randomization_is_a_validation_problem_that_changes_nothing(
    api, db, screened, body, raw, path, messages
):
    before = count(db, AuditEntry)

    response = post_raw(api, f"/participants/{screened}/randomize", encode(body, raw))

    problem = assert_problem(response, 422)
    assert problem["type"] == "/problems/validation"
    assert path in problem["errors"], problem["errors"]
    if messages is not None:
        assert problem["errors"][path] == messages
    assert api.get(f"/participants/{screened}", "coordinator-101").get_json()["status"] == (
        "screened"
    )
    # Exactly one refusal entry, whatever the client put in its keys.
    assert count(db, AuditEntry) == before + 1
    entry = last_entry(db)
    assert entry["action"] == "participant.randomization_refused"
    assert entry["data"]["reason"] == "validation"


HOSTILE_SCREENINGS = [
    pytest.param(
        screening(screening_number="101-\u00001"), None, "screening_number", id="nul-in-sn"
    ),
    pytest.param(screening(screening_number="\ud800"), None, "screening_number", id="surrogate-sn"),
    pytest.param(screening(screening_number=RAW), "1", "screening_number", id="sn-as-number"),
    pytest.param(screening(screening_number="A" * 5000), None, "screening_number", id="sn-5000"),
    pytest.param(
        screening(strata={"prior_ig": "no\u0000"}), None, "strata.prior_ig", id="nul-in-level"
    ),
    pytest.param(
        screening(strata={"prior_ig": "\udfff"}), None, "strata.prior_ig", id="surrogate-level"
    ),
    pytest.param(
        screening(strata={"prior_ig": "no", "\u0000": "x"}), None, "strata.\u0000", id="nul-factor"
    ),
    pytest.param(
        screening(strata={"prior_ig": "no", "\ud800": 1}),
        None,
        "strata.\ud800",
        id="surrogate-factor",
    ),
    pytest.param({**screening(), "\u0000": 1}, None, "\u0000", id="nul-unknown-key"),
    pytest.param({**screening(), "\ud800": 1}, None, "\ud800", id="surrogate-unknown-key"),
    pytest.param(screening(site="1\u000001"), None, "site", id="nul-in-site"),
    pytest.param(screening(site="1" * 5000), None, "site", id="site-5000"),
    pytest.param(screening(screened_on="2024-06-03\u0000"), None, "screened_on", id="nul-in-date"),
    pytest.param(screening(screened_on=RAW), "20240603", "screened_on", id="date-as-number"),
    pytest.param(screening(screened_on="+02024-06-03"), None, "screened_on", id="date-5-digits"),
    pytest.param(screening(strata=RAW), "null", "strata", id="strata-null"),
    pytest.param(screening(strata=RAW), '"no"', "strata._schema", id="strata-string"),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(("body", "raw", "path"), HOSTILE_SCREENINGS)
def test_hostile_screening_is_a_validation_problem_that_changes_nothing(api, db, body, raw, path):
    before = count(db, AuditEntry)

    response = post_raw(api, "/participants", encode(body, raw))

    problem = assert_problem(response, 422)
    assert problem["type"] == "/problems/validation"
    assert path in problem["errors"], problem["errors"]
    assert count(db, Participant) == 0
    assert count(db, AuditEntry) == before


# Paths, routes and methods -------------------------------------------------------------------

HOSTILE_SEGMENTS = [
    pytest.param("A" * 5000, id="5000-characters"),
    pytest.param("101-0001%00", id="nul"),
    pytest.param("%00", id="only-nul"),
    pytest.param("%ED%A0%80", id="encoded-surrogate"),
    pytest.param("%FF%FE", id="invalid-utf-8"),
    pytest.param("101-0001%0A", id="trailing-newline"),
    pytest.param("101-0001%20", id="trailing-space"),
    pytest.param("%E2%80%AE1000-S", id="right-to-left-override"),
    pytest.param("101-0001'%20OR%20'1'='1", id="sql-injection"),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("segment", HOSTILE_SEGMENTS)
def test_hostile_screening_number_in_the_path_is_a_404_problem(api, db, screened, segment):
    before = count(db, AuditEntry)

    shown = api.get(f"/participants/{segment}", "coordinator-101")
    randomized = api.randomize(segment)

    assert assert_problem(shown, 404)["type"] == "/problems/not-found"
    assert assert_problem(randomized, 404)["type"] == "/problems/not-found"
    # The refused randomisation is audited (with the number made printable, never raw).
    assert count(db, AuditEntry) == before + 1
    assert last_entry(db)["action"] == "participant.randomization_refused"


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/participants/101-0001/unknown",
        "/Trial",
        "/participants/101-0001/randomize/x",
        "/participants/..%2F..%2Ftrial",
    ],
)
@pytest.mark.parametrize("user", [None, "coordinator-101"])
def test_unknown_route_is_a_404_problem(api, path, user):
    problem = assert_problem(api.get(path, user), 404)

    assert problem["type"] == "/problems/not-found"


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/participants"),
        ("PUT", "/participants/101-0001"),
        ("GET", "/participants/101-0001/randomize"),
        ("POST", "/trial"),
        ("POST", "/health"),
        ("PATCH", "/participants/101-0001"),
    ],
)
def test_wrong_method_is_a_405_problem_naming_the_allowed_ones(api, method, path):
    response = api.request(method, path, "coordinator-101")

    assert_problem(response, 405)
    assert response.headers["Allow"]
    assert method not in response.headers["Allow"].split(", ")
