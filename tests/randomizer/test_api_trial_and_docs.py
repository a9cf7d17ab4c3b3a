"""``GET /trial`` (URS §8, R-CFG, R-BLIND-1) and the OpenAPI document (R-API).

Blinded roles never see the block sizes or the list length (ICH E9); the statistician does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

BLINDED_USERS = [
    "coordinator-101",
    "investigator-101",
    "pharmacist-101",
    "medical-monitor",
    "sponsor",
    "auditor",
    "admin",
]
HIDDEN_FROM_BLINDED = {"randomisation", "block_sizes", "slots_per_stratum"}


def keys_of(value: Any) -> set[str]:
    """Every key of every object nested in ``value``."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def values_of(value: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in ``value``."""
    found = []
    if isinstance(value, dict):
        found += [v for k, v in value.items() if k == key]
        for v in value.values():
            found += values_of(v, key)
    elif isinstance(value, list):
        for v in value:
            found += values_of(v, key)
    return found


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a ``$ref`` to ``#/components/schemas/...``."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.fixture
def openapi(api: Any) -> dict[str, Any]:
    response = api.get("/openapi.json", "coordinator-101")
    assert response.status_code == 200
    return json.loads(response.get_data())


# GET /trial ----------------------------------------------------------------------------------


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("user", BLINDED_USERS)
def test_blinded_roles_never_see_block_sizes_or_list_length(api, user):
    response = api.get("/trial", user)

    assert response.status_code == 200
    body = response.get_json()
    assert not keys_of(body) & HIDDEN_FROM_BLINDED
    text = response.get_data(as_text=True).lower()
    assert "block" not in text
    assert "slots_per_stratum" not in text


@pytest.mark.requirement("R-BLIND-1")
def test_statistician_sees_block_sizes_and_list_length(api):
    body = api.get("/trial", "statistician").get_json()

    assert body["randomisation"] == {"block_sizes": [2, 4], "slots_per_stratum": 200}


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("user", BLINDED_USERS)
def test_blinded_view_is_the_statisticians_without_the_randomisation_section(api, user):
    unblinded = api.get("/trial", "statistician").get_json()

    blinded = api.get("/trial", user).get_json()

    assert blinded == {k: v for k, v in unblinded.items() if k != "randomisation"}


@pytest.mark.requirement("R-CFG")
def test_trial_describes_reclaiim_as_its_definition_file_does(api):
    body = api.get("/trial", "sponsor").get_json()

    assert (body["id"], body["registry_id"]) == ("RECLAIIM", "NCT04044690")
    assert body["arms"] == [
        {"id": "igpro20", "label": "IgPro20", "ratio": 1},
        {"id": "placebo", "label": "Placebo", "ratio": 1},
    ]
    assert body["factors"] == [
        {"id": "region", "levels": ["north_america", "europe", "rest_of_world"], "source": "site"},
        {"id": "prior_ig", "levels": ["yes", "no"], "source": "screening"},
    ]
    assert body["strata"] == [
        {"number": 1, "key": "region=north_america|prior_ig=yes"},
        {"number": 2, "key": "region=north_america|prior_ig=no"},
        {"number": 3, "key": "region=europe|prior_ig=yes"},
        {"number": 4, "key": "region=europe|prior_ig=no"},
        {"number": 5, "key": "region=rest_of_world|prior_ig=yes"},
        {"number": 6, "key": "region=rest_of_world|prior_ig=no"},
    ]
    assert body["screening"] == {"window_days": 21, "number_pattern": "{site}-{n:04d}"}
    rules = [rule["id"] for rule in body["eligibility"]["rules"]]
    assert rules == ["I1", "I2", "I3", "I4", "I5", "E1", "E2", "E3", "E4"]
    first = body["eligibility"]["rules"][0]
    assert first["text"].startswith("Male or female participant aged 18 years or older")
    assert first["eligible_when"] == "age_years >= 18"
    assert body["audit"] == {"origin": "sealroom/RECLAIIM"}


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("user", [*BLINDED_USERS, "statistician"])
def test_trial_holds_no_secret(api, user):
    response = api.get("/trial", user)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["id"] == "RECLAIIM"
    text = response.get_data(as_text=True).lower()

    for secret in ("seed", "commitment", "sealed", "wrapped", "master", "token"):
        assert secret not in text


# OpenAPI -------------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_openapi_document_names_the_api_paths(openapi):
    assert openapi["openapi"].startswith("3.")
    assert {
        "/api/v1/health",
        "/api/v1/trial",
        "/api/v1/participants",
        "/api/v1/participants/{screening_number}",
        "/api/v1/participants/{screening_number}/randomize",
    } <= set(openapi["paths"])
    assert "post" in openapi["paths"]["/api/v1/participants"]
    assert "get" in openapi["paths"]["/api/v1/participants/{screening_number}"]


@pytest.mark.requirement("R-API")
def test_openapi_randomize_body_lists_every_eligibility_field(openapi, ctx):
    operation = openapi["paths"]["/api/v1/participants/{screening_number}/randomize"]["post"]
    body = resolve(openapi, operation["requestBody"]["content"]["application/json"]["schema"])

    assert set(body["properties"]) == {"weight_kg", "eligibility"}
    assert set(body["required"]) == {"weight_kg", "eligibility"}
    assert body["properties"]["weight_kg"]["type"] == "number"
    eligibility = resolve(openapi, body["properties"]["eligibility"])
    fields = {field.id for field in ctx.definition.eligibility_fields}
    assert set(eligibility["properties"]) == fields
    assert set(eligibility["required"]) == fields
    assert eligibility["properties"]["age_years"]["type"] == "integer"
    assert eligibility["properties"]["eular_acr_dm"]["type"] == "boolean"
    assert {"403", "404", "409", "422"} <= set(operation["responses"])


@pytest.mark.requirement("R-API")
def test_openapi_bounds_are_numbers(openapi):
    # apispec writes Range bounds through the field's serializer: "30" would be invalid.
    bounds = values_of(openapi, "minimum") + values_of(openapi, "maximum")

    assert bounds
    assert all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds), bounds
    weight = openapi["components"]["schemas"]["RandomizationRequest"]["properties"]["weight_kg"]
    assert (weight["minimum"], weight["maximum"]) == (30, 250)


@pytest.mark.requirement("R-API")
def test_openapi_screening_number_pattern_is_ecma_regex(openapi):
    # JSON Schema patterns are ECMA-262: Python's \A and \Z would mean something else there.
    screening = openapi["components"]["schemas"]["ScreeningRequest"]

    assert screening["properties"]["screening_number"]["pattern"] == "^[A-Za-z0-9-]{1,32}$"
    assert screening["additionalProperties"] is False


@pytest.mark.requirement("R-API")
def test_openapi_screening_number_is_optional_and_says_it_begins_with_the_site(openapi):
    screening = openapi["components"]["schemas"]["ScreeningRequest"]
    number = screening["properties"]["screening_number"]

    assert "screening_number" not in screening["required"]
    assert "site id and a hyphen" in number["description"]
    assert "{site}-{n:04d}" in number["description"]
    assert number.get("nullable") is not True


@pytest.mark.requirement("R-API")
def test_openapi_declares_bearer_authentication(openapi):
    assert openapi["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
