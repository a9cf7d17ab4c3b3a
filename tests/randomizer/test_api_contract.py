"""The OpenAPI document says what the service does (URS §8, R-API, issue 7 finding 12).

The review found errors declared ``application/json`` but served as
``application/problem+json``; ``/health`` and ``/audit/verifier-key`` declaring a bearer
requirement they do not have; no 401 declared; ``strata.region`` (derived from the site, never
sent) typed as anything; ``Idempotency-Key`` without its pattern; 405 typed
``/problems/validation``; and answers holding participant data without
``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``. Each is checked here
against the document and against the service's answers; the contract fuzzing
(``test_api_fuzzing.py``) checks every answer against the document at large.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from randomizer.services.idempotency import KEY
from tests.randomizer.test_api_errors import assert_problem

PROBLEM = "application/problem+json"
PUBLIC = {("get", "/api/v1/health"), ("get", "/api/v1/audit/verifier-key")}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def document(api: Any) -> dict[str, Any]:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    return json.loads(response.get_data())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def concrete(path: str) -> str:
    """A document path with its parameters filled in (``{screening_number}`` -> ``101-0001``)."""
    return re.sub(r"\{[^}]+\}", "101-0001", path).removeprefix("/api/v1")


@pytest.mark.requirement("R-API")
def test_every_error_is_documented_as_a_problem_details_object(document):
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    # RFC 9457 extension members (randomization_number, kits, ...) are allowed.
    assert problem["additionalProperties"] is True
    checked = 0
    for method, path, operation in operations(document):
        assert "default" in operation["responses"], (method, path)
        for code, response in operation["responses"].items():
            if code == "default" or int(code) >= 400:
                assert response["content"] == {
                    PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, code)
                checked += 1
    assert checked >= 3 * len(operations(document))
    assert "Error" not in document["components"]["schemas"]  # flask-smorest's own error body
    assert "application/json" not in json.dumps(document.get("components", {}).get("responses"))


@pytest.mark.requirement("R-API")
def test_the_public_operations_say_so_and_answer_without_a_token(api, document):
    public = {(m, p) for m, p, operation in operations(document) if operation.get("security") == []}
    assert public == PUBLIC
    assert document["security"] == [{"bearer": []}]
    for method, path in public:
        response = api.request(method.upper(), concrete(path))
        assert response.status_code == 200, path
        assert "401" not in document["paths"][path][method]["responses"]


@pytest.mark.requirement("R-API")
def test_every_authenticated_operation_declares_and_answers_401(api, document):
    for index, (method, path, operation) in enumerate(operations(document)):
        if (method, path) in PUBLIC:
            continue
        declared = operation["responses"]["401"]
        assert declared["headers"]["WWW-Authenticate"]["required"] is True
        # Each operation from a client of its own: one client's many invalid tokens would be
        # slowed down, then refused with 429 (test_auth_throttle.py).
        client = {"REMOTE_ADDR": f"192.0.2.{index + 1}"}
        for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": "Basic x"}):
            response = api.request(
                method.upper(), concrete(path), headers=headers, environ_base=client
            )
            problem = assert_problem(response, 401)
            assert problem["type"] == "/problems/unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.requirement("R-API")
def test_the_site_derived_factor_is_documented_as_never_sent(api, document, backend):
    strata = document["components"]["schemas"]["ScreeningStrata"]
    # JSON Schema's "not": {} admits no value at all.
    assert strata["properties"]["region"]["not"] == {}
    assert strata["properties"]["region"]["writeOnly"] is True
    assert "region" not in strata["required"]
    for value in ("europe", "north_america", None, 1, {}):
        body = {
            "screening_number": "101-0009",
            "site": "101",
            "screened_on": api.clock.today().isoformat(),
            "strata": {"prior_ig": "no", "region": value},
        }
        problem = assert_problem(api.post("/participants", "coordinator-101", json=body), 422)
        assert list(problem["errors"]) == ["strata.region"]


IDEMPOTENCY_KEYS = [
    "a",
    "!",
    "~",
    "k" * 255,
    "k" * 256,
    "",
    " ",
    "a b",
    "a\tb",
    "\x7f",
    "é",
    "a\nb",
    "0123-4567-89ab-cdef",
    "\x20key",
]


@pytest.mark.requirement("R-API")
def test_the_idempotency_key_is_documented_with_the_pattern_the_service_checks(document):
    headers = [
        parameter
        for _m, _p, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key"
    ]
    assert len(headers) >= 7  # every state-changing POST but unblinding
    for header in headers:
        schema = header["schema"]
        assert (schema["minLength"], schema["maxLength"]) == (1, 255)
        documented = re.compile(schema["pattern"])
        for key in IDEMPOTENCY_KEYS:
            assert bool(documented.search(key)) == bool(KEY.fullmatch(key)), repr(key)


@pytest.mark.requirement("R-API")
def test_a_wrong_method_is_a_method_not_allowed_problem_of_a_documented_type(api, document):
    response = api.request("DELETE", "/participants", "coordinator-101")

    problem = assert_problem(response, 405)
    assert problem["type"] == "/problems/method-not-allowed"
    assert problem["title"] == "Method not allowed"
    assert response.headers["Allow"]
    types = document["components"]["schemas"]["Problem"]["properties"]["type"]
    assert "/problems/method-not-allowed" in types["enum"]
    assert "/problems/method-not-allowed" in types["description"]


@pytest.mark.requirement("R-API")
def test_every_problem_type_of_urs_8_is_in_the_document(document):
    urs = {
        "unauthorized",
        "forbidden",
        "not-found",
        "validation",
        "ineligible",
        "screening-window",
        "already-randomized",
        "insufficient-supply",
        "stratum-exhausted",
        "idempotency-key-reused",
        "conflict",
    }
    enum = document["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert {f"/problems/{name}" for name in urs} <= set(enum)


ANSWERS = [
    pytest.param("GET", "/health", None, id="health"),
    pytest.param("GET", "/audit/verifier-key", None, id="text"),
    pytest.param("GET", "/openapi.json", None, id="document"),
    pytest.param("GET", "/trial", "coordinator-101", id="json"),
    pytest.param("GET", "/participants/101-0001", "coordinator-101", id="participant"),
    pytest.param("GET", "/participants/NOPE", "coordinator-101", id="404"),
    pytest.param("GET", "/audit/entries?start=0", "auditor", id="jsonl"),
    pytest.param("GET", "/audit/checkpoint", "auditor", id="checkpoint"),
    pytest.param("GET", "/trial", None, id="401"),
    pytest.param("DELETE", "/trial", "coordinator-101", id="405"),
    pytest.param("GET", "/nowhere", None, id="unknown-route"),
]


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(("method", "path", "user"), ANSWERS)
def test_every_answer_is_never_stored_and_never_sniffed(api, method, path, user):
    assert api.screen("101-0001").status_code == 201

    response = api.request(method, path, user)

    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.requirement("R-API")
def test_a_randomisation_and_its_refusal_are_never_stored_and_never_sniffed(api):
    randomized = api.screen_and_randomize("101-0002")
    again = api.randomize("101-0002")

    assert (randomized.status_code, again.status_code) == (201, 409)
    for response in (randomized, again):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.requirement("R-API")
def test_the_document_declares_the_headers_on_every_answer(document):
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            headers = response["headers"]
            assert headers["Cache-Control"]["schema"]["enum"] == ["no-store"], (method, path)
            assert headers["X-Content-Type-Options"]["schema"]["enum"] == ["nosniff"], code


@pytest.mark.requirement("R-API")
def test_text_answers_declare_their_content_type(document):
    for path, media_type in (
        ("/api/v1/audit/checkpoint", "text/plain"),
        ("/api/v1/audit/verifier-key", "text/plain"),
        ("/api/v1/audit/entries", "application/jsonl"),
    ):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert content == {media_type: {"schema": {"type": "string"}}}


@pytest.mark.requirement("R-API")
def test_decimal_places_and_nul_free_strings_are_in_the_document(api, document):
    """Found by the contract fuzzing: valid-looking data refused for what the document hid."""
    schemas = document["components"]["schemas"]
    assert schemas["RandomizationRequest"]["properties"]["weight_kg"]["multipleOf"] == 0.001
    assert schemas["EligibilityAnswers"]["properties"]["pga_vas_cm"]["multipleOf"] == 0.001
    assert schemas["ScreeningRequest"]["properties"]["site"]["pattern"] == "^[^\\x00]*$"
    assert schemas["ReasonRequest"]["properties"]["reason"]["pattern"] == "^[^\\x00]*$"
    # And the service refuses what they exclude.
    assert api.screen("101-0001").status_code == 201
    problem = assert_problem(api.randomize("101-0001", weight_kg=70.0005), 422)
    assert problem["errors"] == {"weight_kg": ["At most 3 decimal places."]}
    body = {"reason": "moved\u0000away"}
    response = api.post("/participants/101-0001/withdraw", "coordinator-101", json=body)
    assert assert_problem(response, 422)["errors"] == {
        "reason": ["Must not contain NUL characters."]
    }
