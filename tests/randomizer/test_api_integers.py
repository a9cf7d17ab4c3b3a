"""Integers in requests: strict and within what the database holds (R-NF-3, URS §8, issue 7).

Findings 1 and 8: ``GET /audit/entries?start=2147483648`` was a 500 on PostgreSQL (integer out
of range) and ``start=99999999999999999999999`` one on SQLite; ``start=%D9%A1`` (an
Arabic-Indic digit), ``start=%201`` and ``start=1_0`` were taken as numbers (Python's
``int()`` takes them), and ``start=0&start=5`` silently took the first. The class: every
integer a path, a query or a body carries is bounded by the database's 32-bit integer (or by
the field's own stated range), spelt in ASCII digits, and sent once; anything else is a 422
problem whose ``errors`` names it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import marshmallow as ma
import pytest

from randomizer.domain import EligibilityField
from randomizer.models import AuditEntry
from randomizer.schemas import DB_INT_MAX, DB_INT_MIN, eligibility_field
from tests.randomizer.test_api_errors import assert_problem, count, randomization

#: Every query integer of the API: (path, the other parameters, the parameter's name).
QUERY_INTEGERS = [
    ("/audit/entries", {}, "start"),
    ("/audit/entries", {"start": "0"}, "end"),
    ("/audit/proof/inclusion", {"size": "1"}, "index"),
    ("/audit/proof/inclusion", {"index": "0"}, "size"),
    ("/audit/proof/consistency", {"second": "1"}, "first"),
    ("/audit/proof/consistency", {"first": "1"}, "second"),
]


def query(parameters: dict[str, str], name: str, raw: str) -> str:
    """A query string with ``name=raw`` (``raw`` already percent-encoded) and the others."""
    return "&".join([f"{k}={v}" for k, v in parameters.items()] + [f"{name}={raw}"])


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("2147483648", id="2-to-the-31"),
        pytest.param("4294967296", id="2-to-the-32"),
        pytest.param("9223372036854775808", id="2-to-the-63"),
        pytest.param("99999999999999999999999", id="23-digits"),
        pytest.param("9" * 5000, id="5000-digits"),
    ],
)
def test_a_query_integer_beyond_the_database_is_a_422_problem(api, raw):
    for path, others, name in QUERY_INTEGERS:
        response = api.get(f"{path}?{query(others, name, raw)}", "auditor")

        problem = assert_problem(response, 422)
        assert problem["type"] == "/problems/validation"
        assert problem["errors"] == {
            name: [f"Must be greater than or equal to 0 and less than or equal to {DB_INT_MAX}."]
        }


@pytest.mark.requirement("R-NF-3")
def test_the_largest_query_integers_the_database_holds_are_answered(api):
    # start + the default page of 1,000 passes what the seq column holds: still no 500.
    for path in (
        f"/audit/entries?start={DB_INT_MAX}",
        f"/audit/entries?start={DB_INT_MAX - 5}&end={DB_INT_MAX}",
        f"/audit/entries?start={'0' * 30}7&end={'0' * 30}8",
    ):
        response = api.get(path, "auditor")
        assert response.status_code == 200, response.get_data()
    assert api.get(f"/audit/entries?start={DB_INT_MAX}", "auditor").get_data() == b""
    # Beyond the log, the proofs say so (422), whatever the size asked.
    for path in (
        f"/audit/proof/inclusion?index=0&size={DB_INT_MAX}",
        f"/audit/proof/consistency?first=1&second={DB_INT_MAX}",
    ):
        assert_problem(api.get(path, "auditor"), 422)


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("%D9%A1", id="arabic-indic-one"),
        pytest.param("%EF%BC%91", id="fullwidth-one"),
        pytest.param("%E0%A5%A7", id="devanagari-one"),
        pytest.param("%201", id="leading-space"),
        pytest.param("1%20", id="trailing-space"),
        pytest.param("1%0A", id="trailing-newline"),
        pytest.param("%091", id="leading-tab"),
        pytest.param("1_0", id="underscore"),
        pytest.param("%2B1", id="plus-sign"),
        pytest.param("-1", id="negative"),
        pytest.param("-0", id="minus-zero"),
        pytest.param("0x1", id="hexadecimal"),
        pytest.param("1e3", id="exponent"),
        pytest.param("1.0", id="decimal"),
        pytest.param("", id="empty"),
        pytest.param("%00", id="nul"),
        pytest.param("one", id="word"),
    ],
)
def test_a_query_integer_is_ascii_digits_only(api, raw):
    for path, others, name in QUERY_INTEGERS:
        response = api.get(f"{path}?{query(others, name, raw)}", "auditor")

        problem = assert_problem(response, 422)
        assert problem["errors"] == {name: ["Not a valid integer: ASCII digits 0-9 only."]}


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("values", [("0", "5"), ("1", "1"), ("0", "x")], ids="-".join)
def test_a_query_parameter_sent_twice_is_a_422_naming_it(api, values):
    for path, others, name in QUERY_INTEGERS:
        raw = f"{values[0]}&{name}={values[1]}"
        response = api.get(f"{path}?{query(others, name, raw)}", "auditor")

        problem = assert_problem(response, 422)
        assert problem["errors"] == {name: ["Send this parameter once."]}


@pytest.mark.requirement("R-API")
def test_every_repeated_parameter_is_named_and_a_string_one_too(api):
    problem = assert_problem(api.get("/audit/entries?start=0&start=1&end=2&end=3", "auditor"))
    assert problem["errors"] == {
        "start": ["Send this parameter once."],
        "end": ["Send this parameter once."],
    }
    problem = assert_problem(api.get("/notifications?status=all&status=pending", "admin"), 422)
    assert problem["errors"] == {"status": ["Send this parameter once."]}


# Bodies -----------------------------------------------------------------------------------


def unbounded(kind: str = "integer") -> EligibilityField:
    return EligibilityField(id="n", type=kind, minimum=None, maximum=None, label="n")


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(
    ("spec", "refused", "accepted"),
    [
        pytest.param(
            unbounded(), [DB_INT_MAX + 1, DB_INT_MIN - 1, 10**30], [DB_INT_MAX, DB_INT_MIN, 0]
        ),
        pytest.param(
            EligibilityField(id="n", type="integer", minimum=Decimal(5), maximum=None, label=""),
            [DB_INT_MAX + 1, 4],
            [DB_INT_MAX, 5],
            id="minimum-only",
        ),
        pytest.param(
            EligibilityField(id="n", type="integer", minimum=None, maximum=Decimal(9), label=""),
            [DB_INT_MIN - 1, 10],
            [DB_INT_MIN, 9],
            id="maximum-only",
        ),
        pytest.param(
            EligibilityField(
                id="n", type="integer", minimum=Decimal(0), maximum=Decimal(10**12), label=""
            ),
            [DB_INT_MAX + 1],
            [DB_INT_MAX],
            id="stated-range-beyond-the-database",
        ),
    ],
)
def test_a_body_integer_is_bounded_by_the_database_where_no_bound_is_stated(
    spec, refused, accepted
):
    schema = ma.Schema.from_dict({"n": eligibility_field(spec)})()
    for value in accepted:
        assert schema.load({"n": value}) == {"n": value}
    for value in refused:
        with pytest.raises(ma.ValidationError) as error:
            schema.load({"n": value})
        assert list(error.value.messages) == ["n"]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize("raw", ["2147483648", "-2147483649", "9" * 4000, "1" + "0" * 4299])
def test_a_huge_eligibility_integer_is_an_audited_422(api, db, raw):
    assert api.screen("101-INT1").status_code == 201
    before = count(db, AuditEntry)
    body = json.dumps(randomization(age_years="@raw@")).replace('"@raw@"', raw)

    response = api.post(
        "/participants/101-INT1/randomize",
        "coordinator-101",
        data=body,
        headers={"Content-Type": "application/json"},
    )

    problem = assert_problem(response, 422)
    assert list(problem["errors"]) == ["eligibility.age_years"]
    assert count(db, AuditEntry) == before + 1


def integer_schemas(node: Any, document: dict[str, Any], seen: set[str]) -> list[dict[str, Any]]:
    """Every ``"type": "integer"`` schema under ``node``, following ``$ref`` once each."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                found += integer_schemas(document["components"]["schemas"][name], document, seen)
        if node.get("type") == "integer":
            found.append(node)
        for value in node.values():
            found += integer_schemas(value, document, seen)
    elif isinstance(node, list):
        for value in node:
            found += integer_schemas(value, document, seen)
    return found


@pytest.mark.requirement("R-NF-3")
def test_every_integer_the_document_accepts_has_bounds_the_database_holds(api):
    document = json.loads(api.get("/openapi.json").get_data())
    accepted: list[dict[str, Any]] = []
    for item in document["paths"].values():
        for parameter in item.get("parameters", []):
            accepted += integer_schemas(parameter, document, set())
        for method, operation in item.items():
            if method == "parameters":
                continue
            accepted += integer_schemas(operation.get("parameters", []), document, set())
            accepted += integer_schemas(operation.get("requestBody", {}), document, set())

    assert len(accepted) >= 6 + 3  # the audit queries and the eligibility integers
    for schema in accepted:
        assert DB_INT_MIN <= schema.get("minimum", DB_INT_MIN - 1) <= DB_INT_MAX, schema
        assert DB_INT_MIN <= schema.get("maximum", DB_INT_MAX + 1) <= DB_INT_MAX, schema


@pytest.mark.requirement("R-NF-3")
def test_no_route_takes_an_unbounded_integer_in_its_path(app):
    for rule in app.url_map.iter_rules():
        for converter in rule._converters.values():
            if hasattr(converter, "max"):
                assert converter.max is not None and converter.max <= DB_INT_MAX, rule.rule
